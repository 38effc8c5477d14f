"""neurodl classify vs a plain MONAI tutorial-style training loop, on the same data and model.

Trains MONAI's 3D DenseNet121 on the committed ``sample_data/`` cohort (40
T1w phantoms, CN vs AD; 32 training / 8 validation images) with each
pipeline, side by side in one process:

* **MONAI loop** -- written as MONAI's 3D classification tutorial writes it
  (``densenet_training_dict.py``): ``LoadImaged(ensure_channel_first=True)``
  -> ``Orientationd("RAS")`` -> ``Spacingd`` -> ``ResizeWithPadOrCropd`` (not
  the tutorial's ``Resized``, so both pipelines see the same voxels) ->
  ``NormalizeIntensityd`` -> ``RandRotate90d(prob=0.8, spatial_axes=[0, 2])``
  (training only) in a ``monai.data.Dataset`` (no cache) +
  ``DataLoader(num_workers=2)``, ``DenseNet121(spatial_dims=3, in_channels=1,
  out_channels=2)``, ``CrossEntropyLoss``, Adam, fp32, validation every epoch
  and ``torch.save`` of the best weights.
* **neurodl** -- ``neurodl.tasks.classify.train`` with the options of
  ``neurodl classify train MANIFEST --image t1 --label diagnosis --model densenet121
  --epochs E --batch-size B --device cpu`` (everything else at the CLI
  defaults: in-memory cache, ``--augment light``, ``--workers 0``, dropout
  0.2, one logit + BCE, checkpoint every epoch): what a CLI user gets.
* informational: the same MONAI loop with ``num_workers=0`` (timed in the same
  rotation), and neurodl's default ``cnn`` model (one run).

All use the same participants for training/validation (neurodl's split), the
same preprocessing parameters (neurodl's plan from the headers: 1 mm, 48^3),
batch size, epochs, learning rate (1e-3), seed and 2 torch threads. The
pipelines run in alternating order (A B C, C B A, A B C) so drifting load on a
shared machine hits each alike; timings are medians over the repeats.

Measured per epoch: the training pass (first batch fetched to last optimiser
step, data loading included) as images/s; the rest of the epoch (validation,
weight copies, checkpoint); the train loss and validation loss / balanced
accuracy / ROC AUC after each epoch; then per-image predict latency from the
files (neurodl: ``classify.load`` + ``classify.predict``; MONAI: validation
transforms + forward), median over images. neurodl's epoch 1 includes the
decoding of its cache (``VolumeDataset.warm``, which ``train`` runs just
before ``fit``). Nothing is asserted: the figures are reported.

    python benchmarks/classify.py           # full run (48^3, 3 epochs, 3 repeats; ~2 min on 2 idle cores)
    python benchmarks/classify.py --quick   # smoke test (32^3, 2 epochs, 1 repeat; ~15 s idle)

Results go to ``benchmarks/results/classify.json`` (full run) and are
summarised in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import monai
import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neurodl.config import ClassifyOptions, build  # noqa: E402
from neurodl.data.images import plan_preprocessing, preprocess  # noqa: E402
from neurodl.data.splits import split_by_participant  # noqa: E402
from neurodl.data.tabular import TargetEncoder  # noqa: E402
from neurodl.data.volumes import VolumeDataset  # noqa: E402
from neurodl.engine import Callback  # noqa: E402
from neurodl.tasks import classify as classify_task  # noqa: E402
from neurodl.tasks.metrics import epoch_classification_metrics  # noqa: E402

MANIFEST = ROOT / "sample_data" / "participants.tsv"
IMAGE_COLUMN = "t1"
LABEL = "diagnosis"
SEED = 0
LR = 1e-3  # neurodl classify's default; MONAI's tutorials use 1e-4/1e-5 (same for both here)
VAL_FRACTION = 0.2  # neurodl classify's default
THREADS = 2
MONAI_WORKERS = 2
TARGET_RATIO = 1.0  # neurodl images/s / MONAI loop images/s, from the issue

FULL = {"size": None, "epochs": 3, "batch_size": 8, "repeats": 3, "predict_images": 8, "extras": True}
QUICK = {"size": 32, "epochs": 2, "batch_size": 8, "repeats": 1, "predict_images": 4, "extras": False}


# --------------------------------------------------------------------------- data


@dataclass
class Cohort:
    paths: list[Path]
    labels: np.ndarray  # 0 = negative (CN), 1 = positive (AD), neurodl's encoding
    classes: list[str]
    train_rows: np.ndarray
    val_rows: np.ndarray
    spacing: tuple[float, float, float]
    size: tuple[int, int, int]


def load_cohort(size: int | None) -> Cohort:
    """The manifest, neurodl's label encoding, split and preprocessing plan (shared by both loops)."""
    frame = pd.read_csv(MANIFEST, sep="\t")
    target = TargetEncoder.fit(frame[LABEL], name=LABEL, kind="classification", positive="", path=MANIFEST)
    labels = np.asarray(target.encode(frame[LABEL], path=MANIFEST), dtype=int)
    groups = frame["participant_id"].astype(str).to_numpy()
    # run_protocol's split when there is no --cv and no --test-fraction.
    train_rows, val_rows = split_by_participant(groups, labels, VAL_FRACTION, SEED)
    paths = [(MANIFEST.parent / p).resolve() for p in frame[IMAGE_COLUMN]]
    plan = plan_preprocessing(
        [paths[int(r)] for r in train_rows],
        spacing=(),
        size=(size,) if size else (),
        normalize="zscore",
        crop_foreground=False,
        channels=1,
    )
    return Cohort(
        paths,
        labels,
        list(target.classes),
        np.sort(train_rows),
        np.sort(val_rows),
        plan.spacing,
        plan.size,
    )


# --------------------------------------------------------------------------- timing helpers


@dataclass
class RunResult:
    name: str
    train_pass_s: list[float] = field(default_factory=list)  # per epoch, data loading included
    rest_s: list[float] = field(default_factory=list)  # per epoch: validation, checkpoint...
    decode_s: float = 0.0  # neurodl: the cache warm-up before fit (counted in epoch 1)
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch validation metrics
    predict_load_s: float = 0.0
    predict_s: list[float] = field(default_factory=list)  # per image
    step_s: list[list[float]] = field(default_factory=list)  # per epoch, per step (data wait included)
    cpu_s: float = 0.0  # CPU seconds of this process and its reaped children during training
    wall_s: float = 0.0  # whole training call
    load_average: list[float] = field(default_factory=list)  # 1-min load before and after
    details: dict[str, Any] = field(default_factory=dict)

    def epoch_s(self) -> list[float]:
        """Training-pass seconds per epoch; neurodl's epoch 1 includes decoding."""
        out = list(self.train_pass_s)
        if out:
            out[0] += self.decode_s
        return out

    @property
    def predict_s_per_image(self) -> float:
        return statistics.median(self.predict_s) if self.predict_s else math.nan


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def load1() -> float:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else math.nan


class EpochTimer(Callback):
    """Engine callback: the training pass ends at the epoch's last step; the rest is validation etc."""

    def __init__(self, result: RunResult) -> None:
        self.result = result
        self.start = 0.0
        self.last_step = 0.0

    def on_fit_start(self, *, epochs: int, steps: int, start_epoch: int) -> None:
        self.start = self.last_step = time.perf_counter()
        self.steps: list[float] = []

    def on_step(self, *, epoch: int, step: int, loss: float) -> None:
        now = time.perf_counter()
        self.steps.append(now - self.last_step)
        self.last_step = now

    def on_epoch_end(self, record: dict[str, float]) -> None:
        now = time.perf_counter()
        self.result.train_pass_s.append(self.last_step - self.start)
        self.result.rest_s.append(now - self.last_step)
        self.result.step_s.append(self.steps)
        self.start = self.last_step = now
        self.steps = []


# --------------------------------------------------------------------------- MONAI loop


def monai_transforms(cohort: Cohort, train: bool) -> Any:
    from monai.transforms import (
        Compose,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        RandRotate90d,
        ResizeWithPadOrCropd,
        Spacingd,
    )

    steps: list[Any] = [
        LoadImaged(keys=["img"], ensure_channel_first=True),
        # labels= is MONAI's current default, given only to silence its FutureWarning.
        Orientationd(keys=["img"], axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(keys=["img"], pixdim=cohort.spacing, mode="bilinear"),
        ResizeWithPadOrCropd(keys=["img"], spatial_size=cohort.size),
        NormalizeIntensityd(keys=["img"], nonzero=True, channel_wise=True),
    ]
    if train:
        steps.append(RandRotate90d(keys=["img"], prob=0.8, spatial_axes=[0, 2]))
    return Compose(steps)


def run_monai(
    cohort: Cohort, settings: dict[str, Any], workdir: Path, workers: int = MONAI_WORKERS
) -> RunResult:
    from monai.data import DataLoader, Dataset
    from monai.networks.nets import DenseNet121

    result = RunResult(f"MONAI loop w{workers}")
    files = [{"img": str(p), "label": int(y)} for p, y in zip(cohort.paths, cohort.labels, strict=True)]
    train_files = [files[int(r)] for r in cohort.train_rows]
    val_files = [files[int(r)] for r in cohort.val_rows]
    result.load_average.append(load1())
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    torch.manual_seed(SEED)
    monai.utils.set_determinism(seed=SEED)
    train_ds = Dataset(data=train_files, transform=monai_transforms(cohort, train=True))
    train_loader = DataLoader(train_ds, batch_size=settings["batch_size"], shuffle=True, num_workers=workers)
    val_ds = Dataset(data=val_files, transform=monai_transforms(cohort, train=False))
    val_loader = DataLoader(val_ds, batch_size=settings["batch_size"], num_workers=workers)
    device = torch.device("cpu")
    model = DenseNet121(spatial_dims=3, in_channels=1, out_channels=2).to(device)
    loss_function = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), LR)
    best_metric = -1.0
    for epoch in range(settings["epochs"]):
        tic = time.perf_counter()
        model.train()
        epoch_loss, seen, steps, last = 0.0, 0, [], tic
        for batch_data in train_loader:
            inputs, labels = batch_data["img"].to(device), batch_data["label"].to(device)
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = loss_function(outputs, labels)
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item() * len(labels)
            seen += len(labels)
            now = time.perf_counter()
            steps.append(now - last)
            last = now
        toc = time.perf_counter()
        model.eval()
        with torch.no_grad():
            logits, targets = [], []
            for val_data in val_loader:
                logits.append(model(val_data["img"].to(device)).as_tensor().float())
                targets.append(val_data["label"])
            output, y = torch.cat(logits), torch.cat(targets).long()
            val_loss = float(loss_function(output, y))
            metrics = epoch_classification_metrics(y.numpy(), torch.softmax(output, dim=1).numpy())
        if metrics["balanced_accuracy"] > best_metric:
            best_metric = metrics["balanced_accuracy"]
            torch.save(model.state_dict(), workdir / "best_metric_model_classification3d_dict.pth")
        result.train_pass_s.append(toc - tic)
        result.rest_s.append(time.perf_counter() - toc)
        result.step_s.append(steps)
        result.history.append(
            {
                "epoch": epoch + 1,
                "train_loss": epoch_loss / max(seen, 1),
                "val_loss": val_loss,
                **{f"val_{k}": v for k, v in metrics.items()},
            }
        )
    result.wall_s = time.perf_counter() - wall0
    result.cpu_s = cpu_seconds() - cpu0
    result.load_average.append(load1())

    # Predict: validation transforms + forward, one image at a time (first image untimed).
    predict_paths = [str(cohort.paths[int(r)]) for r in cohort.val_rows[: settings["predict_images"]]]
    transforms = monai_transforms(cohort, train=False)
    model.eval()

    def predict_one(path: str) -> np.ndarray:
        x = transforms({"img": path})["img"]
        with torch.no_grad():
            return torch.softmax(model(x[None].to(device)), dim=1).as_tensor().numpy()[0]

    predict_one(predict_paths[0])
    for path in predict_paths:
        tic = time.perf_counter()
        predict_one(path)
        result.predict_s.append(time.perf_counter() - tic)
    result.details["predict_images"] = len(predict_paths)
    result.details["parameters"] = sum(p.numel() for p in model.parameters())
    return result


# --------------------------------------------------------------------------- neurodl


def neurodl_options(cohort: Cohort, settings: dict[str, Any], model: str) -> ClassifyOptions:
    """``neurodl classify train MANIFEST --image t1 --label diagnosis --model M --epochs E --batch-size B [--size S]``."""
    values: dict[str, Any] = {
        "image": [IMAGE_COLUMN],
        "label": LABEL,
        "model": model,
        "epochs": settings["epochs"],
        "batch_size": settings["batch_size"],
        "device": "cpu",  # = auto on a CPU-only machine; pinned so a GPU box compares like with like
    }
    if settings["size"]:
        values["size"] = [settings["size"]]
    options = build(ClassifyOptions, values)
    assert options.train.lr == LR and options.val_fraction == VAL_FRACTION and options.train.seed == SEED
    return options


def run_neurodl(cohort: Cohort, settings: dict[str, Any], workdir: Path, model: str) -> RunResult:
    result = RunResult(f"neurodl {model}")
    options = neurodl_options(cohort, settings, model)
    timer = EpochTimer(result)
    real_warm = VolumeDataset.warm

    def timed_warm(*args: Any, **kwargs: Any) -> None:
        tic = time.perf_counter()
        real_warm(*args, **kwargs)
        result.decode_s += time.perf_counter() - tic

    @contextlib.contextmanager
    def timed_progress(console: Any, quiet: bool, description: str) -> Iterator[list[Callback]]:
        yield [timer]

    out = workdir / f"run-{model}"
    result.load_average.append(load1())
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    # Instrumentation only: the engine's callbacks (normally the progress bar) record epoch times.
    with (
        mock.patch.object(VolumeDataset, "warm", timed_warm),
        mock.patch.object(classify_task, "progress", timed_progress),
    ):
        summary = classify_task.train(MANIFEST, options, out, overwrite=True, console=None, quiet=True)
    result.wall_s = time.perf_counter() - wall0
    result.cpu_s = cpu_seconds() - cpu0
    result.load_average.append(load1())
    history = pd.read_csv(out / "history.csv")
    keep = ["epoch", "train_loss", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_roc_auc"]
    result.history = [{k: float(row[k]) for k in keep} for _, row in history.iterrows()]
    splits = json.loads((out / "splits.json").read_text())
    val_ids = set(pd.read_csv(MANIFEST, sep="\t")["participant_id"].iloc[cohort.val_rows])
    prep = json.loads((out / "preprocessing.json").read_text())["images"]
    result.details.update(
        {
            "same_split_as_monai": set(splits["validation"]) == val_ids,
            "same_preprocessing_as_monai": tuple(prep["size"]) == tuple(cohort.size)
            and tuple(prep["spacing"]) == tuple(cohort.spacing),
            "selected_epoch": _best_epoch(out),
            "selected_metrics": summary["metrics"],
            # plan, split, run directory, plots, weights: outside the epochs
            "outside_epochs_s": result.wall_s
            - result.decode_s
            - sum(result.train_pass_s)
            - sum(result.rest_s),
        }
    )

    # Predict from the files, as `neurodl classify predict --model RUN FILES` does (first image untimed).
    predict_paths = [cohort.paths[int(r)] for r in cohort.val_rows[: settings["predict_images"]]]
    tic = time.perf_counter()
    loaded = classify_task.load(out, device="cpu")
    result.predict_load_s = time.perf_counter() - tic
    classify_task.predict(loaded, predict_paths[:1])
    marks = [time.perf_counter()]
    frame, failures, _ = classify_task.predict(
        loaded, predict_paths, on_image=lambda image: marks.append(time.perf_counter())
    )
    result.predict_s = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    assert not failures and len(frame) == len(predict_paths)
    result.details["predict_images"] = len(predict_paths)
    result.details["parameters"] = sum(p.numel() for p in loaded.module.model.parameters())
    return result


def _best_epoch(run: Path) -> int:
    return int(json.loads((run / "metrics.json").read_text())["best_epoch"])


# --------------------------------------------------------------------------- harness


def warm_up(cohort: Cohort, batch_size: int) -> float:
    """One-time costs (oneDNN kernels, allocator, lazy imports) so they hit no timed run."""
    from monai.networks.nets import DenseNet121

    tic = time.perf_counter()
    torch.manual_seed(SEED)
    x = torch.randn(batch_size, 1, *cohort.size)
    for model in (
        DenseNet121(spatial_dims=3, in_channels=1, out_channels=2),
        classify_task.build_model({"name": "cnn", "in_channels": 1, "out_features": 1}),
    ):
        optimizer = torch.optim.Adam(model.parameters(), LR)
        for _ in range(2):
            optimizer.zero_grad()
            model(x).float().mean().backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            model(x[:1])
    # Both pipelines' transforms once (imports, first-call caches).
    preprocess(
        plan_preprocessing(
            [cohort.paths[0]],
            spacing=cohort.spacing,
            size=cohort.size,
            normalize="zscore",
            crop_foreground=False,
            channels=1,
        ),
        [cohort.paths[0]],
    )
    monai_transforms(cohort, train=True)({"img": str(cohort.paths[0])})
    return time.perf_counter() - tic


def preprocessing_difference(cohort: Cohort, n: int) -> float:
    """Max |neurodl preprocessing - MONAI loop validation transforms| over the first n validation images."""
    prep = plan_preprocessing(
        [cohort.paths[0]],
        spacing=cohort.spacing,
        size=cohort.size,
        normalize="zscore",
        crop_foreground=False,
        channels=1,
    )
    transforms = monai_transforms(cohort, train=False)
    worst = 0.0
    for r in cohort.val_rows[:n]:
        a = preprocess(prep, [cohort.paths[int(r)]]).as_tensor()
        b = transforms({"img": str(cohort.paths[int(r)])})["img"].as_tensor()
        worst = max(worst, float((a - b).abs().max()))
    return worst


def summarise(runs: list[RunResult], n_train: int) -> dict[str, Any]:
    """Figures of one pipeline over its repeats.

    Timings are medians (epoch times pooled over repeats), which a passing spike
    of load on the shared machine moves less than a mean; ``all_epochs`` is the
    total: every training image of every epoch and repeat over the summed time.
    Validation metrics are the last epoch's of the first repeat (same seed each time).
    """
    first = [r.epoch_s()[0] for r in runs]
    later = [s for r in runs for s in r.epoch_s()[1:]]
    epochs = sum(len(r.epoch_s()) for r in runs)
    last = runs[0].history[-1] if runs[0].history else {}
    return {
        "repeats": len(runs),
        "epoch_1_s": statistics.median(first),
        "epoch_1_images_per_s": n_train / statistics.median(first),
        "later_epochs_median_s": statistics.median(later) if later else math.nan,
        "later_epochs_images_per_s": n_train / statistics.median(later) if later else math.nan,
        "later_epochs_images_per_s_from_mean": n_train / statistics.fmean(later) if later else math.nan,
        "all_epochs_images_per_s": n_train * epochs / sum(s for r in runs for s in r.epoch_s()),
        "rest_of_epoch_median_s": statistics.median(s for r in runs for s in r.rest_s),
        "predict_s_per_image": statistics.median(s for r in runs for s in r.predict_s),
        "cpu_s_per_trained_image": statistics.fmean(r.cpu_s / (n_train * len(r.epoch_s())) for r in runs),
        "training_call_wall_s": statistics.median(r.wall_s for r in runs),
        "last_epoch_train_loss": last.get("train_loss", math.nan),
        "last_epoch_val_loss": last.get("val_loss", math.nan),
        "last_epoch_val_balanced_accuracy": last.get("val_balanced_accuracy", math.nan),
        "last_epoch_val_roc_auc": last.get("val_roc_auc", math.nan),
        "same_metrics_every_repeat": all(r.history == runs[0].history for r in runs),
    }


def machine_info() -> dict[str, Any]:
    model = platform.processor() or ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
            model,
        )
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def fmt(value: float, digits: int = 2) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def table(summary: dict[str, dict[str, Any]]) -> list[str]:
    header = (
        "| pipeline | epoch 1 img/s | later epochs img/s | all epochs img/s | val+ckpt s/epoch "
        "| training call s | CPU s/trained img | predict s/img | train loss | val loss | val bal. acc | val AUC |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in summary.items():
        lines.append(
            f"| {name} | {fmt(row['epoch_1_images_per_s'])} | {fmt(row['later_epochs_images_per_s'])} "
            f"| {fmt(row['all_epochs_images_per_s'])} | {fmt(row['rest_of_epoch_median_s'])} "
            f"| {fmt(row['training_call_wall_s'], 1)} | {fmt(row['cpu_s_per_trained_image'])} "
            f"| {fmt(row['predict_s_per_image'], 3)} | {fmt(row['last_epoch_train_loss'], 3)} "
            f"| {fmt(row['last_epoch_val_loss'], 3)} "
            f"| {fmt(row['last_epoch_val_balanced_accuracy'], 3)} | {fmt(row['last_epoch_val_roc_auc'], 3)} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 32^3, 2 epochs, 1 repeat (~1 min)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="runs of each DenseNet pipeline, in alternating order (default 3; 1 with --quick)",
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--size", type=int, default=None, help="cube size (default: neurodl's plan, 48)")
    parser.add_argument(
        "--no-extras",
        action="store_true",
        help="skip the informational runs (MONAI loop with num_workers=0, neurodl's cnn model)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON results (default benchmarks/results/classify.json; a temp file with --quick)",
    )
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    for key in ("repeats", "epochs", "size"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.no_extras:
        settings["extras"] = False
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(THREADS)
    started = time.perf_counter()
    machine = machine_info()
    log = print
    cohort = load_cohort(settings["size"])
    n_train = len(cohort.train_rows)
    log(
        f"classify benchmark: {len(cohort.paths)} images ({n_train} train / {len(cohort.val_rows)} val), "
        f"size {cohort.size} at {cohort.spacing} mm, batch {settings['batch_size']}, {settings['epochs']} epochs, "
        f"{THREADS} torch threads, load average {machine['load_average_at_start']}"
    )
    log(f"warm-up: {warm_up(cohort, settings['batch_size']):.1f} s")
    diff = preprocessing_difference(cohort, 4)
    log(f"max |neurodl - MONAI| preprocessed voxel difference (4 validation images): {diff:.2e}")

    def report(run: RunResult) -> None:
        decoding = f", epoch 1 incl. {run.decode_s:.1f} s decoding" if run.decode_s else ""
        log(
            f"  {run.name:<20} epochs {', '.join(f'{s:.1f}' for s in run.epoch_s())} s (train pass{decoding}); "
            f"val+ckpt {', '.join(f'{s:.1f}' for s in run.rest_s)} s; "
            f"val bal.acc {run.history[-1]['val_balanced_accuracy']:.3f}, "
            f"loss {run.history[-1]['val_loss']:.3f}; predict {run.predict_s_per_image:.3f} s/img; "
            f"load {run.load_average}"
        )

    monai_name, neurodl_name = "MONAI loop (DenseNet121)", "neurodl densenet121"
    w0_name = "MONAI loop, num_workers=0 (informational)"
    cnn_name = "neurodl cnn (default model, informational)"
    pipelines: dict[str, Any] = {
        monai_name: lambda workdir: run_monai(cohort, settings, workdir),
        neurodl_name: lambda workdir: run_neurodl(cohort, settings, workdir, "densenet121"),
    }
    if settings["extras"]:
        # Informational: the same MONAI loop without worker processes (timed in the same rotation).
        pipelines[w0_name] = lambda workdir: run_monai(cohort, settings, workdir, workers=0)
    # A B C, C B A, ...: alternate the order so drifting machine load hits every pipeline alike.
    names = list(pipelines)
    order: list[str] = []
    for i in range(settings["repeats"]):
        order += names if i % 2 == 0 else names[::-1]
    runs: dict[str, list[RunResult]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="neurodl-bench-classify-") as tmp:
        workdir = Path(tmp)
        for name in order:
            runs[name].append(pipelines[name](workdir))
            report(runs[name][-1])
        if settings["extras"]:
            runs[cnn_name] = [run_neurodl(cohort, settings, workdir, "cnn")]
            report(runs[cnn_name][0])

    summary = {name: summarise(rs, n_train) for name, rs in runs.items() if rs}
    mo, nd = summary[monai_name], summary[neurodl_name]
    ratios = {
        "later_epochs": nd["later_epochs_images_per_s"] / mo["later_epochs_images_per_s"],
        "epoch_1": nd["epoch_1_images_per_s"] / mo["epoch_1_images_per_s"],
        "all_epochs": nd["all_epochs_images_per_s"] / mo["all_epochs_images_per_s"],
        "predict_latency_neurodl_over_monai": nd["predict_s_per_image"] / mo["predict_s_per_image"],
    }
    w0 = summary.get(w0_name)
    if w0 is not None:
        ratios["later_epochs_vs_monai_num_workers_0"] = (
            nd["later_epochs_images_per_s"] / w0["later_epochs_images_per_s"]
        )
        ratios["all_epochs_vs_monai_num_workers_0"] = (
            nd["all_epochs_images_per_s"] / w0["all_epochs_images_per_s"]
        )
    per_repeat = [
        summarise([n], n_train)["later_epochs_images_per_s"]
        / summarise([m], n_train)["later_epochs_images_per_s"]
        for m, n in zip(runs[monai_name], runs[neurodl_name], strict=True)
    ]
    log("")
    for line in table(summary):
        log(line)
    log("")
    log(
        f"neurodl / MONAI images/s: later epochs {ratios['later_epochs']:.2f}x (per repeat: "
        f"{', '.join(f'{r:.2f}' for r in per_repeat)}), epoch 1 {ratios['epoch_1']:.2f}x, "
        f"all epochs {ratios['all_epochs']:.2f}x; target >= {TARGET_RATIO:.1f}x: "
        f"{'met' if ratios['later_epochs'] >= TARGET_RATIO else 'NOT met'} (later epochs)"
    )
    if w0 is not None:
        log(
            f"vs the MONAI loop with num_workers=0 (informational): later epochs "
            f"{ratios['later_epochs_vs_monai_num_workers_0']:.2f}x, all epochs {ratios['all_epochs_vs_monai_num_workers_0']:.2f}x"
        )
    log(f"predict latency neurodl / MONAI: {ratios['predict_latency_neurodl_over_monai']:.2f}x")
    total = time.perf_counter() - started
    log(f"total {total:.0f} s, load average at end {list(os.getloadavg())}")

    payload = {
        "benchmark": "classify: neurodl vs a plain MONAI tutorial-style loop",
        "quick": bool(args.quick),
        "machine": {**machine, "load_average_at_end": list(os.getloadavg())},
        "settings": {
            **settings,
            "manifest": str(MANIFEST.relative_to(ROOT)),
            "images": len(cohort.paths),
            "train_images": n_train,
            "val_images": int(len(cohort.val_rows)),
            "input_size": list(cohort.size),
            "spacing_mm": list(cohort.spacing),
            "lr": LR,
            "optimizer": "adam",
            "precision": "fp32",
            "torch_threads": THREADS,
            "monai_loop": {
                "transforms": "LoadImaged(ensure_channel_first) > Orientationd(RAS) > Spacingd(bilinear) > ResizeWithPadOrCropd > NormalizeIntensityd(nonzero, channel_wise) > RandRotate90d(prob=0.8, spatial_axes=[0, 2]) (train only)",
                "dataset": "monai.data.Dataset (no cache)",
                "loader": f"monai.data.DataLoader(num_workers={MONAI_WORKERS}, shuffle=True)",
                "model": "DenseNet121(spatial_dims=3, in_channels=1, out_channels=2), dropout 0",
                "loss": "CrossEntropyLoss (2 logits)",
                "checkpoint": "torch.save(state_dict) when validation balanced accuracy improves",
            },
            "neurodl": {
                "call": "neurodl.tasks.classify.train (= neurodl classify train --model densenet121 --epochs E --batch-size B, other options at CLI defaults)",
                "cache": "memory (decoded once, before epoch 1; counted in epoch 1)",
                "augment": "light (RandFlipd, RandAffined p=0.5, RandGaussianNoised p=0.2) in the main process",
                "workers": 0,
                "model": "DenseNet121(spatial_dims=3, in_channels=1, out_channels=1), dropout 0.2",
                "loss": "BCE with logits (1 logit)",
                "checkpoint": "every epoch (model + optimizer + best weights, safetensors)",
            },
        },
        "order": order,
        "preprocessing_max_abs_difference": diff,
        "summary": summary,
        "ratios_neurodl_over_monai": ratios,
        "later_epochs_ratio_per_repeat": per_repeat,
        "target": {
            "images_per_s_ratio_at_least": TARGET_RATIO,
            "met_later_epochs": ratios["later_epochs"] >= TARGET_RATIO,
            "met_all_epochs": ratios["all_epochs"] >= TARGET_RATIO,
        },
        "runs": {
            name: [
                {
                    "train_pass_s": r.train_pass_s,
                    "decode_s": r.decode_s,
                    "epoch_s": r.epoch_s(),
                    "rest_of_epoch_s": r.rest_s,
                    "wall_s": r.wall_s,
                    "cpu_s": r.cpu_s,
                    "load_average_1min_before_after": r.load_average,
                    "history": r.history,
                    "predict_load_s": r.predict_load_s,
                    "predict_s": r.predict_s,
                    "step_s": r.step_s,
                    **r.details,
                }
                for r in rs
            ]
            for name, rs in runs.items()
        },
        "total_s": total,
    }
    out = args.out
    if out is None:
        out = (
            Path(tempfile.gettempdir()) / "neurodl-classify-benchmark-quick.json"
            if args.quick
            else ROOT / "benchmarks" / "results" / "classify.json"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    log(f"results written to {out}")
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer | np.floating | np.bool_):
        return value.item()
    if isinstance(value, set | tuple):
        return list(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())
