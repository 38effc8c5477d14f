"""``neurodl biomarkers``: diagnosis or severity from a table of biomarkers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neurodl.cli import _train_options as T
from neurodl.cli._batch import check_output_file
from neurodl.cli._config import parse_batch_size, parse_hidden, resolve_options, split_list
from neurodl.cli._console import err_console, print_json
from neurodl.cli._options import ConfigOption, JsonFlag, ModelDirOption, OverwriteFlag, QuietFlag
from neurodl.cli._render import counted, metrics_table, render_train_summary
from neurodl.cli.report import report_after_training
from neurodl.config import BiomarkersOptions

app = typer.Typer(
    help="Diagnosis (classification) or severity (regression) from a CSV/TSV of biomarkers: linear and logistic regression, MLP.",
    no_args_is_help=True,
)

_D = BiomarkersOptions()
_M = "Model"
Table = Annotated[
    Path,
    typer.Argument(help="CSV or TSV table, one row per subject (e.g. participants.tsv).", dir_okay=False),
]


@app.command("train")
def train(
    ctx: typer.Context,
    table: Annotated[
        Path | None,
        typer.Argument(
            help="CSV or TSV table, one row per subject (e.g. participants.tsv). Not needed with --resume.",
            dir_okay=False,
        ),
    ] = None,
    target: Annotated[
        str, typer.Option("--target", "-t", help="Column to predict (e.g. diagnosis, severity).")
    ] = _D.target,
    features: Annotated[
        list[str] | None,
        typer.Option(
            "--features",
            "-f",
            help="Feature columns, comma-separated or repeated (default: every numeric column except ids and the target).",
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Columns never used as features.")
    ] = None,
    task: Annotated[
        str,
        typer.Option(
            "--task",
            help="auto, classification or regression (auto: strings or few integer levels = classification).",
        ),
    ] = _D.task,
    hidden: Annotated[
        str,
        typer.Option(
            "--hidden",
            help="Hidden layer sizes, e.g. 64,32; 'none' = logistic (classification) or linear (regression) regression.",
            rich_help_panel=_M,
        ),
    ] = "64,32",
    activation: Annotated[
        str, typer.Option("--activation", help="relu, tanh or sigmoid.", rich_help_panel=_M)
    ] = _D.activation,
    dropout: Annotated[
        float,
        typer.Option("--dropout", help="Dropout probability after each hidden layer.", rich_help_panel=_M),
    ] = _D.dropout,
    class_weight: Annotated[
        str,
        typer.Option("--class-weight", help="none or balanced (weigh rare classes up).", rich_help_panel=_M),
    ] = _D.class_weight,
    positive: Annotated[
        str,
        typer.Option(
            "--positive",
            help="Positive class of a binary target (default: the one that is not CN/HC/control/0).",
        ),
    ] = _D.positive,
    impute: Annotated[
        str,
        typer.Option(
            "--impute",
            help="Fill missing feature values: none (error), median or mean (fitted on training rows).",
        ),
    ] = _D.impute,
    cv: Annotated[
        int,
        typer.Option(
            "--cv", help="K-fold cross-validation grouped by participant (0: one train/validation split)."
        ),
    ] = _D.cv,
    group: Annotated[
        str,
        typer.Option(
            "--group",
            help="Participant column for grouped splits (auto: participant_id when present; none: each row).",
        ),
    ] = _D.group,
    val_fraction: Annotated[
        float,
        typer.Option(
            "--val-fraction", help="Share of participants held out for validation / early stopping."
        ),
    ] = _D.val_fraction,
    epochs: T.Epochs = _D.train.epochs,
    batch_size: T.BatchSize = str(_D.train.batch_size),
    optimizer: T.Optimizer = _D.train.optimizer,
    lr: T.LearningRate = _D.train.lr,
    momentum: T.Momentum = _D.train.momentum,
    weight_decay: T.WeightDecay = _D.train.weight_decay,
    scheduler: T.Scheduler = _D.train.scheduler,
    grad_clip: T.GradClip = _D.train.grad_clip,
    patience: T.Patience = _D.train.patience,
    min_delta: T.MinDelta = _D.train.min_delta,
    monitor: T.Monitor = _D.train.monitor,
    seed: T.Seed = _D.train.seed,
    deterministic: T.Deterministic = _D.train.deterministic,
    device: T.Device = _D.train.device,
    precision: T.Precision = _D.train.precision,
    track: T.Track = None,
    track_uri: T.TrackUri = "",
    experiment: T.Experiment = "",
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")] = Path(
        "runs/biomarkers"
    ),
    config: ConfigOption = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue the interrupted run in --out (its saved options and table are used)."
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing run directory.")
    ] = False,
    quiet: QuietFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Train linear/logistic regression or an MLP on a table; write a run directory.

    Example: neurodl biomarkers train sample_data/participants.tsv --target diagnosis --features csf_volume_ml,brain_metabolism --cv 5 --out runs/dx
    """
    from neurodl.tasks import biomarkers  # heavy (torch, pandas): only when the command runs

    values = dict(locals())
    for name in (
        "ctx",
        "table",
        "out",
        "config",
        "resume",
        "overwrite",
        "quiet",
        "json_output",
        "biomarkers",
    ):
        values.pop(name, None)
    options = resolve_options(
        BiomarkersOptions,
        ctx,
        values,
        config_file=config,
        resume=resume,
        converters={
            "features": split_list,
            "exclude": split_list,
            "hidden": parse_hidden,
            "batch_size": parse_batch_size,
            "track": split_list,
        },
    )
    from neurodl.tracking import tracked  # the tracking libraries only with --track

    console = err_console()
    with tracked(options.train, out, task="biomarkers", console=console) as tracking:
        summary = biomarkers.train(
            table, options, out, resume=resume, overwrite=overwrite, console=console, quiet=quiet
        )
        if json_output:
            print_json(summary)
        if not quiet:
            render_train_summary(
                console,
                summary,
                f"{summary['rows']} rows, {summary['participants']} participants; features: {', '.join(summary['features'])}",
            )
            for warning in summary["warnings"]:
                console.print(f"[yellow]Warning:[/yellow] {warning}")
        report_after_training(console, summary["run"], quiet=quiet)
        tracking.summary = summary


@app.command("predict")
def predict(
    model: ModelDirOption,
    table: Table,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="CSV to write (default: stdout).", dir_okay=False)
    ] = None,
    overwrite: OverwriteFlag = False,
) -> None:
    """Predict every row of a table: id columns, the predicted class and one probability per class (or the value).

    Example: neurodl biomarkers predict --model runs/dx new_subjects.csv -o predictions.csv
    """
    import sys

    from neurodl.io.atomic import atomic_output
    from neurodl.tasks import biomarkers  # heavy: only when the command runs

    check_output_file(output, [table], overwrite)
    loaded = biomarkers.load(model)
    predictions = biomarkers.predict(loaded, table)
    if output is None:
        predictions.to_csv(sys.stdout, index=False)
        return
    with atomic_output(output) as tmp:
        predictions.to_csv(tmp, index=False, sep="\t" if output.suffix.lower() == ".tsv" else ",")
    err_console().print(f"{counted(len(predictions), 'prediction')} written to {output}")


@app.command("evaluate")
def evaluate(
    model: ModelDirOption,
    table: Table,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Folder for predictions.csv, metrics.json and plots (ROC, confusion matrix).",
            file_okay=False,
        ),
    ] = None,
    allow_overlap: Annotated[
        bool,
        typer.Option("--allow-overlap", help="Score participants the model was trained on (optimistic)."),
    ] = False,
    overwrite: OverwriteFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Score a trained model on a table that has the target column.

    Example: neurodl biomarkers evaluate --model runs/dx held_out.csv --out runs/dx/test
    """
    from neurodl.tasks import biomarkers  # heavy: only when the command runs

    loaded = biomarkers.load(model)
    metrics, warnings = biomarkers.evaluate(
        loaded, table, allow_overlap=allow_overlap, report_dir=out, overwrite=overwrite
    )
    console = err_console()
    for warning in warnings:
        console.print(f"[yellow]Warning:[/yellow] {warning}")
    if json_output:
        print_json(metrics)
    console.print(metrics_table(f"{loaded.target.column} on {table.name} ({metrics['rows']} rows)", metrics))
    if out is not None:
        console.print(f"Predictions, metrics and plots written to {out}")
