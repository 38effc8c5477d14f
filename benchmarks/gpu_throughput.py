"""Training throughput on a GPU: a plain MONAI loop, neurodl, and the model's compute ceiling.

For two workloads -- **classify** (MONAI DenseNet121, whole volumes of SIZE^3) and
**segment** (neurodl's ``unet``: MONAI UNet 16-32-64-128, PATCH^3 patches) -- three
pipelines train side by side in one process, on the same phantom cohort, split,
model, batch size, epochs, learning rate and seed:

* **(a) MONAI loop** -- written the way MONAI's tutorials write it:
  ``LoadImaged`` from the .nii.gz files -> ``Orientationd("RAS")`` -> ``Spacingd(1 mm)``
  -> ``ResizeWithPadOrCropd`` (classify) / ``SpatialPadd`` + ``RandCropByPosNegLabeld``
  (segment) -> ``NormalizeIntensityd`` in a ``monai.data.Dataset`` (no cache) +
  ``DataLoader(num_workers=W)``; fp32; Adam; validation every epoch.
* **(b) neurodl** -- ``neurodl.tasks.classify.train`` / ``segment.train`` with the
  options of ``neurodl classify|segment train ... --model densenet121|unet --epochs E
  --batch-size B --spacing 1 --size S|--patch P --samples-per-image 1`` and, per
  variant, ``--precision bf16``, ``--channels-last``, ``--compile``, ``--cache disk``.
* **(c) compute ceiling** -- the same network fed random tensors that are already
  on the device: no data loading at all, after 2 untimed warm-up steps, full
  batches. (b) / (c) is the share of the GPU neurodl's pipeline achieves.

Measured per pipeline: training images/s (patches/s for segment) of the training
pass, data loading included (epoch 1 apart: it includes cuDNN autotuning and, for
neurodl, decoding its cache), the share of the pass spent waiting for batches, the
peak GPU memory (``torch.cuda.max_memory_allocated``), and the validation metric
after the same epochs (classify: ROC AUC and balanced accuracy; segment: mean
foreground Dice). Nothing is asserted: the figures are reported.

    python benchmarks/gpu_throughput.py                                  # GPU: 96^3, 40 images, 5 epochs
    python benchmarks/gpu_throughput.py --size 32 --images 8 --epochs 1  # CPU smoke test (~1-2 min)

Results go to ``benchmarks/results/gpu_throughput.json`` when run on CUDA (else to a
temporary file unless ``--out`` is given) and are summarised in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neurodl.config import ClassifyOptions, SegmentOptions, build  # noqa: E402
from neurodl.data.phantom import generate_cohort  # noqa: E402
from neurodl.data.splits import split_by_participant  # noqa: E402
from neurodl.data.tabular import TargetEncoder  # noqa: E402
from neurodl.engine import Callback  # noqa: E402
from neurodl.models import create_model  # noqa: E402
from neurodl.tasks import classify as classify_task  # noqa: E402
from neurodl.tasks import segment as segment_task  # noqa: E402
from neurodl.tasks.metrics import epoch_classification_metrics  # noqa: E402

SEED = 0
LR = {"classify": 1e-3, "segment": 2e-3}  # neurodl's defaults, used by every pipeline
VAL_FRACTION = 0.2
# name -> neurodl options on top of the defaults (fp32, in-memory cache, no workers)
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "bf16": {"precision": "bf16"},
    "bf16+channels-last": {"precision": "bf16", "channels_last": True},
    "bf16+compile": {"precision": "bf16", "compile": True},
    "fp32+disk-cache+workers": {"cache": "disk", "workers": 4},
}


# --------------------------------------------------------------------------- data


@dataclass
class Cohort:
    manifest: Path
    t1: list[str]
    dseg: list[str]
    labels: np.ndarray  # neurodl's encoding of diagnosis (0 CN, 1 AD)
    train_rows: np.ndarray
    val_rows: np.ndarray


def make_cohort(folder: Path, images: int, size: int) -> Cohort:
    manifest = folder / "participants.tsv"
    if not manifest.exists():
        generate_cohort(folder, n=images, size=size, seed=SEED)
    frame = pd.read_csv(manifest, sep="\t")
    target = TargetEncoder.fit(
        frame["diagnosis"], name="diagnosis", kind="classification", positive="", path=manifest
    )
    labels = np.asarray(target.encode(frame["diagnosis"], path=manifest), dtype=int)
    groups = frame["participant_id"].astype(str).to_numpy()
    train_rows, val_rows = split_by_participant(
        groups, labels, VAL_FRACTION, SEED
    )  # neurodl classify's split
    return Cohort(
        manifest,
        [str((folder / p).resolve()) for p in frame["t1"]],
        [str((folder / p).resolve()) for p in frame["dseg"]],
        labels,
        np.sort(train_rows),
        np.sort(val_rows),
    )


# --------------------------------------------------------------------------- measuring


@dataclass
class Result:
    task: str
    pipeline: str
    items_per_epoch: int = 0
    pass_s: list[float] = field(default_factory=list)  # training pass per epoch, data loading included
    wait_s: list[float] = field(default_factory=list)  # of which waiting for batches
    decode_s: float = 0.0  # neurodl: decoding before epoch 1 (counted in epoch 1)
    peak_gpu_mb: float = math.nan
    metrics: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    error: str = ""

    def rate(self, epochs: slice) -> float:
        times = list(self.pass_s)
        if times:
            times[0] += self.decode_s
        chosen = times[epochs]
        return self.items_per_epoch / statistics.median(chosen) if chosen else math.nan

    def summary(self) -> dict[str, Any]:
        waits = [w / p for w, p in zip(self.wait_s, self.pass_s, strict=False) if p > 0]
        return {
            **asdict(self),
            "epoch1_items_per_s": self.rate(slice(0, 1)),
            "later_items_per_s": self.rate(slice(1, None)),
            "data_wait": statistics.median(waits) if waits else math.nan,
        }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def measured(result: Result, device: torch.device) -> Iterator[None]:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    tic = time.perf_counter()
    try:
        yield
    except (
        Exception
    ) as exc:  # a variant that fails (e.g. --compile without a compiler) is reported, not fatal
        result.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    synchronize(device)
    result.wall_s = time.perf_counter() - tic
    if device.type == "cuda":
        result.peak_gpu_mb = torch.cuda.max_memory_allocated(device) / 2**20


def timed_batches(loader: Any, device: torch.device, waits: list[float]) -> Iterator[Any]:
    """Iterate, adding the time spent in ``next()`` to ``waits[-1]``."""
    iterator = iter(loader)
    while True:
        tic = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        waits[-1] += time.perf_counter() - tic
        yield batch


# --------------------------------------------------------------------------- (a) MONAI loop


def monai_transforms(task: str, size: int, patch: int, train: bool) -> Any:
    from monai.transforms import (
        Compose,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        RandCropByPosNegLabeld,
        ResizeWithPadOrCropd,
        Spacingd,
        SpatialPadd,
    )

    keys = ["img"] if task == "classify" else ["img", "seg"]
    steps: list[Any] = [
        LoadImaged(keys=keys, ensure_channel_first=True),
        Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(keys=keys, pixdim=(1.0, 1.0, 1.0), mode=("bilinear", "nearest")[: len(keys)]),
    ]
    if task == "classify":
        steps.append(ResizeWithPadOrCropd(keys=keys, spatial_size=(size,) * 3))
    else:
        steps.append(SpatialPadd(keys=keys, spatial_size=(patch,) * 3))
    steps.append(NormalizeIntensityd(keys=["img"], nonzero=True, channel_wise=True))
    if task == "segment" and train:
        steps.append(
            RandCropByPosNegLabeld(
                keys=keys, label_key="seg", spatial_size=(patch,) * 3, pos=1, neg=1, num_samples=1
            )
        )
    return Compose(steps)


def run_monai(task: str, cohort: Cohort, args: argparse.Namespace, device: torch.device) -> Result:
    from monai.data import DataLoader, Dataset
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.metrics import DiceMetric
    from monai.networks.nets import DenseNet121
    from monai.networks.utils import one_hot
    from monai.utils import set_determinism

    result = Result(task, f"(a) MONAI loop, {args.workers} workers")
    files = [
        {"img": t1, "seg": seg, "label": int(y)}
        for t1, seg, y in zip(cohort.t1, cohort.dseg, cohort.labels, strict=True)
    ]
    train_files = [files[int(r)] for r in cohort.train_rows]
    val_files = [files[int(r)] for r in cohort.val_rows]
    result.items_per_epoch = len(train_files)
    with measured(result, device):
        torch.manual_seed(SEED)
        set_determinism(seed=SEED)
        loader = DataLoader(
            Dataset(train_files, monai_transforms(task, args.size, args.patch, train=True)),
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=args.workers,
            pin_memory=device.type == "cuda",
        )
        val_loader = DataLoader(
            Dataset(val_files, monai_transforms(task, args.size, args.patch, train=False)),
            batch_size=args.batch_size if task == "classify" else 1,
            num_workers=args.workers,
        )
        if task == "classify":
            model = DenseNet121(spatial_dims=3, in_channels=1, out_channels=2).to(device)
            loss_function: Any = torch.nn.CrossEntropyLoss()
        else:
            model = create_model("segment", "unet", in_channels=1, out_channels=4).to(device)
            loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
        optimizer = torch.optim.Adam(model.parameters(), LR[task])
        for _ in range(args.epochs):
            model.train()
            result.wait_s.append(0.0)
            tic = time.perf_counter()
            for batch in timed_batches(loader, device, result.wait_s):
                inputs = batch["img"].to(device, non_blocking=True)
                target = (batch["label"] if task == "classify" else batch["seg"]).to(
                    device, non_blocking=True
                )
                optimizer.zero_grad()
                loss = loss_function(model(inputs), target)
                loss.backward()
                optimizer.step()
                loss.item()  # the tutorials log the loss every step (a device sync)
            synchronize(device)
            result.pass_s.append(time.perf_counter() - tic)
            model.eval()
            with torch.no_grad():
                if task == "classify":
                    outputs, targets = [], []
                    for batch in val_loader:
                        outputs.append(model(batch["img"].to(device)).float().cpu())
                        targets.append(batch["label"])
                    probabilities = torch.softmax(torch.cat(outputs).as_tensor(), dim=1).numpy()
                    scores = epoch_classification_metrics(torch.cat(targets).numpy(), probabilities)
                    result.metrics = {
                        "roc_auc": scores["roc_auc"],
                        "balanced_accuracy": scores["balanced_accuracy"],
                    }
                else:
                    dice = DiceMetric(include_background=False, reduction="mean", ignore_empty=True)
                    for batch in val_loader:
                        logits = sliding_window_inference(
                            batch["img"].to(device),
                            (args.patch,) * 3,
                            4,
                            model,
                            overlap=0.25,
                            mode="gaussian",
                        )
                        prediction = one_hot(logits.argmax(dim=1, keepdim=True), 4)
                        dice(prediction, one_hot(batch["seg"].to(device).long(), 4))
                    result.metrics = {"dice": float(dice.aggregate().item())}
    return result


# --------------------------------------------------------------------------- (b) neurodl


class PassTimer(Callback):
    """Engine callback: the training pass of an epoch ends at its last step."""

    def __init__(self, result: Result) -> None:
        self.result = result
        self.start = self.last = 0.0

    def on_fit_start(self, *, epochs: int, steps: int, start_epoch: int) -> None:
        self.start = self.last = time.perf_counter()

    def on_step(self, *, epoch: int, step: int, loss: float) -> None:
        self.last = time.perf_counter()  # the engine has read the loss: the device is synchronised

    def on_epoch_end(self, record: dict[str, float]) -> None:
        seconds = self.last - self.start
        self.result.pass_s.append(seconds)
        self.result.wait_s.append(float(record.get("data_wait", math.nan)) * seconds)
        self.start = self.last = time.perf_counter()


def run_neurodl(
    task: str, variant: str, cohort: Cohort, args: argparse.Namespace, device: torch.device, workdir: Path
) -> Result:
    result = Result(task, f"(b) neurodl {variant}")
    result.items_per_epoch = len(cohort.train_rows)
    overrides = dict(VARIANTS[variant])
    if overrides.get("cache") == "disk":
        overrides["cache_dir"] = str(workdir / f"cache-{task}")
    values: dict[str, Any] = {
        "image": ["t1"],
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "spacing": [1.0],
        "device": str(device),
        "patience": 0,
        **overrides,
    }
    if task == "classify":
        options: Any = build(ClassifyOptions, {**values, "model": "densenet121", "size": [args.size]})
        module: Any = classify_task
    else:
        options = build(
            SegmentOptions, {**values, "model": "unet", "patch": [args.patch], "samples_per_image": 1}
        )
        module = segment_task
    timer = PassTimer(result)
    real_warm = module.warm_cache

    def timed_warm(*a: Any, **k: Any) -> None:
        tic = time.perf_counter()
        real_warm(*a, **k)
        result.decode_s += time.perf_counter() - tic

    @contextlib.contextmanager
    def timed_progress(console: Any, quiet: bool, description: str) -> Iterator[list[Callback]]:
        yield [timer]

    out = workdir / f"run-{task}-{variant}"
    with (
        measured(result, device),
        mock.patch.object(module, "warm_cache", timed_warm),
        mock.patch.object(module, "progress", timed_progress),
    ):
        summary = module.train(cohort.manifest, options, out, overwrite=True, console=None, quiet=True)
        keys = ("roc_auc", "balanced_accuracy") if task == "classify" else ("dice",)
        result.metrics = {k: float(summary["metrics"][k]) for k in keys}
    return result


# --------------------------------------------------------------------------- (c) compute ceiling


def run_ceiling(task: str, cohort: Cohort, args: argparse.Namespace, device: torch.device) -> Result:
    result = Result(task, "(c) ceiling: random tensors on the device, fp32")
    result.items_per_epoch = len(cohort.train_rows)
    steps = math.ceil(result.items_per_epoch / args.batch_size)
    side = args.size if task == "classify" else args.patch
    with measured(result, device):
        torch.manual_seed(SEED)
        if task == "classify":
            model = create_model("classify", "densenet121", in_channels=1, out_features=1).to(device)
            loss_function: Callable[..., torch.Tensor] = torch.nn.BCEWithLogitsLoss()
            target = torch.randint(0, 2, (args.batch_size, 1), device=device).float()
        else:
            model = create_model("segment", "unet", in_channels=1, out_channels=4).to(device)
            loss_function = torch.nn.CrossEntropyLoss()
            target = torch.randint(0, 4, (args.batch_size, side, side, side), device=device)
        x = torch.randn(args.batch_size, 1, side, side, side, device=device)
        optimizer = torch.optim.Adam(model.parameters(), LR[task])
        model.train()

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_function(model(x), target)
            loss.backward()
            optimizer.step()
            loss.item()

        for _ in range(2):  # untimed: cuDNN autotuning and allocator warm-up
            step()
        for _ in range(args.epochs):
            synchronize(device)
            tic = time.perf_counter()
            for _ in range(steps):
                step()
            synchronize(device)
            result.pass_s.append(time.perf_counter() - tic)
            result.wait_s.append(0.0)
        # Full batches every step: report the images actually pushed through.
        result.items_per_epoch = steps * args.batch_size
    return result


# --------------------------------------------------------------------------- harness


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "device": str(device),
    }
    with contextlib.suppress(Exception):
        import monai

        info["monai"] = monai.__version__
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def table(rows: list[dict[str, Any]], device: torch.device) -> str:
    unit = {"classify": "img/s", "segment": "patch/s"}
    lines = [
        f"| task | pipeline | epoch 1 {'/'.join(unit.values())} | later epochs | data wait | peak GPU MB | validation metric | error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        metric = ", ".join(f"{k} {v:.3f}" for k, v in row["metrics"].items())
        gpu = (
            f"{row['peak_gpu_mb']:.0f}"
            if device.type == "cuda" and not math.isnan(row["peak_gpu_mb"])
            else "n/a"
        )
        lines.append(
            f"| {row['task']} | {row['pipeline']} | {row['epoch1_items_per_s']:.2f} | {row['later_items_per_s']:.2f} "
            f"| {row['data_wait']:.0%} | {gpu} | {metric} | {row['error']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", type=int, default=96, help="phantom side and classify input side (1 mm voxels)"
    )
    parser.add_argument("--patch", type=int, default=0, help="segment patch side (default: --size)")
    parser.add_argument("--images", type=int, default=40, help="participants in the phantom cohort")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers of the MONAI loop")
    parser.add_argument("--tasks", default="classify,segment")
    parser.add_argument(
        "--variants",
        default="",
        help=f"neurodl variants, comma-separated, of: {', '.join(VARIANTS)} (default: all on CUDA, fp32 on CPU)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", type=Path, default=None, help="cohort folder to reuse (made if missing)")
    parser.add_argument("--out", type=Path, default=None, help="results JSON")
    args = parser.parse_args(argv)
    args.patch = args.patch or args.size
    device = (
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if args.device == "auto"
        else torch.device(args.device)
    )
    variants = [
        v for v in (args.variants or ("fp32" if device.type == "cpu" else ",".join(VARIANTS))).split(",") if v
    ]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants: {', '.join(unknown)}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="monai")

    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="neurodl-gpu-bench-") as tmp:
        workdir = Path(tmp)
        data = args.data or workdir / "cohort"
        tic = time.perf_counter()
        cohort = make_cohort(data, args.images, args.size)
        print(
            f"cohort: {args.images} phantoms of {args.size}^3 in {time.perf_counter() - tic:.1f} s ({data})",
            file=sys.stderr,
        )
        for task in args.tasks.split(","):
            runs: list[Callable[[], Result]] = [
                lambda task=task: run_ceiling(task, cohort, args, device),
                lambda task=task: run_monai(task, cohort, args, device),
                *[
                    lambda task=task, variant=variant: run_neurodl(
                        task, variant, cohort, args, device, workdir
                    )
                    for variant in variants
                ],
            ]
            for run in runs:
                result = run()
                rows.append(result.summary())
                print(
                    f"{task}: {result.pipeline}: {rows[-1]['later_items_per_s']:.2f}/s later epochs, {result.wall_s:.1f} s {result.error}",
                    file=sys.stderr,
                )
    payload = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "variants": {v: VARIANTS[v] for v in variants},
        "machine": machine(device),
        "total_s": round(time.perf_counter() - started, 1),
        "results": rows,
    }
    out = args.out or (
        ROOT / "benchmarks" / "results" / "gpu_throughput.json"
        if device.type == "cuda"
        else Path(tempfile.gettempdir()) / "gpu_throughput_smoke.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(table(rows, device))
    print(f"\n{payload['machine']}\nwritten to {out} ({payload['total_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
