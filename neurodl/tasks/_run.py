"""Starting, resuming and reporting a training run: the same for every task."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from neurodl.config import RUNTIME_OPTIONS
from neurodl.engine import Callback, distributed
from neurodl.engine.progress import RichProgress
from neurodl.errors import DataError, NeurodlError, NothingToDo, OutputError, RunDirectoryError, UsageError
from neurodl.io.rundir import RunDirectory


def file_digest(path: Path) -> str:
    """SHA-256 of a file (or of a BIDS dataset's images and tables): a run refuses to resume on changed data."""
    if path.is_dir():
        from neurodl.io.bids import dataset_digest

        return dataset_digest(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def start_run(
    out: Path,
    *,
    task: str,
    source: Path | None,
    options: dict[str, Any],
    resume: bool,
    overwrite: bool,
) -> tuple[RunDirectory, Path, dict[str, Any]]:
    """Create ``out`` (or reopen it with ``resume``) and return it with the input and options.

    A resumed run uses its saved options and input (except :data:`neurodl.config.RUNTIME_OPTIONS`,
    e.g. a run started in 4 processes may resume in 1), and refuses to continue if
    the input changed since. In distributed training rank 0 creates the run
    directory and is its only writer; every process gets the same result or error.
    """
    run, source, saved = distributed.on_main(
        lambda: (
            _resume_run(out, task, source, options)
            if resume
            else _create_run(out, task, source, options, overwrite)
        )
    )
    run.writer = distributed.is_main()
    if resume and isinstance(saved.get("train"), dict) and isinstance(options.get("train"), dict):
        for name in (*RUNTIME_OPTIONS, "epochs"):
            if name in options["train"]:
                saved["train"][name] = options["train"][name]
    return run, source, saved


def _resumed_epochs(saved: dict[str, Any], options: dict[str, Any]) -> tuple[int, int]:
    """The run's saved number of epochs, and the number it is to reach (more: train longer)."""
    before = int((saved.get("train") or {}).get("epochs", 0))
    asked = int((options.get("train") or {}).get("epochs", before))
    return before, max(before, asked)


def _check_resumed_input(out: Path, given: Path | None, recorded: Path) -> None:
    """A manifest typed with ``--resume`` must be the run's own: never silently ignored."""
    if given is None:
        return
    if str(given).lower() in ("true", "false", "yes", "no", "1", "0") and not given.exists():
        raise UsageError(
            f"--resume takes no value, so '{given}' was read as the manifest.",
            f"Write --resume alone: neurodl ... train --resume --out {out}",
        )
    if not given.exists():
        raise DataError(
            f"{given}: file does not exist (and --resume continues {out} on its own input, {recorded}).",
            "Drop the manifest (the run's is used), or check the path.",
        )
    if given.resolve() != recorded.resolve():
        raise UsageError(
            f"--resume continues {out} on its own input {recorded}, not {given}.",
            "Drop the manifest to continue the run, or train a new run on it (another --out, or --overwrite).",
        )


def _check_something_to_resume(run: RunDirectory, before: int, after: int) -> None:
    """A finished run is left untouched unless ``--epochs`` asks for more training than it had."""
    from neurodl.io.rundir import WEIGHTS_FILE

    if not (run.exists("metrics.json") and run.exists(WEIGHTS_FILE)):
        return
    if after <= before:
        raise NothingToDo(
            f"{run.path}: finished all {before} epochs; there is nothing to resume (its files are unchanged).",
            f"To train it longer, add --epochs N with N above {before}; to train again, use --overwrite.",
        )
    stopped = _stopped_early(run)
    if stopped is not None:
        raise NothingToDo(
            f"{run.path}: stopped early at epoch {stopped} (no improvement for --patience epochs), so more --epochs would not train it further; its files are unchanged.",
            "Train a new run with a larger --patience (another --out, or --overwrite).",
        )


def _stopped_early(run: RunDirectory) -> int | None:
    """The last epoch of a run whose every fit stopped early (None if any fit could go on)."""
    from neurodl.io.state import load_state

    checkpoints = sorted(run.file("checkpoints").glob("*.safetensors"))
    if not checkpoints:
        return None
    last = 0
    for checkpoint in checkpoints:
        try:
            state = load_state(checkpoint)
        except NeurodlError:
            return None
        if not state.get("stopped_early"):
            return None
        last = max(last, len(state.get("history", [])))
    return last


def _resume_run(
    out: Path, task: str, source: Path | None, options: dict[str, Any]
) -> tuple[RunDirectory, Path, dict[str, Any]]:
    run = RunDirectory.open(out, task=task)
    run.remove_partial_writes()  # a run killed mid-write (SIGKILL) leaves its temporary file
    saved = run.options
    recorded_input = Path(saved.pop("input"))
    _check_resumed_input(out, source, recorded_input)
    source = recorded_input
    digest = saved.pop("input_sha256", None)
    if not source.exists():
        raise RunDirectoryError(
            f"{out}: its input {source} no longer exists.", "Restore the file, or train a new run."
        )
    if digest and file_digest(source) != digest:
        raise RunDirectoryError(
            f"{out}: {source} changed since this run started, so it cannot be resumed.",
            "Train a new run (--overwrite to replace this one).",
        )
    before, after = _resumed_epochs(saved, options)
    _check_something_to_resume(run, before, after)
    if after != before:
        # config.json says what the run is: it now trains to the raised number of epochs.
        run.config.setdefault("options", {}).setdefault("train", {})["epochs"] = after
        run.write_json("config.json", run.config)
    return run, source, saved


def _create_run(
    out: Path, task: str, source: Path | None, options: dict[str, Any], overwrite: bool
) -> tuple[RunDirectory, Path, dict[str, Any]]:
    if source is None:
        raise DataError(
            "no input table or manifest given.",
            "Give the CSV/TSV to train on, or --resume with the run directory as --out.",
        )
    if not source.is_file() and not source.is_dir():
        raise DataError(f"{source}: file does not exist.", "Check the path.")
    if Path(out).resolve() in source.resolve().parents:
        raise OutputError(
            f"{source}: lies inside --out {out}, whose files the run writes; neurodl never overwrites its inputs.",
            "Move the table out of the run directory, or choose another --out.",
        )
    recorded = {"input": str(source.resolve()), "input_sha256": file_digest(source), **options}
    run = RunDirectory.create(
        out, task=task, options=recorded, overwrite=overwrite, runtime=training_device(options)
    )
    return run, source, options


def training_device(options: dict[str, Any]) -> dict[str, str]:
    """The device a run trains on (``auto`` resolved; the GPU's name), and its processes under torchrun."""
    import torch  # heavy: only when a run starts

    from neurodl.engine.runtime import resolve_device
    from neurodl.errors import NeurodlError

    try:
        device = resolve_device(str((options.get("train") or {}).get("device", "auto")))
    except NeurodlError:
        return {}  # the run itself reports the bad --device
    name = str(device)
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    runtime = {"device": name}
    if distributed.active():
        runtime["processes"] = str(distributed.world_size())
    return runtime


# Files an ``evaluate --out`` writes that a table given as its input could be.
REPORT_TABLES = ("predictions.csv", "per_image.csv", "metrics.json")


def check_report_dir(report_dir: Path | None, source: Path, *, overwrite: bool) -> None:
    """Refuse an ``evaluate --out`` folder whose report would replace the input, or an earlier report."""
    if report_dir is None:
        return
    if any((report_dir / name).resolve() == source.resolve() for name in REPORT_TABLES):
        raise OutputError(
            f"{source}: is also an input; neurodl never overwrites its inputs (the report in {report_dir} has a file of that name).",
            "Choose another --out folder.",
        )
    if (report_dir / "metrics.json").exists() and not overwrite:
        raise OutputError(
            f"{report_dir}: already holds metrics.json.", "Choose another --out, or add --overwrite."
        )


@contextlib.contextmanager
def progress(console: Any, quiet: bool, description: str) -> Iterator[list[Callback]]:
    """Progress-bar callbacks for one fit (none when quiet); the bar is closed even on error.

    Also the callbacks of the observers watching this ``train`` (tracking, a tuner's pruning).
    """
    from neurodl.engine.observers import fit_callbacks

    shown = not quiet and console is not None and distributed.is_main()
    callbacks: list[Callback] = [RichProgress(console, description)] if shown else []
    callbacks += fit_callbacks(description)
    try:
        yield callbacks
    finally:
        for callback in callbacks:
            if isinstance(callback, RichProgress):
                callback.close()


def warm_cache(dataset: Any, console: Any, quiet: bool) -> None:
    """Decode and preprocess every image once, before training (a bad file stops the run here)."""
    planned = getattr(getattr(dataset, "preprocessing", None), "describe", None)
    if planned is not None and not quiet and console is not None and distributed.is_main():
        console.print(f"Input: {planned()}")
    if quiet or console is None or not distributed.is_main():
        dataset.warm()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]preprocessing images"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("", total=len(dataset))
        dataset.warm(lambda i: bar.update(task, completed=i + 1))
    store = getattr(dataset, "store", None)
    if store is not None and store.on_disk:
        console.print(f"Preprocessed images: {store.describe()} (beyond --cache-budget).")


def check_leakage(run: RunDirectory, participants: Any, source: Path, *, allow_overlap: bool) -> list[str]:
    """Refuse to score participants the run was trained or selected on (unless ``allow_overlap``).

    Returns warnings for the report.
    """
    trained = (
        set(run.read_json("splits.json").get("training_participants", []))
        if run.exists("splits.json")
        else set()
    )
    overlap = sorted(set(str(p) for p in participants) & trained)
    if overlap and not allow_overlap:
        shown = ", ".join(overlap[:5]) + (f" and {len(overlap) - 5} more" if len(overlap) > 5 else "")
        raise DataError(
            f"{source}: {len(overlap)} participant(s) of this manifest were used to train or select the model ({shown}); their scores would be optimistic.",
            "Evaluate on held-out participants (train with --test-fraction and evaluate RUN/test_manifest.tsv), or add --allow-overlap.",
        )
    return [f"{len(overlap)} participants were in the training data (--allow-overlap)."] if overlap else []


def write_held_out_manifest(
    run: RunDirectory, manifest: Any, rows: Any, name: str = "test_manifest.tsv"
) -> None:
    """Write the held-out rows as a manifest `evaluate` can read from anywhere.

    Every column of NIfTI paths (images, masks) is made absolute, since the
    paths were relative to the original manifest's folder.
    """
    frame = manifest.frame.iloc[rows].copy()
    for column in frame.columns:
        values = frame[column].dropna().astype(str)
        if len(values) and values.str.lower().str.endswith((".nii", ".nii.gz")).all():
            frame[column] = [
                str((manifest.root / str(v)).resolve()) if isinstance(v, str) and v else v
                for v in frame[column]
            ]
    run.write_csv(name, frame)


def cache_folder(run: RunDirectory, images: Any) -> Path | None:
    """Where ``--cache disk`` (and ``auto`` beyond its budget) keeps preprocessed images:
    ``--cache-dir``, or the run's ``cache/``."""
    if images.cache not in ("disk", "auto"):
        return None
    return Path(images.cache_dir) if images.cache_dir else run.file("cache")


def recorded_columns(prep: dict[str, Any], channels: int) -> tuple[list[str], str]:
    """The image columns (one per input channel) and the participant column a run recorded.

    Raises ``ValueError`` when ``preprocessing.json`` was damaged: a column that is not a
    plain name, or a number of columns other than the network's input channels.
    """
    columns = prep["image_columns"]
    participant = prep.get("participant_column", "participant_id")
    if (
        not isinstance(columns, list)
        or len(columns) != channels
        or not all(isinstance(c, str) and c and "\0" not in c for c in [*columns, participant])
    ):
        raise ValueError("image or participant columns out of range")
    return [str(c) for c in columns], str(participant)


def held_out_test(
    run: RunDirectory, manifest: Any, groups: Any, test_rows: Any, scores: dict[str, Any], evaluation: str
) -> tuple[dict[str, Any], str]:
    """The ``test`` entry of metrics.json for held-out participants, and the evaluation line naming them.

    Also writes their manifest (``test_manifest.tsv``) for ``evaluate``.
    """
    participants = len(set(groups[test_rows].tolist()))
    write_held_out_manifest(run, manifest, test_rows)
    test = {"participants": participants, "images": len(test_rows), **scores}
    return test, f"held-out test participants ({participants}, never trained or selected on); {evaluation}"


def write_training_record(
    run: RunDirectory,
    outcome: Any,
    metrics: dict[str, Any],
    *,
    participant_column: str,
    groups: Any,
    rows: Any,
    test_rows: Any,
) -> None:
    """splits.json (who was trained, validated, tested on), metrics.json and history.csv of a run."""
    import pandas as pd  # heavy: only when a run is written

    run.write_json(
        "splits.json",
        {
            "participant_column": participant_column,
            **outcome.splits,
            "test": sorted(set(groups[test_rows].tolist())),
            "training_participants": sorted(set(groups[rows].tolist())),
        },
    )
    run.write_json("metrics.json", metrics)
    run.write_csv("history.csv", pd.DataFrame(outcome.history))
