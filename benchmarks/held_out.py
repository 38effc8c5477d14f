"""Held-out metric of neurodl's defaults against the MONAI tutorial loop, on full-size 1 mm heads.

The question of issue 14: does neurodl's planned input (crop to the head, then a spacing that brings
it to about 128³) lose accuracy against a plain MONAI loop, and is it slower per training image?

From a folder made by ``neurodl sample-data DIR --size 192 --n K`` (K distinct heads), a test set
of ``--test`` participants (stratified by diagnosis, fixed seed) is set aside. Then, one after the
other on the same machine:

- ``neurodl classify train`` with the defaults on the other participants (its own validation
  split, ``--epochs E``, early stopping, best validation epoch kept), then
  ``neurodl classify evaluate`` on the test set;
- the loop of MONAI's 3D classification tutorial (``densenet_training_dict.py``): ``LoadImaged``
  -> ``EnsureChannelFirstd`` -> ``ScaleIntensityd`` -> ``Resized`` (the whole image, to neurodl's
  planned input size) -> ``RandRotate90d``; ``DataLoader(batch 4, num_workers 2)``, Adam 1e-4,
  cross-entropy, ``E`` epochs; the same validation participants as neurodl's run, the epoch with the
  lowest validation loss kept (as neurodl does); then the same test set. ``--network`` picks the
  tutorial's DenseNet121 or neurodl's ``cnn`` (the same network, to compare the pipelines alone).

Both report seconds per training image (mean epoch time / training images), peak RSS (process tree)
and test accuracy, balanced accuracy and ROC AUC.

    flock /tmp/neurodl-heavy.lock python benchmarks/held_out.py --heads DIR --epochs 15 --network cnn

Results go to ``benchmarks/results/held_out_<network>.json``; figures in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_size import ROOT, machine, measured, tutorial_transforms  # noqa: E402


def split_cohort(heads: Path, n_test: int, seed: int, work: Path) -> tuple[Path, Path]:
    """``train.tsv`` and ``test.tsv`` (absolute paths), the test set stratified by diagnosis."""
    with (heads / "participants.tsv").open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    for row in rows:
        for column in ("t1", "t2", "dseg"):
            row[column] = str((heads / row[column]).resolve())
    rng = np.random.default_rng(seed)
    test: list[dict[str, str]] = []
    for diagnosis in sorted({r["diagnosis"] for r in rows}):
        group = [r for r in rows if r["diagnosis"] == diagnosis]
        share = round(n_test * len(group) / len(rows))
        test += [group[i] for i in rng.permutation(len(group))[:share]]
    train = [r for r in rows if r not in test]
    work.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, subset in (("train.tsv", train), ("test.tsv", test)):
        path = work / name
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t")
            writer.writeheader()
            writer.writerows(subset)
        paths.append(path)
    return paths[0], paths[1]


def run_neurodl(train: Path, test: Path, work: Path, epochs: int) -> dict[str, Any]:
    out = work / "neurodl-run"
    command = [sys.executable, "-m", "neurodl", "classify", "train", str(train), "--image", "t1"]
    command += ["--label", "diagnosis", "--epochs", str(epochs), "--device", "cpu"]
    command += ["--out", str(out), "--overwrite", "--quiet"]
    result = measured(command, work / "neurodl-train.log")
    if result["exit_code"] != 0:
        return result
    with (out / "history.csv").open() as handle:
        history = list(csv.DictReader(handle))
    splits = json.loads((out / "splits.json").read_text())
    prep = json.loads((out / "preprocessing.json").read_text())["images"]
    n_train = len(_participants(splits, "train"))
    evaluation = measured(
        [sys.executable, "-m", "neurodl", "classify", "evaluate", "--model", str(out), str(test)]
        + ["--out", str(work / "neurodl-test"), "--overwrite", "--quiet", "--device", "cpu"],
        work / "neurodl-evaluate.log",
    )
    metrics = json.loads((work / "neurodl-test" / "metrics.json").read_text())
    seconds = [float(h["seconds"]) for h in history]
    result.update(
        size=prep["size"],
        spacing=prep["spacing"],
        n_train=n_train,
        n_val=len(_participants(splits, "validation")),
        epochs_run=len(history),
        s_per_train_image=round(float(np.mean(seconds)) / max(1, n_train), 3),
        data_wait=round(float(np.mean([float(h["data_wait"]) for h in history])), 3),
        evaluate_exit_code=evaluation["exit_code"],
        test={k: metrics.get(k) for k in ("accuracy", "balanced_accuracy", "roc_auc", "auc")},
    )
    return result


def _participants(splits: dict[str, Any], which: str) -> list[str]:
    for key in (f"{which}_participants", which):
        value = splits.get(key)
        if isinstance(value, list):
            return value
    return []


def run_monai(
    train: Path, test: Path, work: Path, epochs: int, size: list[int], val: list[str], network: str
) -> dict[str, Any]:
    (work / "val.json").write_text(json.dumps(val))
    command = [sys.executable, __file__, "_loop", str(train), str(test), ",".join(map(str, size))]
    command += [str(epochs), str(work / "val.json"), network, str(work / "monai.json")]
    result = measured(command, work / "monai.log")
    if result["exit_code"] == 0:
        result.update(json.loads((work / "monai.json").read_text()))
    return result


def tutorial_loop(
    train: Path, test: Path, size: tuple[int, ...], epochs: int, val_ids: list[str], network: str, out: Path
) -> None:
    """MONAI's densenet_training_dict.py, ``epochs`` epochs, best validation loss kept, then the test set."""
    import copy

    import torch
    from monai.data import DataLoader, Dataset
    from monai.networks.nets import DenseNet121
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    torch.manual_seed(0)

    def read(path: Path) -> list[dict[str, str]]:
        with path.open() as handle:
            return list(csv.DictReader(handle, delimiter="\t"))

    rows, test_rows = read(train), read(test)
    classes = sorted({r["diagnosis"] for r in rows})

    def items(subset: list[dict[str, str]]) -> list[dict[str, Any]]:
        return [{"img": r["t1"], "label": classes.index(r["diagnosis"])} for r in subset]

    train_items = items([r for r in rows if r["participant_id"] not in val_ids])
    val_items = items([r for r in rows if r["participant_id"] in val_ids])
    train_tf, val_tf = tutorial_transforms(size)
    loader = DataLoader(Dataset(train_items, train_tf), batch_size=4, shuffle=True, num_workers=2)
    if network == "densenet121":
        model = DenseNet121(spatial_dims=3, in_channels=1, out_channels=len(classes))
    else:
        sys.path.insert(0, str(ROOT))
        from neurodl.models import create_model

        model = create_model("classify", network, in_channels=1, out_features=len(classes))
    loss_fn = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)

    def scores(subset: list[dict[str, Any]]) -> tuple[float, np.ndarray, np.ndarray]:
        model.eval()
        probabilities, labels, losses = [], [], []
        with torch.no_grad():
            for batch in DataLoader(Dataset(subset, val_tf), batch_size=4, num_workers=2):
                output = model(batch["img"])
                losses.append(float(loss_fn(output, batch["label"])) * len(batch["label"]))
                probabilities.append(torch.softmax(output, 1).numpy())
                labels.append(batch["label"].numpy())
        return sum(losses) / len(subset), np.concatenate(probabilities), np.concatenate(labels)

    best, best_state, epoch_seconds, waits = float("inf"), None, [], []
    for _ in range(epochs):
        tic = mark = time.perf_counter()
        waited = 0.0
        model.train()
        for batch in loader:
            waited += time.perf_counter() - mark
            optimizer.zero_grad()
            loss_fn(model(batch["img"]), batch["label"]).backward()
            optimizer.step()
            mark = time.perf_counter()
        train_s = time.perf_counter() - tic
        val_loss, _, _ = scores(val_items)
        epoch_seconds.append(time.perf_counter() - tic)
        waits.append(waited / train_s)
        if val_loss < best:
            best, best_state = val_loss, copy.deepcopy(model.state_dict())
    assert best_state is not None
    model.load_state_dict(best_state)
    _, probabilities, labels = scores(items(test_rows))
    predicted = probabilities.argmax(1)
    out.write_text(
        json.dumps(
            {
                "n_train": len(train_items),
                "n_val": len(val_items),
                "epochs_run": epochs,
                "s_per_train_image": round(float(np.mean(epoch_seconds)) / len(train_items), 3),
                "data_wait": round(float(np.mean(waits)), 3),
                "best_val_loss": round(best, 4),
                "test": {
                    "accuracy": round(float((predicted == labels).mean()), 4),
                    "balanced_accuracy": round(float(balanced_accuracy_score(labels, predicted)), 4),
                    "roc_auc": round(float(roc_auc_score(labels, probabilities[:, 1])), 4),
                },
            }
        )
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_loop":
        train, test, size, epochs, val, network, out = sys.argv[2:]
        tutorial_loop(
            Path(train),
            Path(test),
            tuple(int(s) for s in size.split(",")),
            int(epochs),
            json.loads(Path(val).read_text()),
            network,
            Path(out),
        )
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--heads", type=Path, required=True, help="a folder made by neurodl sample-data --size 192"
    )
    parser.add_argument("--test", type=int, default=10, help="participants in the test set")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--network", choices=["cnn", "densenet121"], default="cnn")
    parser.add_argument("--work", type=Path, default=Path("/tmp/neurodl-held-out"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or ROOT / "benchmarks" / "results" / f"held_out_{args.network}.json"
    train, test = split_cohort(args.heads, args.test, 0, args.work)
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="minutes"),
        "machine": machine(),
        "epochs": args.epochs,
    }
    print("neurodl classify train (defaults) ...", file=sys.stderr, flush=True)
    results["neurodl"] = ours = run_neurodl(train, test, args.work, args.epochs)
    print(json.dumps(ours, indent=1), file=sys.stderr, flush=True)
    if ours["exit_code"] == 0:
        val = _participants(json.loads((args.work / "neurodl-run" / "splits.json").read_text()), "validation")
        print(f"MONAI tutorial loop ({args.network}) at {ours['size']} ...", file=sys.stderr, flush=True)
        results["monai"] = run_monai(train, test, args.work, args.epochs, ours["size"], val, args.network)
        results["monai"]["network"] = args.network
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
