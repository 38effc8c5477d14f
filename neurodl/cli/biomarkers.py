"""``neurodl biomarkers``: diagnosis or severity from a table of biomarkers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neurodl.cli._batch import check_output_file, write_table
from neurodl.cli._console import err_console
from neurodl.cli._launch import train_and_report
from neurodl.cli._model_command import ModelRun, model_command
from neurodl.cli._options import AllowOverlapFlag, output_folder, output_table
from neurodl.cli._render import counted, metrics_table, show_metrics
from neurodl.cli._train_command import TrainRun, train_command
from neurodl.config import BiomarkersOptions

app = typer.Typer(
    help="Diagnosis (classification) or severity (regression) from a CSV/TSV of biomarkers: linear and logistic regression, MLP.",
    no_args_is_help=True,
)

Table = Annotated[
    Path,
    typer.Argument(help="CSV or TSV table, one row per subject (e.g. participants.tsv).", dir_okay=False),
]


@train_command(
    app,
    BiomarkersOptions,
    source="table",
    source_help="CSV or TSV table, one row per subject (e.g. participants.tsv). Not needed with --resume.",
    table=True,
)
def train(table: Path | None, options: BiomarkersOptions, run: TrainRun) -> None:
    """Train linear/logistic regression or an MLP on a table; write a run directory.

    Example: neurodl biomarkers train sample_data/participants.tsv --target diagnosis --features csf_volume_ml,brain_metabolism --cv 5 --out runs/dx
    """
    from neurodl.tasks import biomarkers  # heavy (torch, pandas): only when the command runs

    train_and_report(
        biomarkers.train,
        table,
        options,
        run,
        describe=lambda s: (
            f"{s['rows']} rows, {s['participants']} participants; features: {', '.join(s['features'])}"
        ),
    )


@model_command(app, "predict", ("overwrite",))
def predict(run: ModelRun, table: Table, output: Path | None = output_table()) -> None:
    """Predict every row of a table: id columns, the predicted class and one probability per class (or the value).

    Example: neurodl biomarkers predict --model runs/dx new_subjects.csv -o predictions.csv
    """
    from neurodl.tasks import biomarkers  # heavy: only when the command runs

    check_output_file(output, [table], run.overwrite)
    predictions = biomarkers.predict(biomarkers.load(run.model), table)
    write_table(predictions, output, counted(len(predictions), "prediction"))


@model_command(app, "evaluate", ("overwrite", "json_output"))
def evaluate(
    run: ModelRun,
    table: Table,
    out: Path | None = output_folder(
        None, "Folder for predictions.csv, metrics.json and plots (ROC, confusion matrix)."
    ),
    allow_overlap: AllowOverlapFlag = False,
) -> None:
    """Score a trained model on a table that has the target column.

    Example: neurodl biomarkers evaluate --model runs/dx held_out.csv --out runs/dx/test
    """
    from neurodl.tasks import biomarkers  # heavy: only when the command runs

    loaded = biomarkers.load(run.model)
    metrics, warnings = biomarkers.evaluate(
        loaded, table, allow_overlap=allow_overlap, report_dir=out, overwrite=run.overwrite
    )
    title = f"{loaded.target.column} on {table.name} ({metrics['rows']} rows)"
    show_metrics(
        err_console(),
        run,
        metrics,
        warnings,
        metrics_table(title, metrics),
        saved="Predictions, metrics and plots",
        out=out,
    )
