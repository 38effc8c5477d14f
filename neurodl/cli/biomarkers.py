"""neurodl biomarkers: placeholder until the engine lands."""

import typer

app = typer.Typer(help="Diagnosis or severity from a CSV/TSV table of biomarkers (linear/logistic regression, MLP).", no_args_is_help=True)
