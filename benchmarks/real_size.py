"""neurodl on cohorts of full-size 1 mm heads, against a MONAI tutorial-style loop on the same heads.

Builds cohorts of N heads from a folder made by ``neurodl sample-data DIR --size 192 --n K``
(192 mm field of view, 1 mm voxels). Generating one such head takes ~16 s on a 2-core CPU,
so a cohort larger than K reuses the K distinct heads: row i is a hard link to head
i mod K under its own participant id and file name (distinct paths, so nothing is
shared through a cache keyed on the path; the time to preprocess and train is that
of N heads). Then, for each N, side by side and in alternating order:

- ``neurodl classify train`` with the defaults (planned input, ``--cache auto``,
  batch 4, ``cnn``), 1 epoch; seconds per epoch (training + validation), data
  wait, whole command's wall time (planning and preprocessing included), peak RSS;
- the loop of MONAI's 3D classification tutorial (``densenet_training_dict.py``):
  ``LoadImaged`` -> ``EnsureChannelFirstd`` -> ``ScaleIntensityd`` -> ``Resized`` to
  neurodl's planned input size -> ``RandRotate90d``, ``DataLoader(batch 4,
  num_workers 2)``, DenseNet121, Adam, cross-entropy, 1 epoch + validation.

Peak RSS is measured two ways: ``/usr/bin/time -v`` (the largest single process)
and the largest sum over the process tree (main process + loader workers),
sampled every 0.2 s.

    flock /tmp/neurodl-heavy.lock python benchmarks/real_size.py --heads DIR --n 20 200

Results go to ``benchmarks/results/real_size.json``; figures in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def build_cohort(heads: Path, n: int, out: Path) -> Path:
    """A manifest of ``n`` rows made of hard links to the heads of ``heads`` (cycled)."""
    with (heads / "participants.tsv").open() as handle:
        source = list(csv.DictReader(handle, delimiter="\t"))
    manifest = out / "participants.tsv"
    if manifest.exists():
        return manifest
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        row = dict(source[i % len(source)])
        pid = f"sub-{i + 1:04d}"
        for column in ("t1", "t2", "dseg"):
            original = heads / row[column]
            target = (
                out / pid / "anat" / original.name.replace(source[i % len(source)]["participant_id"], pid)
            )
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.link(original, target)
            row[column] = str(target.relative_to(out))
        row["participant_id"] = pid
        rows.append(row)
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def _tree_rss(pid: int) -> int:
    """Bytes resident in ``pid`` and all its descendants."""
    total, stack, seen = 0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/statm") as handle:
                total += int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            with open(f"/proc/{p}/task/{p}/children") as handle:
                stack += [int(c) for c in handle.read().split()]
        except (OSError, ValueError):
            continue
    return total


def measured(command: list[str], log: Path) -> dict[str, Any]:
    """Run ``command`` under ``/usr/bin/time -v``; wall time, exit code and peak RSS (process and tree)."""
    start = time.perf_counter()
    with log.open("w") as handle:
        proc = subprocess.Popen(["/usr/bin/time", "-v", *command], stdout=handle, stderr=subprocess.STDOUT)
        peak = [0]

        def sample() -> None:
            while proc.poll() is None:
                peak[0] = max(peak[0], _tree_rss(proc.pid))
                time.sleep(0.2)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        code = proc.wait()
        thread.join()
    text = log.read_text()
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return {
        "exit_code": code,
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_gib": round(int(found.group(1)) * 1024 / 2**30, 3) if found else None,
        "peak_tree_rss_gib": round(peak[0] / 2**30, 3),
        "oom_killed": "Killed" in text or code in (-9, 137),
    }


def run_neurodl(manifest: Path, work: Path, extra: list[str]) -> dict[str, Any]:
    out = work / "run"
    command = [sys.executable, "-m", "neurodl", "classify", "train", str(manifest), "--image", "t1"]
    command += ["--label", "diagnosis", "--epochs", "1", "--device", "cpu", "--out", str(out), "--overwrite"]
    result = measured([*command, *extra], work / "neurodl.log")
    if result["exit_code"] == 0:
        with (out / "history.csv").open() as handle:
            history = list(csv.DictReader(handle))
        prep = json.loads((out / "preprocessing.json").read_text())["images"]
        splits = json.loads((out / "splits.json").read_text())
        n_train = _count(splits, "train")
        result.update(
            epoch_s=round(float(history[0]["seconds"]), 1),
            data_wait=round(float(history[0]["data_wait"]), 3),
            val_loss=round(float(history[0].get("val_loss", "nan")), 4),
            size=prep["size"],
            spacing=prep["spacing"],
            crop_foreground=prep["crop_foreground"],
            n_train=n_train,
            s_per_train_image=round(float(history[0]["seconds"]) / max(1, n_train), 3),
            cached_on_disk=len(list((out / "cache").glob("*.safetensors")))
            if (out / "cache").exists()
            else 0,
        )
    return result


TASK_COMMANDS = {
    "classify": ["classify", "train", "--image", "t1", "--label", "diagnosis"],
    "segment": ["segment", "train", "--image", "t1", "--mask", "dseg"],
    "autoencode": ["autoencode", "train", "--image", "t1"],
    "translate": ["translate", "train", "--source", "t1", "--target", "t2"],
}


def run_task(task: str, manifest: Path, work: Path) -> dict[str, Any]:
    """One epoch of ``task`` with its defaults: epoch seconds, seconds per training image, peak RSS."""
    work.mkdir(parents=True, exist_ok=True)
    out = work / f"{task}-run"
    name, sub, *flags = TASK_COMMANDS[task]
    command = [sys.executable, "-m", "neurodl", name, sub, str(manifest), *flags]
    command += ["--epochs", "1", "--device", "cpu", "--out", str(out), "--overwrite", "--quiet"]
    result = measured(command, work / f"{task}.log")
    if result["exit_code"] == 0:
        with (out / "history.csv").open() as handle:
            history = list(csv.DictReader(handle))
        prep = json.loads((out / "preprocessing.json").read_text())
        images = prep.get("images", prep)
        splits = json.loads((out / "splits.json").read_text())
        n_train = len(splits.get("train", []))
        result.update(
            epoch_s=round(float(history[0]["seconds"]), 1),
            data_wait=round(float(history[0]["data_wait"]), 3),
            n_train=n_train,
            s_per_train_image=round(float(history[0]["seconds"]) / max(1, n_train), 3),
            size=images.get("size"),
            spacing=images.get("spacing"),
            patch=prep.get("patch"),
        )
    return result


def _count(splits: dict[str, Any], which: str) -> int:
    for key in (f"{which}_rows", f"{which}_images", "train"):
        value = splits.get(key)
        if isinstance(value, list):
            return len(value)
        if isinstance(value, int):
            return value
    folds = splits.get("folds") or splits.get("splits") or []
    if folds and isinstance(folds[0], dict):
        return len(folds[0].get("train", []))
    return 0


def run_monai(manifest: Path, work: Path, size: list[int], val_fraction: float, seed: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "_monai_loop", str(manifest), ",".join(map(str, size))]
    command += [str(val_fraction), str(seed), str(work / "monai.json")]
    result = measured(command, work / "monai.log")
    if result["exit_code"] == 0:
        result.update(json.loads((work / "monai.json").read_text()))
    return result


def tutorial_transforms(size: Sequence[int]) -> tuple[Any, Any]:
    """The training and validation transforms of MONAI's densenet_training_dict.py, resizing to ``size``."""
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        RandRotate90d,
        Resized,
        ScaleIntensityd,
    )

    base = [LoadImaged(keys=["img"]), EnsureChannelFirstd(keys=["img"]), ScaleIntensityd(keys=["img"])]
    base.append(Resized(keys=["img"], spatial_size=size))
    return Compose([*base, RandRotate90d(keys=["img"], prob=0.8, spatial_axes=[0, 2])]), Compose(base)


def monai_loop(
    manifest: Path,
    size: tuple[int, ...],
    val_fraction: float,
    seed: int,
    out: Path,
    network: str = "densenet121",
) -> None:
    """The training loop of MONAI's densenet_training_dict.py tutorial, 1 epoch, at ``size``
    (``network``: the tutorial's DenseNet121, or neurodl's default ``cnn`` for the same net)."""
    import numpy as np
    import torch
    from monai.data import DataLoader, Dataset
    from monai.networks.nets import DenseNet121

    torch.manual_seed(seed)
    with manifest.open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    classes = sorted({r["diagnosis"] for r in rows})
    data = [{"img": str(manifest.parent / r["t1"]), "label": classes.index(r["diagnosis"])} for r in rows]
    order = np.random.default_rng(seed).permutation(len(data))
    n_val = max(1, round(val_fraction * len(data)))
    val, train = [data[i] for i in order[:n_val]], [data[i] for i in order[n_val:]]
    train_tf, val_tf = tutorial_transforms(size)
    loader = DataLoader(Dataset(train, train_tf), batch_size=4, shuffle=True, num_workers=2)
    val_loader = DataLoader(Dataset(val, val_tf), batch_size=4, num_workers=2)
    if network == "densenet121":
        model = DenseNet121(spatial_dims=3, in_channels=1, out_channels=len(classes))
    else:
        sys.path.insert(0, str(ROOT))
        from neurodl.models import create_model

        model = create_model("classify", network, in_channels=1, out_features=len(classes), depth=4, width=16)
    loss_fn = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    tic = time.perf_counter()
    waited = 0.0
    model.train()
    mark = time.perf_counter()
    for batch in loader:
        waited += time.perf_counter() - mark
        optimizer.zero_grad()
        loss = loss_fn(model(batch["img"]), batch["label"])
        loss.backward()
        optimizer.step()
        mark = time.perf_counter()
    train_s = time.perf_counter() - tic
    model.eval()
    correct, losses = 0, []
    with torch.no_grad():
        for batch in val_loader:
            output = model(batch["img"])
            losses.append(float(loss_fn(output, batch["label"])) * len(batch["label"]))
            correct += int((output.argmax(1) == batch["label"]).sum())
    epoch_s = time.perf_counter() - tic
    out.write_text(
        json.dumps(
            {
                "epoch_s": round(epoch_s, 1),
                "train_s": round(train_s, 1),
                "data_wait": round(waited / train_s, 3),
                "n_train": len(train),
                "s_per_train_image": round(epoch_s / len(train), 3),
                "val_loss": round(sum(losses) / len(val), 4),
                "val_accuracy": round(correct / len(val), 3),
            }
        )
    )


def machine() -> dict[str, Any]:
    import torch

    with open("/proc/cpuinfo") as handle:
        cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "?")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_at_start": os.getloadavg(),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_monai_loop":
        manifest, size, val_fraction, seed, out, *network = sys.argv[2:]
        sizes = tuple(int(s) for s in size.split(","))
        monai_loop(Path(manifest), sizes, float(val_fraction), int(seed), Path(out), *network)
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--heads", type=Path, required=True, help="a folder made by neurodl sample-data --size 192"
    )
    parser.add_argument("--n", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--work", type=Path, default=Path("/tmp/neurodl-real-size"))
    parser.add_argument(
        "--monai-n",
        type=int,
        nargs="*",
        default=None,
        help="cohort sizes the MONAI loop runs on (default: all)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "real_size.json")
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=sorted(TASK_COMMANDS),
        default=None,
        help="instead: one epoch of each task with its defaults on the first cohort (no MONAI loop)",
    )
    args = parser.parse_args()
    if args.tasks:
        n = args.n[0]
        cohort = build_cohort(args.heads, n, args.work / f"cohort{n}")
        tasks: dict[str, Any] = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="minutes"),
            "machine": machine(),
            "n": n,
            "tasks": {},
        }
        for task in args.tasks:
            print(f"N={n}: neurodl {task} train, 1 epoch ...", file=sys.stderr, flush=True)
            tasks["tasks"][task] = run_task(task, cohort, args.work / f"tasks{n}")
            print(json.dumps(tasks["tasks"][task], indent=1), file=sys.stderr, flush=True)
            out = args.out.with_name("real_size_tasks.json")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(tasks, indent=2) + "\n")
        return
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="minutes"),
        "machine": machine(),
        "cohorts": {},
    }
    cohorts = {n: build_cohort(args.heads, n, args.work / f"cohort{n}") for n in args.n}
    # Alternating order (neurodl, MONAI for the first N; MONAI, neurodl for the next...) so that a change
    # in the machine's load weighs on both about equally.
    for position, n in enumerate(args.n):
        work = args.work / f"n{n}"
        work.mkdir(parents=True, exist_ok=True)
        entry: dict[str, Any] = {"distinct_heads": min(n, len(list(args.heads.glob("sub-*"))))}
        steps = ["neurodl", "monai"] if position % 2 == 0 else ["monai", "neurodl"]
        for step in steps:
            if step == "neurodl":
                print(f"N={n}: neurodl classify train ...", file=sys.stderr, flush=True)
                entry["neurodl"] = run_neurodl(cohorts[n], work, [])
            elif args.monai_n is None or n in args.monai_n:
                size = entry.get("neurodl", {}).get("size") or _planned_size(cohorts[n])
                print(f"N={n}: MONAI tutorial loop at {size} ...", file=sys.stderr, flush=True)
                entry["monai_densenet121"] = run_monai(cohorts[n], work, size, 0.2, 0)
            print(json.dumps(entry, indent=1), file=sys.stderr, flush=True)
        results["cohorts"][str(n)] = entry
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def _planned_size(manifest: Path) -> list[int]:
    sys.path.insert(0, str(ROOT))
    from neurodl.data.images import plan_preprocessing

    with manifest.open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    paths = [manifest.parent / r["t1"] for r in rows]
    plan = plan_preprocessing(
        paths, spacing=(), size=(), normalize="zscore", crop_foreground=False, channels=1
    )
    return list(plan.size)


if __name__ == "__main__":
    main()
