"""``train`` commands built from their options dataclass: each flag declared once, beside its field."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from neurodl.cli._train_command import TrainRun, option_flags, train_command
from neurodl.cli.main import app as neurodl_app
from neurodl.config import (
    MODEL,
    AutoencodeOptions,
    BiomarkersOptions,
    ClassifyOptions,
    GenerateOptions,
    ImageOptions,
    SegmentOptions,
    TrainOptions,
    TranslateOptions,
    option,
)

TASKS = {
    "biomarkers": BiomarkersOptions,
    "classify": ClassifyOptions,
    "segment": SegmentOptions,
    "autoencode": AutoencodeOptions,
    "translate": TranslateOptions,
    "generate": GenerateOptions,
}
RUN_PARAMETERS = {"manifest", "table", "out", "config", "resume", "overwrite", "quiet", "json_output"}


@dataclass(frozen=True)
class ToyOptions:
    label: str = option("diagnosis", "--label", "-l", help="Column to predict.")
    width: int = option(16, "--width", help="Filters of the first block.", panel=MODEL)
    images: ImageOptions = field(default_factory=ImageOptions)
    train: TrainOptions = field(default_factory=lambda: TrainOptions(lr=0.01, batch_size=4))


def toy_command() -> tuple[typer.Typer, list[tuple[Path | None, Any, TrainRun]]]:
    app = typer.Typer()
    calls: list[tuple[Path | None, Any, TrainRun]] = []

    @app.callback()
    def root() -> None:
        """A toy tool."""

    @train_command(app, ToyOptions, source_help="Manifest.")
    def train(manifest: Path | None, options: ToyOptions, run: TrainRun) -> None:
        """Train the toy."""
        ignored = "a local variable is no option"
        calls.append((manifest, options, run))
        del ignored

    return app, calls


def test_typed_text_becomes_the_value_of_the_field_nested_or_not(tmp_path: Path) -> None:
    app, calls = toy_command()
    args = ["train", "cohort.tsv", "--label", "age", "--width", "8", "--image", "t1,t2", "--image", "flair"]
    args += ["--spacing", "1,1,1.5", "--size", "32", "--batch-size", "all", "--bids-filter", "acq=mprage"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    [(manifest, options, run)] = calls
    assert manifest == Path("cohort.tsv")
    assert (options.label, options.width) == ("age", 8)
    assert options.images.image == ("t1", "t2", "flair")
    assert options.images.spacing == (1.0, 1.0, 1.5) and options.images.size == (32,)
    assert options.images.bids_filter == ("acq=mprage",)
    assert options.train.batch_size == 0, "'all' is the whole training set"
    assert options.train.lr == 0.01, "an option not typed keeps the task's default"
    assert run == TrainRun(out=tmp_path / "run", resume=False, overwrite=False, quiet=True, json_output=False)


def test_a_config_file_goes_through_the_same_parsers(tmp_path: Path) -> None:
    config = tmp_path / "options.json"
    config.write_text(json.dumps({"batch-size": "all", "image": "t1,t2", "spacing": "2", "width": 4}))
    app, calls = toy_command()
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--width", "8"])
    assert result.exit_code == 0, result.output
    options = calls[0][1]
    assert (options.train.batch_size, options.images.image, options.images.spacing) == (
        0,
        ("t1", "t2"),
        (2.0,),
    )
    assert options.width == 8, "a typed flag overrides the config file"
    assert calls[0][2].out == Path("runs/test_train_command"), "--out defaults to runs/<the body's module>"


def test_an_option_without_a_flag_is_refused_when_the_command_is_built() -> None:
    @dataclass(frozen=True)
    class Unflagged:
        width: int = 16

    with pytest.raises(TypeError, match="'width' declares no flag"):
        option_flags(Unflagged)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_option_is_a_flag_of_train_unless_the_task_drops_it(task: str) -> None:
    cls = TASKS[task]
    command = typer.main.get_command(neurodl_app).commands[task].commands["train"]  # type: ignore[attr-defined]
    flags = {p.name for p in command.params} - RUN_PARAMETERS
    leaves = set()
    for f in dataclasses.fields(cls):
        default = getattr(cls(), f.name)
        leaves |= (
            {g.name for g in dataclasses.fields(default)} if dataclasses.is_dataclass(default) else {f.name}
        )
    dropped = {name for name, change in getattr(cls, "flag_changes", {}).items() if change is None}
    assert flags == leaves - dropped


def test_a_task_shows_a_shared_field_under_its_own_flag_where_it_says_so(run_cli) -> None:
    text = run_cli("translate", "train", "--help").stdout
    images = text.split("Images and preprocessing", 1)[1].split("╰", 1)[0]
    assert re.findall(r"│ (--[a-z-]+)", images)[:5] == [
        "--source",
        "--target",
        "--resample-target",
        "--participant",
        "--bids-filter",
    ]
    assert "--image " not in text and "--augment" not in text
    assert "--patience" not in run_cli("generate", "train", "--help").stdout
