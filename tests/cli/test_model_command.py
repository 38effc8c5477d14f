"""Commands of a trained model built around their shared flags: each declared once, in _model_command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
from typer.testing import CliRunner

from neurodl.cli._model_command import (
    BATCH,
    SINGLE,
    Evaluation,
    ModelRun,
    evaluate_command,
    model_command,
)
from neurodl.cli._options import ImageInputs
from neurodl.cli.main import app as neurodl_app


def toy_app() -> tuple[typer.Typer, list[tuple[Any, dict[str, Any]]]]:
    app = typer.Typer()
    calls: list[tuple[Any, dict[str, Any]]] = []

    @app.callback()
    def root() -> None:
        """A toy tool."""

    @model_command(app, "predict", BATCH)
    def predict(
        run: ModelRun,
        inputs: ImageInputs,
        tta: Annotated[bool, typer.Option("--tta", help="Flip.")] = False,
    ) -> None:
        """Predict."""
        calls.append((run, {"inputs": inputs, "tta": tta}))

    @evaluate_command(app, "Manifest.", after="mask", out="Report folder.")
    def evaluate(
        run: Evaluation,
        mask: Annotated[str | None, typer.Option("--mask", help="Mask column.")] = None,
        tta: Annotated[bool, typer.Option("--tta", help="Flip.")] = False,
    ) -> None:
        """Evaluate."""
        calls.append((run, {"mask": mask, "tta": tta}))

    return app, calls


def options(app: typer.Typer, name: str) -> list[str]:
    command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    return [p.opts[0] for p in command.params if p.param_type_name == "option"]


def test_the_body_gets_the_shared_flags_in_one_object_and_its_own_by_name() -> None:
    app, calls = toy_app()
    args = ["predict", "--model", "runs/x", "a.nii.gz", "b.nii.gz", "--tta", "--shard", "1/2", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    [(run, own)] = calls
    assert run == ModelRun(model=Path("runs/x"), shard="1/2", json_output=True)
    assert own == {"inputs": [Path("a.nii.gz"), Path("b.nii.gz")], "tta": True}


def test_model_first_the_body_s_own_then_the_shared_flags_in_help_order() -> None:
    app, _ = toy_app()
    assert options(app, "predict") == [
        "--model",
        "--tta",
        "--overwrite",
        "--shard",
        "--device",
        "--quiet",
        "--json",
    ]


def test_evaluate_puts_its_flags_after_the_column_scored(tmp_path: Path) -> None:
    app, calls = toy_app()
    assert options(app, "evaluate") == [
        "--model",
        "--mask",
        "--out",
        "--allow-overlap",
        "--bids-filter",
        "--tta",
        "--overwrite",
        "--device",
        "--quiet",
        "--json",
    ]
    args = ["evaluate", "--model", "m", "test.tsv", "--mask", "dseg", "-o", str(tmp_path), "--allow-overlap"]
    result = CliRunner().invoke(app, [*args, "--bids-filter", "acq=x", "--quiet"])
    assert result.exit_code == 0, result.output
    [(run, own)] = calls
    assert (run.manifest, run.out, run.allow_overlap, run.bids_filter) == (
        Path("test.tsv"),
        tmp_path,
        True,
        ["acq=x"],
    )
    assert run.quiet and not run.json_output and run.device == "auto"
    assert own == {"mask": "dseg", "tta": False}


def test_a_flag_that_is_not_shared_is_refused_when_the_command_is_built() -> None:
    with pytest.raises(TypeError, match="not a shared flag of a model's command: colour"):
        model_command(typer.Typer(), "predict", (*SINGLE, "colour"))


def test_every_model_command_of_neurodl_takes_model_first() -> None:
    groups = typer.main.get_command(neurodl_app).commands  # type: ignore[attr-defined]
    for group in ("biomarkers", "classify", "segment", "autoencode", "translate", "generate"):
        for name, command in groups[group].commands.items():
            if name == "train":
                continue
            first = next(p for p in command.params if p.param_type_name == "option")
            assert first.opts == ["--model", "-m"], f"{group} {name}"
            assert {p.name for p in command.params} >= {"model", "overwrite"}, f"{group} {name}"
