"""neurodl biomarkers vs scikit-learn on scikit-learn's bundled real datasets.

Runs 5-fold cross-validation on the *same* folds with scikit-learn models
(LogisticRegression, MLPClassifier, LinearRegression, MLPRegressor) and the
neurodl biomarkers models (logistic/linear regression and the MLP, trained by
``neurodl.engine.fit`` through ``neurodl.tasks.biomarkers.fit_rows``), then
reports accuracy / ROC AUC / R², the wall time of each whole CV, and whether
the project's targets are met. Nothing is asserted: the figures are reported.

    python benchmarks/biomarkers.py            # full run (~40 s on 2 busy cores; < 3 min)
    python benchmarks/biomarkers.py --quick    # smoke test (< 30 s)

Results go to ``benchmarks/results/biomarkers.json`` (full run) and are
summarised in ``docs/benchmarks.md``.

Settings are chosen once, a priori, and are identical across datasets (see
``neurodl_settings`` / ``sklearn_models``); nothing is tuned on the test folds.
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
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sklearn
import torch
from sklearn import datasets
from sklearn.compose import TransformedTargetRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import accuracy_score, mean_absolute_error, r2_score, roc_auc_score
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_info, threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neurodl.config import BiomarkersOptions, build  # noqa: E402
from neurodl.data.splits import regression_strata, split_by_participant  # noqa: E402
from neurodl.tasks.biomarkers import fit_rows, prepare  # noqa: E402

SEED = 0
FOLDS = 5
VAL_FRACTION = 0.2  # inner validation split of the training rows (MLP early stopping only)
MLP_HIDDEN = (64, 32)
ID_COLUMN = "participant_id"
TARGET = "target"

# Project targets (a difference is "neurodl minus scikit-learn"; being better always passes).
MAX_ACCURACY_DROP = 0.01
MAX_AUC_DROP = 0.01
MAX_R2_DROP = 0.01
MAX_MLP_TIME_RATIO = 2.0


# --------------------------------------------------------------------------- datasets


@dataclass
class Dataset:
    name: str
    kind: str  # "binary" | "multiclass" | "regression"
    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]

    @property
    def classification(self) -> bool:
        return self.kind != "regression"


def load(name: str) -> Dataset:
    loader, kind = {
        "breast_cancer": (datasets.load_breast_cancer, "binary"),
        "wine": (datasets.load_wine, "multiclass"),
        "diabetes": (datasets.load_diabetes, "regression"),
    }[name]
    bunch = loader()
    return Dataset(
        name, kind, np.asarray(bunch.data, dtype=float), np.asarray(bunch.target), list(bunch.feature_names)
    )


def folds_of(data: Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    """The outer folds, shared by every model of a dataset."""
    splitter = (
        StratifiedKFold(FOLDS, shuffle=True, random_state=SEED)
        if data.classification
        else KFold(FOLDS, shuffle=True, random_state=SEED)
    )
    return [(np.sort(tr), np.sort(te)) for tr, te in splitter.split(data.X, data.y)]


def write_csv(data: Dataset, directory: Path) -> Path:
    """The dataset as a neurodl table: one row per participant."""
    frame = pd.DataFrame(data.X, columns=data.feature_names)
    frame.insert(0, ID_COLUMN, [f"sub-{i + 1:04d}" for i in range(len(frame))])
    frame[TARGET] = data.y
    path = directory / f"{data.name}.csv"
    frame.to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------- metrics


def fold_scores(data: Dataset, y_true: np.ndarray, output: np.ndarray) -> dict[str, float]:
    """Same metric code for both libraries. ``output``: (n, K) probabilities in label order, or values."""
    if not data.classification:
        return {"r2": float(r2_score(y_true, output)), "mae": float(mean_absolute_error(y_true, output))}
    labels = np.unique(data.y)
    predicted = labels[output.argmax(axis=1)]
    if data.kind == "binary":
        auc = roc_auc_score(y_true, output[:, 1])
    else:
        auc = roc_auc_score(y_true, output, multi_class="ovr", average="macro", labels=labels)
    return {"accuracy": float(accuracy_score(y_true, predicted)), "roc_auc": float(auc)}


# --------------------------------------------------------------------------- models


@dataclass
class CVResult:
    folds: list[dict[str, float]]
    wall_s: list[float] = field(default_factory=list)  # one per repeat
    details: dict[str, Any] = field(default_factory=dict)

    def mean(self, key: str) -> float:
        return float(np.mean([f[key] for f in self.folds]))

    def std(self, key: str) -> float:
        return float(np.std([f[key] for f in self.folds]))

    @property
    def wall(self) -> float:
        return float(statistics.median(self.wall_s))


def sklearn_models(kind: str, max_iter: int) -> dict[str, Callable[[], Any]]:
    """scikit-learn baselines: defaults except where stated (same for every dataset)."""
    mlp = {
        "hidden_layer_sizes": MLP_HIDDEN,
        "max_iter": max_iter,
        "random_state": SEED,
    }  # adam, lr 1e-3, alpha 1e-4, batch min(200, n), early_stopping=False
    if kind == "regression":
        return {
            "LinearRegression": lambda: make_pipeline(StandardScaler(), LinearRegression()),
            "MLPRegressor": lambda: TransformedTargetRegressor(
                regressor=make_pipeline(StandardScaler(), MLPRegressor(**mlp)), transformer=StandardScaler()
            ),
        }
    return {
        "LogisticRegression": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=10_000)),
        "MLPClassifier": lambda: make_pipeline(StandardScaler(), MLPClassifier(**mlp)),
    }


SKLEARN_SETTINGS = {
    "LogisticRegression": "StandardScaler + LogisticRegression(lbfgs, L2 C=1, max_iter=10000)",
    "LinearRegression": "StandardScaler + LinearRegression (ordinary least squares)",
    "MLPClassifier": "StandardScaler + MLPClassifier(hidden_layer_sizes=(64, 32), relu, adam lr=1e-3, alpha=1e-4, batch_size=min(200, n), max_iter=EPOCHS, early_stopping=False (sklearn default: stops when the training loss improves < tol=1e-4 for 10 epochs), random_state=0)",
    "MLPRegressor": "same as MLPClassifier, inside TransformedTargetRegressor(StandardScaler) so the target is standardised like neurodl's",
}


def run_sklearn(
    data: Dataset, folds: list[tuple[np.ndarray, np.ndarray]], make: Callable[[], Any]
) -> CVResult:
    scores, iterations, not_converged = [], [], 0
    tic = time.perf_counter()
    for train, test in folds:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model = make().fit(data.X[train], data.y[train])
        not_converged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        output = model.predict_proba(data.X[test]) if data.classification else model.predict(data.X[test])
        scores.append(fold_scores(data, data.y[test], output))
        estimator = model.regressor_ if hasattr(model, "regressor_") else model
        n_iter = getattr(estimator[-1], "n_iter_", None)
        iterations.append(int(np.max(n_iter)) if n_iter is not None else None)
    wall = time.perf_counter() - tic
    return CVResult(
        scores, [wall], {"iterations_per_fold": iterations, "convergence_warnings": not_converged}
    )


def neurodl_settings(epochs: int) -> dict[str, dict[str, Any]]:
    """neurodl options (identical for every dataset).

    Linear/logistic regression is convex: like scikit-learn's solvers it is
    trained on all the training rows, full batch, and keeps the last weights.
    The MLP uses neurodl's defaults (Adam lr 1e-3, batch 32, patience 20)
    with early stopping on an inner validation split of the training rows.
    """
    common = {"target": TARGET, "optimizer": "adam", "epochs": epochs, "seed": SEED, "device": "cpu"}
    return {
        "linear": {**common, "hidden": (), "lr": 1e-2, "batch_size": 0, "patience": 0},
        "mlp": {
            **common,
            "hidden": MLP_HIDDEN,
            "activation": "relu",
            "lr": 1e-3,
            "batch_size": 32,
            "patience": 20,
        },
    }


NEURODL_SETTINGS_TEXT = {
    "linear": "hidden=() (logistic or linear regression), Adam lr=1e-2, full batch (batch_size=0), EPOCHS epochs, no validation set: all training rows, last weights kept",
    "mlp": f"hidden=(64, 32) relu, Adam lr=1e-3, batch_size=32, at most EPOCHS epochs, early stopping patience=20 on val_loss of an inner {VAL_FRACTION:.0%} stratified split of the training rows (best epoch's weights kept)",
}


def run_neurodl(
    data: Dataset, folds: list[tuple[np.ndarray, np.ndarray]], table: Path, values: dict[str, Any]
) -> CVResult:
    task = "regression" if data.kind == "regression" else "classification"
    options = build(BiomarkersOptions, {**values, "task": task})
    use_validation = bool(options.train.patience)
    scores, epochs_run, best_epochs = [], [], []
    tic = time.perf_counter()
    prepared = prepare(table, options)  # reads the table, fits the target encoder
    labels = np.unique(data.y)
    for k, (train, test) in enumerate(folds, start=1):
        validation = None
        fit_part = train
        if use_validation:
            # Inner split of the training rows only; the test fold is never seen.
            strata = (
                prepared.strata[train]
                if data.classification
                else regression_strata(data.y[train].astype(float), bins=5)
            )
            inner_fit, inner_val = split_by_participant(
                prepared.groups[train], strata, VAL_FRACTION, SEED + k
            )
            fit_part, validation = train[inner_fit], train[inner_val]
        fitted = fit_rows(
            prepared,
            options,
            fit_part,
            validation,
            checkpoint=None,
            resume=False,
            callbacks=[],
            resume_hint="",
        )
        output = fitted.module.predict(fitted.features.transform(prepared.frame.iloc[test], path=table))
        if data.classification:
            # Columns in the order of the sorted labels, as scikit-learn's predict_proba.
            output = output[:, [fitted.target.classes.index(str(label)) for label in labels]]
        scores.append(fold_scores(data, data.y[test], output))
        epochs_run.append(fitted.result.epochs_run)
        best_epochs.append(fitted.result.best_epoch)
    wall = time.perf_counter() - tic
    return CVResult(scores, [wall], {"epochs_run_per_fold": epochs_run, "best_epoch_per_fold": best_epochs})


# --------------------------------------------------------------------------- running


def machine_info(threads: int) -> dict[str, Any]:
    model = platform.processor() or ""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
            model,
        )
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "torch_threads": torch.get_num_threads(),
        "blas_threads_limit": threads,
        "blas": sorted({f"{i.get('internal_api')} {i.get('version')}" for i in threadpool_info()}),
    }


def warm_up(directory: Path, epochs: int) -> float:
    """One untimed neurodl fit, so one-time costs (lazy imports inside torch.optim) hit no timed CV."""
    data = load("wine")
    table = write_csv(data, directory)
    tic = time.perf_counter()
    run_neurodl(data, folds_of(data)[:1], table, neurodl_settings(min(epochs, 5))["mlp"])
    return time.perf_counter() - tic


def run_dataset(
    name: str, epochs: int, repeats: int, directory: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    data = load(name)
    folds = folds_of(data)
    table = write_csv(data, directory)  # harness, not timed (scikit-learn gets the arrays)
    runs: dict[str, tuple[str, Callable[[], CVResult]]] = {}
    for model_name, make in sklearn_models(data.kind, epochs).items():
        runs[model_name] = ("scikit-learn", lambda make=make: run_sklearn(data, folds, make))
    settings = neurodl_settings(epochs)
    linear_name = "neurodl linear" if data.kind == "regression" else "neurodl logistic"
    runs[linear_name] = ("neurodl", lambda: run_neurodl(data, folds, table, settings["linear"]))
    runs["neurodl MLP"] = ("neurodl", lambda: run_neurodl(data, folds, table, settings["mlp"]))
    models: dict[str, Any] = {}
    for model_name, (library, run) in runs.items():
        result = run()
        for _ in range(repeats - 1):  # figures are deterministic; repeats only steady the timing
            again = run()
            result.wall_s += again.wall_s
            if again.folds != result.folds:
                result.details["nondeterministic_scores"] = True
        metrics = ("accuracy", "roc_auc") if data.classification else ("r2", "mae")
        entry: dict[str, Any] = {"library": library}
        for key in metrics:
            entry[f"{key}_mean"] = result.mean(key)
            entry[f"{key}_std"] = result.std(key)
        entry.update(
            {
                "wall_s_median": result.wall,
                "wall_s_runs": result.wall_s,
                "folds": result.folds,
                **result.details,
            }
        )
        models[model_name] = entry
        shown = ", ".join(f"{key} {entry[f'{key}_mean']:.4f}" for key in metrics)
        log(f"  {name:>13} | {model_name:<18} {shown}, CV wall {result.wall:.2f} s")
    return {
        "kind": data.kind,
        "rows": int(len(data.y)),
        "features": int(data.X.shape[1]),
        "classes": int(len(np.unique(data.y))) if data.classification else None,
        "folds": FOLDS,
        "fold_sizes_test": [int(len(te)) for _, te in folds],
        "models": models,
    }


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The project's targets, per dataset, as neurodl-minus-scikit-learn differences or time ratios."""
    rows: list[dict[str, Any]] = []

    def add(dataset: str, what: str, value: float, limit: float, passed: bool, detail: str) -> None:
        rows.append(
            {
                "dataset": dataset,
                "target": what,
                "value": value,
                "limit": limit,
                "met": bool(passed),
                "detail": detail,
            }
        )

    for name, res in results.items():
        models = res["models"]
        if res["kind"] == "regression":
            diff = models["neurodl linear"]["r2_mean"] - models["LinearRegression"]["r2_mean"]
            add(
                name,
                "R² diff (neurodl linear - LinearRegression)",
                diff,
                -MAX_R2_DROP,
                diff >= -MAX_R2_DROP,
                "",
            )
            ratio = models["neurodl MLP"]["wall_s_median"] / models["MLPRegressor"]["wall_s_median"]
            add(
                name,
                "time ratio (neurodl MLP / MLPRegressor) [informational]",
                ratio,
                MAX_MLP_TIME_RATIO,
                ratio <= MAX_MLP_TIME_RATIO,
                "",
            )
            continue
        sk = {k: v for k, v in models.items() if v["library"] == "scikit-learn"}
        best_acc = max(sk, key=lambda k: sk[k]["accuracy_mean"])
        best_auc = max(sk, key=lambda k: sk[k]["roc_auc_mean"])
        for mine in (k for k, v in models.items() if v["library"] == "neurodl"):
            diff = models[mine]["accuracy_mean"] - sk[best_acc]["accuracy_mean"]
            add(
                name,
                f"accuracy diff ({mine} - best sklearn)",
                diff,
                -MAX_ACCURACY_DROP,
                diff >= -MAX_ACCURACY_DROP,
                f"best sklearn: {best_acc}",
            )
            diff = models[mine]["roc_auc_mean"] - sk[best_auc]["roc_auc_mean"]
            add(
                name,
                f"ROC AUC diff ({mine} - best sklearn)",
                diff,
                -MAX_AUC_DROP,
                diff >= -MAX_AUC_DROP,
                f"best sklearn: {best_auc}",
            )
        ratio = models["neurodl MLP"]["wall_s_median"] / models["MLPClassifier"]["wall_s_median"]
        add(
            name,
            "time ratio (neurodl MLP / MLPClassifier)",
            ratio,
            MAX_MLP_TIME_RATIO,
            ratio <= MAX_MLP_TIME_RATIO,
            "",
        )
    return rows


# --------------------------------------------------------------------------- output


def _fmt(entry: dict[str, Any], key: str) -> str:
    mean = entry.get(f"{key}_mean")
    return (
        ""
        if mean is None or (isinstance(mean, float) and math.isnan(mean))
        else f"{mean:.4f} ± {entry[f'{key}_std']:.4f}"
    )


def _epochs(entry: dict[str, Any]) -> str:
    if "epochs_run_per_fold" in entry:
        return "epochs " + "/".join(map(str, entry["epochs_run_per_fold"]))
    iterations = [i for i in entry.get("iterations_per_fold", []) if i is not None]
    text = "iter " + "/".join(map(str, iterations)) if iterations else ""
    if entry.get("convergence_warnings"):
        text += f" ({entry['convergence_warnings']} not converged)"
    return text


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, res in results.items():
        for model_name, entry in res["models"].items():
            rows.append(
                [
                    name,
                    model_name,
                    _fmt(entry, "accuracy"),
                    _fmt(entry, "roc_auc"),
                    _fmt(entry, "r2"),
                    f"{entry['wall_s_median']:.2f}",
                    _epochs(entry),
                ]
            )
    return rows


HEADERS = ["dataset", "model", "accuracy", "ROC AUC", "R²", "CV wall s", "epochs / iterations per fold"]
TARGET_HEADERS = ["dataset", "target", "value", "limit", "met"]


def target_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for t in rows:
        is_ratio = "ratio" in t["target"]
        value = f"{t['value']:.2f}×" if is_ratio else f"{t['value']:+.4f}"
        limit = f"≤ {t['limit']:.0f}×" if is_ratio else f"≥ {t['limit']:+.2f}"
        out.append([t["dataset"], t["target"], value, limit, "yes" if t["met"] else "NO"])
    return out


def markdown(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def show(results: dict[str, Any], target_list: list[dict[str, Any]], as_markdown: bool) -> None:
    rows, trows = table_rows(results), target_rows(target_list)
    if as_markdown:
        print(markdown(HEADERS, rows))
        print()
        print(markdown(TARGET_HEADERS, trows))
        return
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(markdown(HEADERS, rows))
        print()
        print(markdown(TARGET_HEADERS, trows))
        return
    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table(
        title="5-fold CV, same folds (mean ± std over folds; wall time of the whole CV, median of repeats)"
    )
    for h in HEADERS:
        table.add_column(
            h, justify="left" if h in ("dataset", "model", "epochs / iterations per fold") else "right"
        )
    for row in rows:
        table.add_row(*row)
    console.print(table)
    ttable = Table(title="Targets (neurodl minus scikit-learn; time = neurodl / scikit-learn)")
    for h in TARGET_HEADERS:
        ttable.add_column(h)
    for row in trows:
        ttable.add_row(*row[:-1], row[-1] if row[-1] == "yes" else f"[bold red]{row[-1]}[/]")
    console.print(ttable)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: wine + diabetes, 50 epochs, one timing run (< 30 s)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch and BLAS threads for both libraries (default 1)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timing repeats per CV, median reported (default 3; 1 with --quick)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epoch cap for neurodl and max_iter of the scikit-learn MLPs (default 300; 50 with --quick)",
    )
    parser.add_argument(
        "--datasets", default=None, help="comma-separated subset of breast_cancer,wine,diabetes"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON results (default benchmarks/results/biomarkers.json; a temp file with --quick)",
    )
    parser.add_argument(
        "--markdown", action="store_true", help="print the tables as Markdown (for docs/benchmarks.md)"
    )
    args = parser.parse_args(argv)

    epochs = args.epochs or (50 if args.quick else 300)
    repeats = args.repeats or (1 if args.quick else 3)
    names = (
        args.datasets.split(",")
        if args.datasets
        else (["wine", "diabetes"] if args.quick else ["breast_cancer", "wine", "diabetes"])
    )
    out = args.out or (
        Path(tempfile.gettempdir()) / "neurodl-biomarkers-quick.json"
        if args.quick
        else ROOT / "benchmarks/results/biomarkers.json"
    )

    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):  # only settable before any parallel work
        torch.set_num_interop_threads(args.threads)
    started = time.perf_counter()
    with threadpool_limits(limits=args.threads), tempfile.TemporaryDirectory() as tmp:
        info = machine_info(args.threads)
        log(
            f"torch {torch.__version__} ({torch.get_num_threads()} thread(s)), scikit-learn {sklearn.__version__} (BLAS limited to {args.threads} thread(s)); epochs {epochs}, timing repeats {repeats}"
        )
        info["neurodl_warm_up_s"] = warm_up(Path(tmp), epochs)
        results = {name: run_dataset(name, epochs, repeats, Path(tmp), log) for name in names}
    total = time.perf_counter() - started
    target_list = targets(results)
    show(results, target_list, args.markdown)
    print(f"\nTotal benchmark time: {total:.1f} s", file=sys.stderr)

    payload = {
        "benchmark": "neurodl biomarkers vs scikit-learn",
        "command": " ".join(["python benchmarks/biomarkers.py", *(sys.argv[1:] if argv is None else argv)]),
        "quick": args.quick,
        "machine": info,
        "protocol": {
            "cv": f"{FOLDS}-fold, StratifiedKFold (classification) / KFold (regression), shuffle=True, random_state={SEED}; the same folds for every model",
            "metrics": "accuracy; ROC AUC (binary: positive class; multiclass: one-vs-rest macro); R² and MAE (regression); mean ± std over folds",
            "timing": "time.perf_counter around the whole CV of a model: neurodl includes prepare() (reading the CSV, fitting the target encoder), per-fold feature standardisation, training and prediction; scikit-learn includes the pipeline fits (StandardScaler included) and predictions on in-memory arrays. Writing the temporary CSV is not timed. Median of the repeats. One untimed neurodl fit runs first (warm-up: torch.optim's lazy imports cost ~0.5-1 s once per process; recorded as machine.neurodl_warm_up_s).",
            "threads": f"torch.set_num_threads({args.threads}) and threadpoolctl BLAS limit {args.threads} for both libraries",
            "epochs": epochs,
            "repeats": repeats,
            "neurodl": {k: v.replace("EPOCHS", str(epochs)) for k, v in NEURODL_SETTINGS_TEXT.items()},
            "neurodl_options": {
                k: {kk: list(vv) if isinstance(vv, tuple) else vv for kk, vv in v.items()}
                for k, v in neurodl_settings(epochs).items()
            },
            "sklearn": {k: v.replace("EPOCHS", str(epochs)) for k, v in SKLEARN_SETTINGS.items()},
        },
        "results": results,
        "targets": target_list,
        "total_seconds": total,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"Results written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
