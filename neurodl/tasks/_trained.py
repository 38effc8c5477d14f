"""A trained run in use: every ``load()``, and the per-image loop of ``predict``/``evaluate``.

:func:`load_trained` opens an image task's run as its :class:`Trained` dataclass: it reads
the run's ``preprocessing.json`` (:func:`open_trained`; a damaged one is a clear error)
and builds its network with the weights on a device (:func:`place`);
:func:`each_image` runs a task's work on each input image, where a bad image is a
:class:`Failure` and the others still processed; :func:`open_evaluation` and
:func:`write_report` begin and end every ``evaluate``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

from neurodl.errors import DataError, NeurodlError, OutputError, RunDirectoryError, UsageError
from neurodl.io.manifest import Manifest, load_manifest
from neurodl.io.rundir import RunDirectory
from neurodl.io.tables import require_columns
from neurodl.tasks._run import check_leakage, check_report_dir, recorded_columns

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Trained:
    """What every loaded image model holds: its run, its images' preprocessing, the columns it
    reads (one image column per input channel, the participant column) and its device."""

    run: RunDirectory
    preprocessing: Any  # ImagePreprocessing
    image_columns: list[str]
    participant_column: str
    device: Any  # torch.device


L = TypeVar("L", bound=Trained)


def load_trained(
    run_dir: Path,
    task: str,
    loaded: type[L],
    read: Callable[[dict[str, Any], Any, dict[str, Any]], dict[str, Any]],
    build: Callable[[dict[str, Any]], Any],
    device: str,
    wrap: Callable[[Any, dict[str, Any]], Any] = lambda network, fields: network,
    *,
    network: str = "module",
) -> L:
    """Open a run of ``task`` as ``loaded`` (a :class:`Trained`), ready on ``device``.

    ``read(prep, preprocessing, spec)`` checks the run's ``preprocessing.json`` (its images'
    preprocessing and model description already parsed) and returns the task's own fields
    of ``loaded``, raising ``ValueError`` on anything out of range (see :func:`open_trained`);
    ``build(spec)`` makes the network, which gets the run's weights and goes to the device;
    ``wrap(network, fields)`` makes field ``network`` of it (e.g. a module with its loss), from
    what ``read`` returned (``read`` may leave under ``network`` the settings ``wrap`` needs).
    """
    from neurodl.data.images import ImagePreprocessing  # heavy (MONAI): only when a model is loaded

    def parse(prep: dict[str, Any]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        preprocessing = ImagePreprocessing.from_dict(prep["images"])
        spec = dict(prep["model"])
        fields = read(prep, preprocessing, spec)
        columns, participant = recorded_columns(prep, int(spec.get("in_channels", 1)))
        return preprocessing, spec, {**fields, "image_columns": columns, "participant_column": participant}

    run, (preprocessing, spec, fields) = open_trained(run_dir, task, parse)
    model, target = place(run, lambda: build(spec), device)
    fields[network] = wrap(model, fields)
    return loaded(run=run, preprocessing=preprocessing, device=target, **fields)


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


class BatchSettings(TypedDict, total=False):
    """How every per-image command (``predict``, ``reconstruct``, ``interpret``, ``encode``) walks its
    inputs: the keywords it passes on to :func:`open_batch` (``overwrite`` and ``preview`` where it
    writes a file per input).

    ``overwrite``: redo outputs already there (default: kept); ``preview``: also write a PNG per
    input; ``shard``: ``I/N``, this process's share of the inputs; ``on_image``: told of every
    image, done or failed (e.g. to advance a progress bar).
    """

    overwrite: bool
    preview: bool
    shard: str | None
    on_image: Callable[[Any], None] | None


@dataclass
class Batch:
    """The input images of a per-image command, their manifest (if a table named them) and its outputs' folder."""

    images: list[Any]
    manifest: Manifest | None
    out_dir: Path
    settings: BatchSettings
    writer: RunDirectory  # the atomic writer of the PNG previews

    def __post_init__(self) -> None:
        self.reads = input_files(self.images)

    def output(self, name: str) -> Path:
        """``out_dir/name``; an output that would replace an input is an error."""
        path = self.out_dir / name
        refuse_input(path, self.reads)
        return path

    def keeps(self, *paths: Path) -> bool:
        """Whether these outputs are there already and kept (no ``overwrite``)."""
        return not self.settings.get("overwrite", False) and all(p.exists() for p in paths)

    def each(self, work: Callable[[Any], R]) -> tuple[list[R], list[Failure]]:
        """``work`` on each image (:func:`each_image`), telling ``on_image``."""
        return each_image(self.images, work, self.settings.get("on_image"))


def open_batch(
    loaded: Trained,
    inputs: Sequence[Path],
    out_dir: Path = Path("."),
    *,
    label_column: str | None = None,
    bids_filter: Sequence[str] = (),
    **settings: Unpack[BatchSettings],
) -> Batch:
    """The images of a command's INPUTS (files, folders, a manifest or a BIDS root) for ``loaded``'s columns."""
    from neurodl.data.inputs import resolve_inputs

    images, manifest = resolve_inputs(
        inputs,
        image_columns=loaded.image_columns,
        participant_column=loaded.participant_column,
        label_column=label_column,
        shard=settings.get("shard"),
        bids_filter=bids_filter,
    )
    return Batch(images, manifest, out_dir, settings, RunDirectory(out_dir, loaded.run.task))


@dataclass
class Evaluation:
    """The manifest an ``evaluate`` scores, its images, the warnings so far, and where its report goes."""

    manifest: Manifest
    images: list[Any]
    warnings: list[str]
    manifest_path: Path
    model: RunDirectory
    report_dir: Path | None

    def report(
        self, tables: dict[str, Any], metrics: dict[str, Any], failures: Sequence[Failure]
    ) -> RunDirectory | None:
        """Write the report (``--out``): :func:`write_report` of this evaluation."""
        return write_report(
            self.report_dir,
            self.model.task,
            tables,
            metrics,
            manifest_path=self.manifest_path,
            model=self.model.path,
            failures=failures,
        )

    def finish(
        self,
        rows: Sequence[dict[str, Any]],
        failures: list[Failure],
        summarize: Callable[[Any], dict[str, Any]],
    ) -> tuple[dict[str, Any], Any, list[Failure], list[str]]:
        """The metrics (``images`` and ``summarize`` of the per-image table), the table, failures and warnings.

        Refuses an evaluation in which no image could be evaluated; writes the report (``per_image.csv``).
        """
        import pandas as pd  # heavy: only when an evaluation is summarised

        require_some(rows, failures, self.manifest_path, "evaluated")
        per_image = pd.DataFrame(list(rows))
        metrics = {"images": len(per_image), **summarize(per_image)}
        self.report({"per_image.csv": per_image}, metrics, failures)
        return metrics, per_image, failures, self.warnings


class EvaluationSettings(TypedDict, total=False):
    """How every image task's ``evaluate`` reads its manifest and writes its report: the keywords it
    passes on to :func:`open_evaluation`.

    ``allow_overlap``: accept participants the model was trained or selected on (default: refused);
    ``report_dir``: where the report is written (default: none); ``overwrite``: replace a report
    already there; ``bids_filter``: ``ENTITY=VALUE`` filters of a BIDS dataset's images.
    """

    allow_overlap: bool
    report_dir: Path | None
    overwrite: bool
    bids_filter: Sequence[str]


def open_evaluation(
    loaded: Trained,
    manifest_path: Path,
    *,
    label: str | None,
    required: Sequence[str] = (),
    fix: str = "",
    allow_overlap: bool = False,
    report_dir: Path | None = None,
    overwrite: bool = False,
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
        bids_images=bids_images,
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
    return Evaluation(manifest, images, warnings, manifest_path, loaded.run, report_dir)


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
