"""The image tasks' driver: one owner of a run's life, and of the per-image loop of ``predict``/``evaluate``.

A task writes only what differs, as a :class:`Recipe` of small functions (how to
build the module for some training rows, make its batches, predict and score
rows, what ``preprocessing.json`` records, its figures); :class:`Training`
does the rest the same way for every task: start (or resume) the run, read
the manifest, hold out test participants, fit through
:func:`~neurodl.tasks._protocol.run_protocol`, score the held-out test, write
the run's files and return the summary. :func:`open_trained` and
:func:`place` are the two halves of every ``load()``; :func:`each_image` is
the loop over input images in which a bad image is a :class:`Failure`, not
the end of the batch.

Example:
    >>> training = Training.start("segment", SegmentOptions, manifest, options, out)  # doctest: +SKIP
    >>> training.hold_out_test(np.zeros(len(training.manifest)))  # doctest: +SKIP
    >>> return training.train(Recipe(module=..., batches=..., predict=..., score=..., record=...))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from neurodl.config import from_dict, to_dict
from neurodl.data.splits import split_by_participant
from neurodl.engine import Callback, FitResult, fit
from neurodl.errors import DataError, NeurodlError, OutputError, RunDirectoryError, UsageError
from neurodl.io.manifest import Manifest, load_manifest, require_columns
from neurodl.io.rundir import RunDirectory
from neurodl.models import list_models
from neurodl.tasks._protocol import run_protocol
from neurodl.tasks._run import (
    cache_folder,
    check_leakage,
    check_report_dir,
    held_out_test,
    progress,
    start_run,
    warm_cache,
    write_training_record,
)

T = TypeVar("T")
R = TypeVar("R")
# Seed offset of the held-out test split: another draw than the validation split's.
TEST_SPLIT_SEED = 101


def require_known_model(task: str, name: str) -> None:
    """Refuse a model name the registry does not know for ``task`` (before any work)."""
    known = [entry.name for entry in list_models(task)]
    if name not in known:
        raise UsageError(
            f"Unknown {task} model '{name}'.",
            f"Known {task} models: {', '.join(known)} (see `neurodl models`).",
        )


@dataclass
class Fitted:
    """A trained module (the task's) and the engine's record of its training."""

    module: Any
    result: FitResult


@dataclass
class Recipe:
    """What one image task does differently during training; the driver does the rest.

    Attributes:
        module: a fresh module (network + loss) to train on the given training rows.
        batches: the batches of some rows for that module (``True``: training batches).
        predict: the outputs of a fitted module on some rows (one row of outputs per image).
        score: the metrics of those outputs.
        record: what ``preprocessing.json`` records of the final model (``load()`` restores it).
        weights: the files of the final model's weights (name -> state dict).
        title: the title of the learning curves.
        summary: what the task adds to the run's summary (task, target, labels ...).
        headline: which metrics the summary shows.
        outputs: writes what the task keeps of some predictions (prefix ``validation_``,
            ``oof_`` or ``test_``) and returns the figures it wrote.
        figures: writes the task's figures of the final model (e.g. a latent space), not in the summary.
        callbacks: callbacks of one fit (e.g. previews), given its module and validation rows.
        cv: whether ``--cv`` applies (a GAN keeps one validation split).
    """

    module: Callable[[np.ndarray], Any]
    batches: Callable[[Any, np.ndarray, bool], Any]
    predict: Callable[[Fitted, np.ndarray], np.ndarray]
    score: Callable[[np.ndarray, np.ndarray], dict[str, Any]]
    record: Callable[[Fitted], dict[str, Any]]
    title: str
    summary: dict[str, Any]
    headline: Callable[[str], bool] = lambda name: True
    weights: Callable[[Fitted], dict[str, Any]] = field(
        default=lambda fitted: {"model.safetensors": fitted.module.model.state_dict()}
    )
    outputs: Callable[[str, np.ndarray, np.ndarray], list[str]] | None = None
    figures: Callable[[Fitted], None] | None = None
    callbacks: Callable[[Any, np.ndarray], list[Callback]] | None = None
    cv: bool = True


@dataclass
class Training:
    """One training run of an image task: its directory, options, manifest and splits."""

    task: str
    run: RunDirectory
    manifest_path: Path
    options: Any
    manifest: Manifest
    resume: bool
    console: Any
    quiet: bool
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    test_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    strata: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))

    @classmethod
    def start(
        cls,
        task: str,
        options_type: type,
        manifest_path: Path | None,
        options: Any,
        out: Path,
        *,
        resume: bool,
        overwrite: bool,
        console: Any,
        quiet: bool,
        label: Callable[[Any], str | None] = lambda options: None,
        check: Callable[[Any], None] = lambda options: None,
        bids_images: Callable[[Any], list[str]] = lambda options: [],
    ) -> Training:
        """Create (or resume) the run directory ``out`` and read its manifest.

        ``label`` names the manifest's label column from the options (the saved ones
        when resuming); ``check`` refuses options that contradict each other before the
        manifest is read.
        """
        run, source, saved = start_run(
            out, task=task, source=manifest_path, options=to_dict(options), resume=resume, overwrite=overwrite
        )
        options = from_dict(options_type, saved)
        check(options)
        images = options.images
        extra = bids_images(options)
        manifest = load_manifest(
            source,
            list(images.image),
            label(options),
            images.participant,
            bids_filter=images.bids_filter,
            **({"bids_images": extra} if extra else {}),
        )
        return cls(task, run, source, options, manifest, resume, console, quiet)

    @property
    def images(self) -> Any:
        """The image options (columns, preprocessing, cache)."""
        return self.options.images

    @property
    def seed(self) -> int:
        return int(self.options.train.seed)

    @property
    def groups(self) -> np.ndarray:
        """The participant of each manifest row."""
        return np.asarray(self.manifest.participant_ids, dtype=str)

    @property
    def items(self) -> list[list[Path]]:
        """The channel files of each manifest row."""
        return [self.manifest.image_paths(int(r)) for r in range(len(self.manifest))]

    def describe(self, index: int) -> str:
        """A manifest row, as error messages name it."""
        return f"{self.manifest_path.name} row {index + 1}"

    def hold_out_test(self, strata: np.ndarray | None = None) -> None:
        """Set aside ``--test-fraction`` of the participants, stratified by ``strata``: never trained or selected on."""
        self.strata = np.zeros(len(self.manifest), dtype=int) if strata is None else np.asarray(strata)
        self.rows = np.arange(len(self.manifest))
        if self.options.test_fraction > 0:
            kept, held = split_by_participant(
                self.groups, self.strata, self.options.test_fraction, self.seed + TEST_SPLIT_SEED
            )
            self.rows, self.test_rows = self.rows[kept], self.rows[held]

    def training_paths(self) -> list[Path]:
        """The first channel of each training (and validation) image: what preprocessing is planned on."""
        items = self.items
        return [items[int(r)][0] for r in self.rows]

    def cached(self, dataset: T, *, always: bool = False) -> T:
        """``dataset``, every image preprocessed now (unless ``--cache none``): a bad file stops the run here."""
        if always or self.images.cache != "none":
            warm_cache(dataset, self.console, self.quiet)
        return dataset

    def cache_options(self) -> dict[str, Any]:
        """The cache keywords of a cached dataset of this run."""
        images = self.images
        return {
            "cache": images.cache,
            "cache_dir": cache_folder(self.run, images),
            "cache_budget": images.cache_budget,
            "describe": self.describe,
        }

    def fit(
        self,
        module: Any,
        train_batches: Any,
        val_batches: Any,
        *,
        name: str,
        description: str,
        epochs: int | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> Fitted:
        """Train ``module`` (checkpoint ``checkpoints/<name>``) with a progress bar; ``epochs`` fixes their number."""
        options = self.options.train
        if epochs is not None:  # the final model after cross-validation: no validation set to stop on
            options = replace(options, epochs=max(1, epochs), patience=0)
        with progress(self.console, self.quiet, description) as shown:
            result = fit(
                module,
                train_batches,
                val_batches,
                options,
                checkpoint=self.run.file(f"checkpoints/{name}.safetensors"),
                resume=self.resume,
                callbacks=[*shown, *callbacks],
                resume_hint=f"Continue with: neurodl {self.task} train --resume --out {self.run.path}",
            )
        return Fitted(module, result)

    def train(self, recipe: Recipe) -> dict[str, Any]:
        """Fit, select and evaluate by :func:`~neurodl.tasks._protocol.run_protocol`; write the run; return its summary."""
        import torch  # heavy: only when a run trains

        def fit_rows(
            train_rows: np.ndarray,
            val_rows: np.ndarray | None,
            name: str,
            description: str,
            epochs: int | None,
        ) -> Fitted:
            torch.manual_seed(self.seed)
            module = recipe.module(train_rows)
            validating = val_rows is not None and len(val_rows) > 0
            return self.fit(
                module,
                recipe.batches(module, train_rows, True),
                recipe.batches(module, val_rows, False) if validating else None,  # type: ignore[arg-type]
                name=name,
                description=description,
                epochs=epochs,
                callbacks=recipe.callbacks(module, val_rows) if validating and recipe.callbacks else (),  # type: ignore[arg-type]
            )

        cv = int(self.options.cv) if recipe.cv else 0
        outcome = run_protocol(
            self.groups,
            self.strata,
            self.rows,
            cv=cv,
            val_fraction=self.options.val_fraction,
            seed=self.seed,
            fit=fit_rows,
            predict=recipe.predict,
            score=recipe.score,
            unit="images",
        )
        final: Fitted = outcome.final
        plots: list[str] = []
        if recipe.outputs is not None:
            plots += recipe.outputs("oof_" if cv else "validation_", outcome.rows, outcome.outputs)
        metrics = dict(outcome.metrics)
        headline = dict(outcome.headline)
        evaluation = outcome.evaluation
        if len(self.test_rows):
            test_outputs = recipe.predict(final, self.test_rows)
            scores = recipe.score(self.test_rows, test_outputs)
            metrics["test"], evaluation = held_out_test(
                self.run, self.manifest, self.groups, self.test_rows, scores, evaluation
            )
            if recipe.outputs is not None:
                plots += recipe.outputs("test_", self.test_rows, test_outputs)
            headline = scores
        self.write(recipe.record(final), recipe.weights(final), outcome, metrics, title=recipe.title)
        if recipe.figures is not None:
            recipe.figures(final)
        return self.summary(
            recipe.summary,
            evaluation=evaluation,
            metrics={k: v for k, v in headline.items() if recipe.headline(k) and not isinstance(v, list)},
            metrics_std=outcome.headline_std if not len(self.test_rows) else {},
            epochs=final.result.epochs_run,
            plots=plots if recipe.outputs is not None else None,
        )

    def write(
        self,
        record: dict[str, Any],
        weights: dict[str, Any],
        outcome: Any,
        metrics: dict[str, Any],
        *,
        title: str,
    ) -> None:
        """The files of a trained run: preprocessing.json (``record``), weights (file name -> state dict),
        splits.json, metrics.json, history.csv (``outcome``'s splits and history) and learning curves."""
        from neurodl.report import plots as figures  # heavy (matplotlib): only when a run is written

        self.run.write_json("preprocessing.json", record)
        for name, tensors in weights.items():
            self.run.save_weights(tensors, name)
        write_training_record(
            self.run,
            outcome,
            metrics,
            participant_column=self.images.participant,
            groups=self.groups,
            rows=self.rows,
            test_rows=self.test_rows,
        )
        self.run.save_figure("learning_curves.png", figures.learning_curves(outcome.history, title=title))

    def summary(
        self,
        head: dict[str, Any],
        *,
        evaluation: str,
        metrics: dict[str, Any],
        metrics_std: dict[str, Any],
        epochs: int,
        plots: list[str] | None = None,
        preprocessing: Any = None,
    ) -> dict[str, Any]:
        """The run's summary: ``head`` (task, target, model ...), its data, evaluation and headline metrics."""
        groups = self.groups
        planned = preprocessing if preprocessing is not None else head.pop("preprocessing", None)
        summary = {
            **{k: v for k, v in head.items() if k != "classes"},
            "images": len(self.manifest),
            "participants": len(set(groups.tolist())),
            **({"classes": head["classes"]} if "classes" in head else {}),
            **({"preprocessing": planned.to_dict()} if planned is not None else {}),
            "evaluation": evaluation,
            "metrics": metrics,
            "metrics_std": metrics_std,
            "epochs": epochs,
            "run": str(self.run.path),
        }
        if plots is not None:
            summary["plots"] = ["learning_curves.png", *plots]
        return summary


def trains(
    task: str,
    options_type: type,
    *,
    before: Callable[[Any], None] = lambda options: None,
    label: Callable[[Any], str | None] = lambda options: None,
    check: Callable[[Any], None] = lambda options: None,
    bids_images: Callable[[Any], list[str]] = lambda options: [],
) -> Callable[[Callable[[Training], dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Make a task's ``train(manifest_path, options, out, *, resume, overwrite, console, quiet)`` of its body.

    The body gets the started :class:`Training` (its saved options when resuming) and
    returns the run's summary. ``before`` refuses options before the run directory is
    created (an unknown model); ``label``, ``check`` and ``bids_images`` are those of
    :meth:`Training.start`.

    Example:
        >>> @trains("segment", SegmentOptions, label=lambda options: options.mask)  # doctest: +SKIP
        ... def train(training: Training) -> dict[str, Any]:
        ...     return training.train(Recipe(...))
    """

    def wrap(body: Callable[[Training], dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        def train(
            manifest_path: Path | None,
            options: Any,
            out: Path,
            *,
            resume: bool = False,
            overwrite: bool = False,
            console: Any = None,
            quiet: bool = False,
        ) -> dict[str, Any]:
            before(options)
            training = Training.start(
                task,
                options_type,
                manifest_path,
                options,
                out,
                resume=resume,
                overwrite=overwrite,
                console=console,
                quiet=quiet,
                label=label,
                check=check,
                bids_images=bids_images,
            )
            return body(training)

        train.__doc__, train.__name__, train.__qualname__ = body.__doc__, body.__name__, body.__qualname__
        train.__module__ = body.__module__
        return train

    return wrap


def open_trained(run_dir: Path, task: str, read: Callable[[dict[str, Any]], T]) -> tuple[RunDirectory, T]:
    """Open a run of ``task`` and ``read`` its ``preprocessing.json``; a damaged record is a clear error.

    ``read`` raises ``KeyError``/``TypeError``/``ValueError`` (or a :class:`NeurodlError`) on
    anything out of range: a tampered or foreign run is refused before any weight is read.
    """
    run = RunDirectory.open(run_dir, task=task)
    prep = run.read_json("preprocessing.json")
    try:
        return run, read(prep)
    except (KeyError, TypeError, ValueError, NeurodlError) as exc:
        raise RunDirectoryError(
            f"{run_dir}: preprocessing.json is damaged or names an unknown model ({exc}).",
            "Train the model again.",
        ) from exc


def place(run: RunDirectory, build: Callable[[], Any], device: str) -> tuple[Any, Any]:
    """The run's network built by ``build`` with its weights, on ``device`` (``auto`` resolved), in eval mode."""
    from neurodl.engine import resolve_device

    model = run.load_model(build)
    target = resolve_device(device)
    model.to(target).eval()
    return model, target


@dataclass
class Failure:
    """An input image that could not be processed, and why."""

    name: str
    message: str


def each_image(
    images: Iterable[Any], work: Callable[[Any], R], on_image: Callable[[Any], None] | None = None
) -> tuple[list[R], list[Failure]]:
    """``work`` on each image in turn; an image that raises a :class:`NeurodlError` is a failure, not the end.

    ``on_image`` is told of every image (done or failed), e.g. to advance a progress bar.
    Results that are ``None`` (nothing to report for that image) are left out.
    """
    results: list[R] = []
    failures: list[Failure] = []
    for image in images:
        try:
            result = work(image)
            if result is not None:
                results.append(result)
        except NeurodlError as exc:
            failures.append(Failure(image.name, str(exc)))
        finally:
            if on_image is not None:
                on_image(image)
    return results, failures


def require_some(results: Sequence[Any], failures: Sequence[Failure], manifest_path: Path, done: str) -> None:
    """Refuse an evaluation in which no image could be ``done`` (e.g. 'evaluated'), naming the first reasons."""
    if not results:
        reasons = "; ".join(f"{f.name}: {f.message}" for f in failures[:3])
        raise DataError(
            f"{manifest_path}: no image could be {done} ({reasons}).", "Fix the inputs named above."
        )


def refuse_input(path: Path, input_files: set[Path]) -> None:
    """An output that would replace one of the inputs is an error: neurodl never overwrites its inputs."""
    if path.resolve() in input_files:
        raise OutputError(
            f"{path}: is also an input; neurodl never overwrites its inputs.", "Choose another -o folder."
        )


def input_files(images: Iterable[Any]) -> set[Path]:
    """Every file of the input images, resolved (outputs are checked against them)."""
    return {p.resolve() for image in images for p in image.paths}


@dataclass
class Evaluation:
    """The manifest an ``evaluate`` scores, its images, and the warnings so far."""

    manifest: Manifest
    images: list[Any]
    warnings: list[str]


def open_evaluation(
    loaded: Any,
    manifest_path: Path,
    *,
    label: str | None,
    required: Sequence[str] = (),
    fix: str = "",
    allow_overlap: bool,
    report_dir: Path | None,
    overwrite: bool,
    bids_filter: Sequence[str] = (),
    bids_images: Sequence[str] = (),
    mask_column: str | None = None,
    image_label: str | None = None,
    resolve: bool = True,
) -> Evaluation:
    """Read an ``evaluate`` manifest for a loaded model: report folder, columns, leakage, then its images.

    ``required`` columns must exist (``fix`` says how, if given); a ``mask_column`` must hold
    mask images; ``image_label`` is the column each image's ``label`` is read from. Participants the
    model was trained or selected on are refused unless ``allow_overlap``.
    """
    from neurodl.data.inputs import resolve_inputs

    check_report_dir(report_dir, manifest_path, overwrite=overwrite)
    manifest = load_manifest(
        manifest_path,
        loaded.image_columns,
        label,
        loaded.participant_column,
        require_files=False,
        bids_filter=bids_filter,
        **({"bids_images": list(bids_images)} if bids_images else {}),
    )
    if required:
        require_columns(manifest.frame, list(required), manifest_path, **({"fix": fix} if fix else {}))
    if mask_column:
        require_columns(manifest.frame, [mask_column], manifest_path)
        if not manifest.label_is_image or manifest.label_files is None:
            raise UsageError(
                f"{manifest_path}: column '{mask_column}' does not hold mask images (.nii/.nii.gz paths).",
                "Name a column of label images with --mask (e.g. --mask dseg).",
            )
    warnings = check_leakage(loaded.run, manifest.participant_ids, manifest_path, allow_overlap=allow_overlap)
    images: list[Any] = []
    if resolve:
        images, _ = resolve_inputs(
            [manifest_path],
            image_columns=loaded.image_columns,
            participant_column=loaded.participant_column,
            bids_filter=bids_filter,
            label_column=image_label,
        )
    return Evaluation(manifest, images, warnings)


def row_mask(manifest: Manifest, manifest_path: Path, row: int | None, column: str) -> Path | None:
    """The mask file of a manifest row (None without a mask column); an empty cell is an error."""
    if manifest.label_files is None or row is None:
        return None
    path = manifest.label_files[row]
    if path is None:
        raise DataError(
            f"{manifest_path}: row {row + 1} has no mask in column '{column}'.", "Fill in the mask path."
        )
    return Path(path)


def write_report(
    report_dir: Path | None,
    task: str,
    tables: dict[str, Any],
    metrics: dict[str, Any],
    *,
    manifest_path: Path,
    model: Path,
    failures: Sequence[Failure],
) -> RunDirectory | None:
    """Write an ``evaluate --out`` report (its tables and metrics.json) once every image was processed.

    A report that leaves inputs out would mislead, so none is written when any failed.
    Returns the report's writer (for figures), or None when nothing was written.
    """
    if report_dir is None or failures:
        return None
    writer = RunDirectory(report_dir, task)  # an atomic writer for the report files
    for name, table in tables.items():
        writer.write_csv(name, table)
    writer.write_json("metrics.json", {"manifest": str(manifest_path), "model": str(model), **metrics})
    return writer


def mean_scores(names: Sequence[str]) -> Callable[[np.ndarray, np.ndarray], dict[str, Any]]:
    """A recipe's ``score`` for per-image scores (one column per name): their means over the rows."""

    def score(rows: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
        del rows
        return {name: float(np.mean(scores[:, k])) for k, name in enumerate(names)}

    return score
