"""The image tasks' driver: one owner of a training run's life, and a recipe per task of what differs.

A task writes only what differs, as a :class:`Recipe` of small functions (how to
build the module for some training rows, make its batches, predict and score
rows, what ``preprocessing.json`` records, its figures); :class:`Training`
does the rest the same way for every task: start (or resume) the run, read
the manifest, hold out test participants, fit through
:func:`~neurodl.tasks._protocol.run_protocol`, score the held-out test, write
the run's files and return the summary. :func:`trains` makes the task's public
``train(manifest_path, options, out, ...)`` of its body. Using a trained run
(``load()``, the per-image loop of ``predict``/``evaluate``) is
:mod:`neurodl.tasks._trained`.

Example:
    >>> @trains("segment", SegmentOptions, label=lambda options: options.mask)  # doctest: +SKIP
    ... def train(training: Training) -> dict[str, Any]:
    ...     training.hold_out_test()
    ...     return training.train(Recipe(module=..., batches=..., predict=..., score=..., record=...))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from neurodl.config import from_dict, to_dict
from neurodl.data.splits import split_by_participant
from neurodl.engine import AdversarialTask, Callback, FitResult, Task, fit
from neurodl.errors import UsageError
from neurodl.io.manifest import Manifest, load_manifest
from neurodl.io.rundir import RunDirectory
from neurodl.models import list_models
from neurodl.tasks._protocol import run_protocol
from neurodl.tasks._run import (
    cache_folder,
    held_out_test,
    progress,
    start_run,
    warm_cache,
    write_training_record,
)

if TYPE_CHECKING:
    from neurodl.data.images import (
        ImagePreprocessing,
    )  # MONAI: not for biomarkers, which shares the run helpers

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
        record: what ``preprocessing.json`` records of the final model beyond the preprocessing and
            the image and participant columns (``load()`` restores it).
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

    module: Callable[[np.ndarray], Task | AdversarialTask]
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
    # Planned on the training images by plan() (a task that adapts it sets the result here): what the
    # run records in preprocessing.json and its summary.
    preprocessing: ImagePreprocessing | None = None

    @classmethod
    def start(
        cls,
        task: str,
        options_type: type,
        call: TrainCall,
        *,
        label: Callable[[Any], str | None] = lambda options: None,
        check: Callable[[Any], None] = lambda options: None,
        bids_images: Callable[[Any], list[str]] = lambda options: [],
    ) -> Training:
        """Create (or resume) the run directory of ``call`` and read its manifest.

        ``label`` names the manifest's label column from the options (the saved ones
        when resuming); ``check`` refuses options that contradict each other before the
        manifest is read.
        """
        run, source, saved = call.start_run(task)
        options: Any = from_dict(options_type, saved)
        check(options)
        images = options.images
        manifest = load_manifest(
            source,
            list(images.image),
            label(options),
            images.participant,
            bids_filter=images.bids_filter,
            bids_images=bids_images(options),
        )
        return cls(task, run, source, options, manifest, call.resume, call.console, call.quiet)

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

    def plan(
        self,
        *,
        size: Sequence[int] | None = None,
        resize: bool = True,
        label_values: Sequence[int] = (),
        fit_spacing: bool = False,
        fit_within: Sequence[int] = (),
    ) -> ImagePreprocessing:
        """The preprocessing planned on the training images from the image options (``size``: another size).

        ``fit_spacing``: without ``--spacing``, coarsen the voxels so whole heads fit ``--size``
        (:func:`~neurodl.data.images.fitting_spacing`) rather than being cropped.
        ``fit_within``: without ``--spacing`` or ``--size``, coarsen them so the median field of view
        fits these sides (full-size 1 mm heads: fewer, coarser voxels; small images keep theirs).
        """
        from neurodl.data.images import fitting_spacing, plan_preprocessing  # MONAI: image tasks only

        images, paths = self.images, self.training_paths()
        if images.spacing:
            spacing: Sequence[float] = images.spacing
        elif fit_spacing:
            spacing = fitting_spacing(paths, images.size)
        elif fit_within and not images.size:
            spacing = fitting_spacing(paths, fit_within)
        else:
            spacing = ()
        self.preprocessing = plan_preprocessing(
            paths,
            spacing=spacing,
            size=images.size if size is None else size,
            normalize=images.normalize,
            crop_foreground=images.crop_foreground,
            channels=len(images.image),
            resize=resize,
            label_values=label_values,
        )
        return self.preprocessing

    @property
    def planned(self) -> ImagePreprocessing:
        """The run's preprocessing (:meth:`plan` first)."""
        if self.preprocessing is None:
            raise RuntimeError("Training.plan() was not called")
        return self.preprocessing

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
        module: Task | AdversarialTask,
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
        record = self.record(**recipe.record(final))
        self.write(record, recipe.weights(final), outcome, metrics, title=recipe.title)
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

    def record(self, **recorded: Any) -> dict[str, Any]:
        """A run's ``preprocessing.json``: the preprocessing, the image and participant columns, and ``recorded``."""
        images = self.images
        return {
            "images": self.planned.to_dict(),
            "image_columns": list(images.image),
            "participant_column": images.participant,
            **recorded,
        }

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
    ) -> dict[str, Any]:
        """The run's summary: ``head`` (task, target, model ...), its data, evaluation and headline metrics."""
        groups = self.groups
        summary = {
            **{k: v for k, v in head.items() if k != "classes"},
            "images": len(self.manifest),
            "participants": len(set(groups.tolist())),
            **({"classes": head["classes"]} if "classes" in head else {}),
            "preprocessing": self.planned.to_dict(),
            "evaluation": evaluation,
            "metrics": metrics,
            "metrics_std": metrics_std,
            "epochs": epochs,
            "run": str(self.run.path),
        }
        if plots is not None:
            summary["plots"] = ["learning_curves.png", *plots]
        return summary


@dataclass(frozen=True)
class TrainCall:
    """The arguments of a task's ``train``: its input, options, run directory and how to run."""

    source: Path | None
    options: Any
    out: Path
    resume: bool
    overwrite: bool
    console: Any
    quiet: bool

    def start_run(self, task: str) -> tuple[RunDirectory, Path, dict[str, Any]]:
        """:func:`~neurodl.tasks._run.start_run` for this call: the run, its input and its (saved) options."""
        return start_run(
            self.out,
            task=task,
            source=self.source,
            options=to_dict(self.options),
            resume=self.resume,
            overwrite=self.overwrite,
        )


def train_entry(body: Callable[[TrainCall], dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """A task's public ``train(source, options, out, *, resume, overwrite, console, quiet)``, from its body.

    The body gets the call's arguments as one :class:`TrainCall` and returns the run's summary;
    every task's ``train`` keeps the one signature the CLI and the tuner call.
    """

    def train(
        source: Path | None,
        options: Any,
        out: Path,
        *,
        resume: bool = False,
        overwrite: bool = False,
        console: Any = None,
        quiet: bool = False,
    ) -> dict[str, Any]:
        return body(TrainCall(source, options, out, resume, overwrite, console, quiet))

    train.__doc__, train.__name__, train.__qualname__ = body.__doc__, body.__name__, body.__qualname__
    train.__module__ = body.__module__
    return train


def trains(
    task: str,
    options_type: type,
    *,
    before: Callable[[Any], None] = lambda options: None,
    label: Callable[[Any], str | None] = lambda options: None,
    check: Callable[[Any], None] = lambda options: None,
    bids_images: Callable[[Any], list[str]] = lambda options: [],
) -> Callable[[Callable[[Training], dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Make an image task's ``train`` (see :func:`train_entry`) of a body that gets the started :class:`Training`.

    ``before`` refuses options before the run directory is created (an unknown model);
    ``label``, ``check`` and ``bids_images`` are those of :meth:`Training.start`.

    Example:
        >>> @trains("segment", SegmentOptions, label=lambda options: options.mask)  # doctest: +SKIP
        ... def train(training: Training) -> dict[str, Any]:
        ...     return training.train(Recipe(...))
    """

    def wrap(body: Callable[[Training], dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        def started(call: TrainCall) -> dict[str, Any]:
            before(call.options)
            training = Training.start(
                task, options_type, call, label=label, check=check, bids_images=bids_images
            )
            return body(training)

        started.__doc__, started.__name__, started.__qualname__ = (
            body.__doc__,
            body.__name__,
            body.__qualname__,
        )
        started.__module__ = body.__module__
        return train_entry(started)

    return wrap


def mean_scores(names: Sequence[str]) -> Callable[[np.ndarray, np.ndarray], dict[str, Any]]:
    """A recipe's ``score`` for per-image scores (one column per name): their means over the rows."""

    def score(rows: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
        del rows
        return {name: float(np.mean(scores[:, k])) for k, name in enumerate(names)}

    return score
