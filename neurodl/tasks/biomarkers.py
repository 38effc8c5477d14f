"""Biomarkers: diagnosis (classification) or severity (regression) from a table.

The lecture's models made real: linear regression (MSE), logistic regression
(sigmoid + cross-entropy) and the MLP, trained by the shared engine with
mini-batch gradient descent and any of its optimisers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from neurodl.config import BiomarkersOptions, from_dict
from neurodl.data.splits import regression_strata
from neurodl.data.tabular import FeatureEncoder, TargetEncoder, is_id_column, label_text, select_features
from neurodl.engine import Callback, FitResult, TensorBatches, fit
from neurodl.errors import DataError, ManifestError, RunDirectoryError
from neurodl.io.rundir import RunDirectory
from neurodl.io.tables import read_table, require_columns
from neurodl.models import create_model
from neurodl.tasks._classification import (
    balanced_class_weights,
    class_probabilities,
    classification_loss,
    save_classification_plots,
)
from neurodl.tasks._driver import TrainCall, train_entry
from neurodl.tasks._protocol import run_protocol
from neurodl.tasks._regression import regression_loss, save_regression_plots
from neurodl.tasks._run import check_report_dir, progress
from neurodl.tasks._supervised import SupervisedModule
from neurodl.tasks.metrics import (
    classification_metrics,
    epoch_classification_metrics,
    regression_metrics,
)

TASK = "biomarkers"


class BiomarkersModule(SupervisedModule):
    """Model + loss + metrics of the biomarkers task, for the engine.

    Args:
        model: network returning logits (classification) or standardised values (regression).
        target: the fitted target encoder.
        class_weights: per-class loss weights (``--class-weight balanced``), or None.
    """

    def __init__(
        self, model: torch.nn.Module, target: TargetEncoder, class_weights: torch.Tensor | None = None
    ) -> None:
        super().__init__(model)
        self.target = target
        self.class_weights = class_weights

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.target.kind == "regression":
            return regression_loss(output, y)
        return classification_loss(output, y, self.class_weights)

    def validation_metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        output, y = outputs["output"], outputs["target"]
        if self.target.kind == "classification":
            y = y.long()
        metrics: dict[str, float] = {"loss": float(self.loss(output, y))}
        if self.target.kind == "regression":
            truth = y.numpy() * self.target.scale + self.target.center
            metrics.update(regression_metrics(truth, self.values(output)))
        else:
            metrics.update(epoch_classification_metrics(y.numpy(), self.probabilities(output)))
        return metrics

    def probabilities(self, output: torch.Tensor) -> np.ndarray:
        """(n, K) class probabilities: sigmoid for two classes, softmax otherwise."""
        return class_probabilities(output)

    def values(self, output: torch.Tensor) -> np.ndarray:
        """Regression predictions in the target's own units."""
        return self.target.restore(output.detach().float().cpu().squeeze(1).numpy())

    def outputs(self, output: torch.Tensor) -> np.ndarray:
        return self.probabilities(output) if self.target.kind == "classification" else self.values(output)

    @torch.no_grad()
    def predict_features(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (classification) or values (regression) for a feature matrix."""
        self.model.eval()
        device = next(self.model.parameters()).device
        return self.outputs(self.model(torch.from_numpy(x).to(device)))


@dataclass
class Prepared:
    """A table ready for training: columns decided, groups and strata known."""

    frame: pd.DataFrame
    path: Path
    numeric: list[str]
    categorical: list[str]
    groups: np.ndarray
    group_column: str | None
    target: TargetEncoder
    strata: np.ndarray


@dataclass
class Fitted:
    """One trained model with the encoders fitted on its training rows."""

    module: BiomarkersModule
    features: FeatureEncoder
    target: TargetEncoder
    result: FitResult
    model_spec: dict[str, Any] = field(default_factory=dict)


def _model_spec(options: BiomarkersOptions, n_features: int, target: TargetEncoder) -> dict[str, Any]:
    if options.hidden:
        name = "mlp"
    else:
        name = "logistic" if target.kind == "classification" else "linear"
    return {
        "name": name,
        "in_features": n_features,
        "out_features": target.outputs,
        "hidden": list(options.hidden),
        "activation": options.activation,
        "dropout": options.dropout,
    }


def _build(spec: dict[str, Any]) -> torch.nn.Module:
    return create_model(
        TASK,
        spec["name"],
        in_features=spec["in_features"],
        out_features=spec["out_features"],
        hidden=tuple(spec["hidden"]),
        activation=spec["activation"],
        dropout=spec["dropout"],
    )


def _group_column(frame: pd.DataFrame, options: BiomarkersOptions, path: Path) -> str | None:
    if options.group == "auto":
        return "participant_id" if "participant_id" in frame.columns else None
    if options.group in ("", "none"):
        return None
    require_columns(frame, [options.group], path)
    return options.group


def prepare(path: Path, options: BiomarkersOptions) -> Prepared:
    """Read the table and decide features, target type, groups and strata (no statistics fitted)."""
    frame = read_table(path)
    require_columns(frame, [options.target], path)
    group = _group_column(frame, options, path)
    numeric, categorical = select_features(
        frame,
        target=options.target,
        features=options.features,
        exclude=options.exclude,
        group=group,
        path=path,
    )
    target = TargetEncoder.fit(
        frame[options.target], name=options.target, kind=options.task, positive=options.positive, path=path
    )
    if options.impute == "none":
        # Report every incomplete row now, before any training starts.
        FeatureEncoder.fit(frame, numeric=numeric, categorical=categorical).transform(frame, path=path)
    groups = (
        frame[group].map(label_text).to_numpy()
        if group
        else np.asarray([f"row-{i + 1}" for i in range(len(frame))])
    )
    if group and frame[group].isna().any():
        rows = np.flatnonzero(frame[group].isna().to_numpy()) + 1
        raise ManifestError(
            f"{path}: column '{group}' is empty in rows {', '.join(map(str, rows[:10]))}.",
            "Fill in the participant of every row.",
        )
    if target.kind == "classification":
        strata = target.encode(frame[options.target], path=path)
    else:
        strata = regression_strata(pd.to_numeric(frame[options.target]).to_numpy(dtype=float), bins=5)
    minimum = 2 * max(options.cv, 2)
    if len(np.unique(groups)) < minimum:
        raise DataError(
            f"{path}: {len(np.unique(groups))} participants are too few to train and validate (at least {minimum} needed{' for --cv ' + str(options.cv) if options.cv else ''}).",
            "Add rows, or use fewer folds (--cv).",
        )
    return Prepared(frame, path, numeric, categorical, groups, group, target, strata)


def _class_weights(y: np.ndarray, target: TargetEncoder, mode: str) -> torch.Tensor | None:
    if mode != "balanced" or target.kind != "classification":
        return None
    return balanced_class_weights(y, len(target.classes))


def fit_rows(
    data: Prepared,
    options: BiomarkersOptions,
    train_rows: np.ndarray,
    val_rows: np.ndarray | None,
    *,
    checkpoint: Path | None,
    resume: bool,
    callbacks: list[Callback],
    resume_hint: str,
    epochs: int | None = None,
) -> Fitted:
    """Fit encoders on ``train_rows`` only, then train (early stopping on ``val_rows``)."""
    frame = data.frame
    train_frame = frame.iloc[train_rows]
    features = FeatureEncoder.fit(
        train_frame, numeric=data.numeric, categorical=data.categorical, impute=options.impute
    )
    target = data.target
    if target.kind == "regression":
        target = TargetEncoder.fit(
            train_frame[options.target], name=options.target, kind="regression", positive="", path=data.path
        )
    x_train = torch.from_numpy(features.transform(train_frame, path=data.path))
    y_train = torch.from_numpy(target.encode(train_frame[options.target], path=data.path))
    train_options = (
        options.train if epochs is None else replace(options.train, epochs=max(1, epochs), patience=0)
    )
    torch.manual_seed(train_options.seed)
    spec = _model_spec(options, x_train.shape[1], target)
    module = BiomarkersModule(
        _build(spec), target, _class_weights(y_train.numpy(), target, options.class_weight)
    )
    train = TensorBatches(
        x_train, y_train, batch_size=train_options.batch_size, shuffle=True, seed=train_options.seed
    )
    val = None
    if val_rows is not None and len(val_rows):
        val_frame = frame.iloc[val_rows]
        val = TensorBatches(
            torch.from_numpy(features.transform(val_frame, path=data.path)),
            torch.from_numpy(target.encode(val_frame[options.target], path=data.path)),
            batch_size=4096,
        )
    result = fit(
        module,
        train,
        val,
        train_options,
        checkpoint=checkpoint,
        resume=resume,
        callbacks=callbacks,
        resume_hint=resume_hint,
    )
    return Fitted(module, features, target, result, spec)


def _id_columns(frame: pd.DataFrame, group: str | None) -> list[str]:
    columns = [c for c in frame.columns if is_id_column(c)]
    if group and group not in columns:
        columns.insert(0, group)
    return columns


def prediction_frame(
    frame: pd.DataFrame, output: np.ndarray, target: TargetEncoder, id_columns: list[str]
) -> pd.DataFrame:
    """Id columns + the prediction (+ one probability column per class)."""
    result = frame[id_columns].copy() if id_columns else pd.DataFrame(index=frame.index)
    if target.kind == "classification":
        result[f"predicted_{target.column}"] = [target.classes[i] for i in output.argmax(axis=1)]
        for k, name in enumerate(target.classes):
            result[f"probability_{name}"] = output[:, k]
    else:
        result[f"predicted_{target.column}"] = output
    return result.reset_index(drop=True)


def score(output: np.ndarray, truth: pd.Series, target: TargetEncoder, path: Path) -> dict[str, Any]:
    """Metrics of predictions against the true target column."""
    y = target.encode(truth, path=path)
    if target.kind == "classification":
        return classification_metrics(y, output, target.classes)
    return regression_metrics(y * target.scale + target.center, output)


def _plots(
    run: RunDirectory,
    prefix: str,
    output: np.ndarray,
    truth: pd.Series,
    target: TargetEncoder,
    metrics: dict[str, Any],
    path: Path,
) -> list[str]:
    if target.kind == "classification":
        return save_classification_plots(
            run, prefix, target.encode(truth, path=path), output, target.classes, metrics["confusion_matrix"]
        )
    return save_regression_plots(run, prefix, pd.to_numeric(truth).to_numpy(), output, target.column)


def _coefficients(fitted: Fitted) -> pd.DataFrame | None:
    """Weights of a linear/logistic model, per standardised feature and in original units."""
    if fitted.model_spec["hidden"]:
        return None
    layers = cast(torch.nn.Sequential, fitted.module.model.layers)
    layer = cast(torch.nn.Linear, layers[-1])
    weights = layer.weight.detach().cpu().numpy()
    bias = layer.bias.detach().cpu().numpy()
    names = fitted.features.feature_names
    scales = np.asarray(fitted.features.scales + [1.0] * (len(names) - len(fitted.features.numeric)))
    centers = np.asarray(fitted.features.centers + [0.0] * (len(names) - len(fitted.features.numeric)))
    rows = []
    outputs = (
        (["value"] if fitted.target.kind == "regression" else [fitted.target.classes[1]])
        if weights.shape[0] == 1
        else fitted.target.classes
    )
    for k, output in enumerate(outputs):
        w = weights[k]
        y_scale = fitted.target.scale if fitted.target.kind == "regression" else 1.0
        y_center = fitted.target.center if fitted.target.kind == "regression" else 0.0
        raw = w / scales * y_scale
        intercept = (bias[k] - float(np.sum(w * centers / scales))) * y_scale + y_center
        rows += [
            {"output": output, "feature": n, "weight_standardised": float(ws), "weight": float(wr)}
            for n, ws, wr in zip(names, w, raw, strict=True)
        ]
        rows.append(
            {
                "output": output,
                "feature": "(intercept)",
                "weight_standardised": float(bias[k]),
                "weight": float(intercept),
            }
        )
    return pd.DataFrame(rows)


@train_entry
def train(call: TrainCall) -> dict[str, Any]:
    """Train on a table and write the run directory ``out``; return the summary.

    Evaluation follows :func:`neurodl.tasks._protocol.run_protocol`: one
    validation split, or ``--cv K`` folds and a final model on every row.
    """
    run, table, saved = call.start_run(TASK)
    options = from_dict(BiomarkersOptions, saved)
    console, quiet, resume = call.console, call.quiet, call.resume
    data = prepare(table, options)

    def fit(
        train_rows: np.ndarray, val_rows: np.ndarray | None, name: str, description: str, epochs: int | None
    ) -> Fitted:
        with progress(console, quiet, description) as callbacks:
            return fit_rows(
                data,
                options,
                train_rows,
                val_rows,
                checkpoint=run.file(f"checkpoints/{name}.safetensors"),
                resume=resume,
                callbacks=callbacks,
                resume_hint=f"Continue with: neurodl biomarkers train --resume --out {run.path}",
                epochs=epochs,
            )

    def predict_rows(fitted: Fitted, rows: np.ndarray) -> np.ndarray:
        return fitted.module.predict_features(fitted.features.transform(data.frame.iloc[rows], path=table))

    def score_rows(rows: np.ndarray, outputs: np.ndarray) -> dict[str, Any]:
        return score(outputs, data.frame[options.target].iloc[rows], data.target, table)

    outcome = run_protocol(
        data.groups,
        data.strata,
        np.arange(len(data.frame)),
        cv=options.cv,
        val_fraction=options.val_fraction,
        seed=options.train.seed,
        fit=fit,
        predict=predict_rows,
        score=score_rows,
    )
    final: Fitted = outcome.final
    prefix = "oof_" if options.cv else "validation_"
    held = data.frame.iloc[outcome.rows]
    ids = _id_columns(data.frame, data.group_column)
    predictions = prediction_frame(held, outcome.outputs, final.target, ids)
    predictions.insert(len(ids), options.target, held[options.target].to_numpy())
    run.write_csv(f"{prefix}predictions.csv", predictions)
    scored = outcome.metrics["out_of_fold"] if options.cv else outcome.metrics["validation"]
    plot_files = _plots(run, prefix, outcome.outputs, held[options.target], data.target, scored, table)

    from neurodl.report import plots

    splits = {
        "participant_column": data.group_column,  # the same key as the image tasks' splits.json
        **outcome.splits,
        "training_participants": sorted(set(data.groups.tolist())),
    }
    run.write_json(
        "preprocessing.json",
        {
            "features": final.features.to_dict(),
            "target": final.target.to_dict(),
            "model": final.model_spec,
            "group_column": data.group_column,
        },
    )
    run.save_weights(final.module.model.state_dict())
    run.write_json("splits.json", splits)
    run.write_json("metrics.json", outcome.metrics)
    run.write_csv("history.csv", pd.DataFrame(outcome.history))
    run.save_figure(
        "learning_curves.png",
        plots.learning_curves(outcome.history, title=f"{options.target}: {final.model_spec['name']}"),
    )
    coefficients = _coefficients(final)
    if coefficients is not None:
        run.write_csv("coefficients.csv", coefficients)
    return {
        "task": data.target.kind,
        "target": options.target,
        "model": final.model_spec["name"],
        "features": final.features.feature_names,
        "rows": len(data.frame),
        "participants": len(np.unique(data.groups)),
        "classes": data.target.classes,
        "evaluation": outcome.evaluation,
        "metrics": {k: v for k, v in outcome.headline.items() if k != "confusion_matrix"},
        "metrics_std": outcome.headline_std,
        "epochs": final.result.epochs_run,
        "run": str(run.path),
        "plots": ["learning_curves.png", *plot_files],
        "warnings": leak_warnings(data),
    }


def leak_warnings(data: Prepared) -> list[str]:
    """Name numeric features that on their own separate the classes perfectly (possible leaks).

    A column such as a severity score or a derived label predicts a diagnosis
    perfectly and makes the model look better than it is.
    """
    from neurodl.tasks.metrics import rank_auc

    if data.target.kind != "classification":
        return []
    warnings = []
    for name in data.numeric:
        values = pd.to_numeric(data.frame[name], errors="coerce").to_numpy(dtype=float)
        known = np.isfinite(values)
        aucs = [rank_auc(data.strata[known] == k, values[known]) for k in range(len(data.target.classes))]
        if any(np.isfinite(a) and max(a, 1 - a) >= 0.999 for a in aucs):
            warnings.append(
                f"feature '{name}' alone separates the classes of '{data.target.column}' perfectly: check that it is not derived from the target (use --features or --exclude)."
            )
    return warnings


@dataclass
class LoadedModel:
    """A trained biomarkers model, ready to predict."""

    run: RunDirectory
    module: BiomarkersModule
    features: FeatureEncoder
    target: TargetEncoder
    group_column: str | None


def load(run_dir: Path) -> LoadedModel:
    """Open a biomarkers run directory; tampered or foreign runs give a clear error."""
    run = RunDirectory.open(run_dir, task=TASK)
    prep = run.read_json("preprocessing.json")
    try:
        features = FeatureEncoder.from_dict(prep["features"])
        target = TargetEncoder.from_dict(prep["target"])
        spec = dict(prep["model"])
        if (
            not 0 < int(spec["in_features"]) <= 100_000
            or not 0 < int(spec["out_features"]) <= 1000
            or any(not 0 < int(h) <= 100_000 for h in spec["hidden"])
        ):
            raise ValueError("model sizes out of range")
    except (KeyError, TypeError, ValueError) as exc:
        raise RunDirectoryError(
            f"{run_dir}: preprocessing.json is damaged ({exc}).", "Train the model again."
        ) from exc
    model = run.load_model(lambda: _build(spec))
    return LoadedModel(run, BiomarkersModule(model, target), features, target, prep.get("group_column"))


def predict(model: LoadedModel, table: Path) -> pd.DataFrame:
    """Predictions for every row of ``table`` (id columns kept)."""
    frame = read_table(table)
    x = model.features.transform(frame, path=table)
    return prediction_frame(
        frame, model.module.predict_features(x), model.target, _id_columns(frame, model.group_column)
    )


def evaluate(
    model: LoadedModel,
    table: Path,
    *,
    allow_overlap: bool = False,
    report_dir: Path | None = None,
    overwrite: bool = False,
) -> tuple[dict[str, Any], list[str]]:
    """Predict ``table`` and score it against its target column; return metrics and warnings.

    Rows of participants the model was trained on are refused unless
    ``allow_overlap`` (their scores would be optimistic). With ``report_dir``,
    ``predictions.csv``, ``metrics.json`` and the plots are written there.
    """
    check_report_dir(report_dir, table, overwrite=overwrite)
    frame = read_table(table)
    target = model.target
    require_columns(frame, [target.column], table)
    warnings: list[str] = []
    group = model.group_column
    splits = model.run.read_json("splits.json") if model.run.exists("splits.json") else {}
    trained = set(splits.get("training_participants", []))
    if group and group in frame.columns and trained:
        overlap = sorted(set(frame[group].map(label_text)) & trained)
        if overlap and not allow_overlap:
            shown = ", ".join(overlap[:5]) + (f" and {len(overlap) - 5} more" if len(overlap) > 5 else "")
            raise DataError(
                f"{table}: {len(overlap)} participant(s) of this table were used to train the model ({shown}); their scores would be optimistic.",
                "Evaluate on held-out participants (the run's cross-validation metrics are in metrics.json), or add --allow-overlap.",
            )
        if overlap:
            warnings.append(f"{len(overlap)} participants were in the training data (--allow-overlap).")
    elif trained:
        warnings.append(f"no '{group}' column: cannot check that these rows were not used for training.")
    output = model.module.predict_features(model.features.transform(frame, path=table))
    metrics = score(output, frame[target.column], target, table)
    metrics["rows"] = len(frame)
    if report_dir is not None:
        ids = _id_columns(frame, group)
        predictions = prediction_frame(frame, output, target, ids)
        predictions.insert(len(ids), target.column, frame[target.column].to_numpy())
        writer = RunDirectory(report_dir, TASK)  # an atomic writer for the report files
        writer.write_csv("predictions.csv", predictions)
        writer.write_json("metrics.json", {"table": str(table), "model": str(model.run.path), **metrics})
        _plots(writer, "", output, frame[target.column], target, metrics, table)
    return metrics, warnings
