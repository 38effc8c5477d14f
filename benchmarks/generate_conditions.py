"""Does a conditional GAN make images of the asked condition? Per training seed, on ``sample_data/``.

The measure of issue 17: a classifier trained on the real images (the judge) is given the samples
of each condition; the share it calls the asked condition should be at least 70 % for every
condition. A GAN is a few hundred noisy steps on 32 images, so one seed proves little: this trains
one GAN per ``--seeds`` with the same options and reports each.

One judge serves every seed (``classify train`` with ``--seed 0``; its accuracy on the 8 real
held-out images is reported): judges retrained on other splits were too weak to judge (50 % and
62.5 % on their held-out images). Then for each seed, with only the CLI a user has:

    neurodl generate train sample_data/participants.tsv --image t1 --condition diagnosis \\
        --test-fraction 0.2 --size 24 --width 8 --batch-size 4 --lr 5e-4 --epochs 100 --seed S [OPTIONS]
    neurodl generate sample --model GAN --n 20 --seed 0 -o SAMPLES
    neurodl classify predict --model JUDGE SAMPLES/samples.csv -o predictions.csv

    flock /tmp/neurodl-heavy.lock python benchmarks/generate_conditions.py --seeds 0 1 2 3 4 5 6 7

Results go to ``benchmarks/results/generate_conditions.json``; figures in ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_size import ROOT, machine  # noqa: E402

GAN = ["--image", "t1", "--condition", "diagnosis", "--test-fraction", "0.2", "--size", "24"]
GAN += ["--width", "8", "--batch-size", "4", "--lr", "5e-4", "--epochs", "100"]
JUDGE = ["--image", "t1", "--label", "diagnosis", "--test-fraction", "0.2", "--spacing", "2"]
JUDGE += ["--size", "24", "--normalize", "minmax", "--lr", "0.001", "--epochs", "100", "--patience", "0"]


def neurodl(*args: Any) -> float:
    """Run ``neurodl ARGS`` on the CPU, quietly; its wall time in seconds."""
    tic = time.perf_counter()
    command = [sys.executable, "-m", "neurodl", *map(str, args), "--device", "cpu", "--quiet"]
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - tic


def recognised(samples: Path, predictions: Path) -> dict[str, str]:
    """Per asked condition (samples.csv): how many samples the judge called so, of how many."""
    with samples.open() as handle:
        asked = {row["participant_id"]: row["diagnosis"] for row in csv.DictReader(handle)}
    counts: dict[str, list[int]] = {}
    with predictions.open() as handle:
        for row in csv.DictReader(handle):
            condition = asked[row["participant_id"]]
            hit = counts.setdefault(condition, [0, 0])
            hit[0] += row["predicted_diagnosis"] == condition
            hit[1] += 1
    return {condition: f"{k}/{n}" for condition, (k, n) in sorted(counts.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--work", type=Path, default=Path("/tmp/neurodl-generate-conditions"))
    parser.add_argument("--options", default="", help="extra generate train options, e.g. '--ema 0'")
    parser.add_argument("--name", default="generate_conditions")
    args = parser.parse_args()
    manifest = ROOT / "sample_data" / "participants.tsv"
    judge = args.work / "judge"
    if not (judge / "model.safetensors").exists():
        neurodl("classify", "train", manifest, *JUDGE, "--seed", 0, "--out", judge, "--overwrite")
    judged = json.loads((judge / "metrics.json").read_text())["test"]
    results: dict[str, Any] = {
        "machine": machine(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "gan_options": " ".join(GAN) + (" " + args.options if args.options else ""),
        "judge": {"options": " ".join(JUDGE), "held_out_accuracy": judged["accuracy"]},
        "seeds": {},
    }
    for seed in args.seeds:
        run, samples = args.work / f"gan-{seed}", args.work / f"samples-{seed}"
        seconds = neurodl("generate", "train", manifest, *GAN, *args.options.split(), "--seed", seed,
                          "--out", run, "--overwrite")  # fmt: skip
        neurodl("generate", "sample", "--model", run, "--n", 20, "--seed", 0, "-o", samples, "--overwrite")
        predictions = samples / "predictions.csv"
        neurodl(
            "classify", "predict", "--model", judge, samples / "samples.csv", "-o", predictions, "--overwrite"
        )
        per_condition = recognised(samples / "samples.csv", predictions)
        passed = all(int(k) >= 0.7 * int(n) for k, n in (v.split("/") for v in per_condition.values()))
        results["seeds"][str(seed)] = {
            "recognised": per_condition,
            "passes": passed,
            "train_seconds": round(seconds),
        }
        print(seed, per_condition, "pass" if passed else "FAIL", f"{seconds:.0f} s", flush=True)
    out = ROOT / "benchmarks" / "results" / f"{args.name}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
