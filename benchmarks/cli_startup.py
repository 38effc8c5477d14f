"""Median wall time of `neurodl --help` against `python -c pass` (10 runs each).

Usage: python benchmarks/cli_startup.py [--runs 10]
Writes benchmarks/results/cli_startup.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


def median_seconds(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        tic = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    python = sys.executable
    cases = {
        "python -c pass": [python, "-c", "pass"],
        "neurodl --help": [python, "-m", "neurodl", "--help"],
        "neurodl biomarkers train --help": [python, "-m", "neurodl", "biomarkers", "train", "--help"],
        "python -c 'import torch, monai'": [python, "-c", "import torch, monai"],
    }
    median_seconds(cases["neurodl --help"], 1)  # warm the file cache
    results = {name: median_seconds(cmd, args.runs) for name, cmd in cases.items()}
    baseline = results["python -c pass"]
    print(f"{'command':<36} {'median s':>9} {'vs python':>10}")
    for name, seconds in results.items():
        print(f"{name:<36} {seconds:9.3f} {seconds / baseline:9.1f}x")
    out = Path(__file__).parent / "results" / "cli_startup.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "processor": platform.processor(),
    }
    out.write_text(
        json.dumps({"runs": args.runs, "machine": machine, "median_seconds": results}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
