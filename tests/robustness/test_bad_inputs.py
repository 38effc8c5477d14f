"""Every command against a catalogue of bad inputs: exit 2, a message naming the input, nothing damaged.

Each case runs the command in-process and checks what a user (or a batch script) relies on:
exit status 2, the offending file, row or column named, no Python traceback, every input
byte-identical afterwards, no temporary files left behind, and no half-made outputs (a
``train`` that fails on bad data leaves at most ``config.json``, which a retry may replace).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from neurodl_testing.robustness import (
    BAD_IMAGES,
    TRAIN_ARGS,
    Grid,
    grid_of,
    replace_cell,
    snapshot,
    stray_files,
)

# The catalogue runs every case through every command: CI runs it all, `pytest -m 'not slow'` skips it.
pytestmark = pytest.mark.slow

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

# What reads an image, and how the bad image reaches it: "file" (the image itself is an
# input) or "manifest" (row 1 of the cohort's manifest points at it).
IMAGE_COMMANDS: dict[str, str] = {
    "info": "file",
    "check": "manifest",
    "classify train": "manifest",
    "classify predict": "file",
    "classify evaluate": "manifest",
    "segment train": "manifest",
    "segment predict": "file",
    "segment evaluate": "manifest",
    "autoencode train": "manifest",
    "autoencode encode": "file",
    "autoencode reconstruct": "file",
    "autoencode evaluate": "manifest",
    "translate train": "manifest",
    "translate predict": "file",
    "translate evaluate": "manifest",
}

# `info` describes any readable NIfTI, 2D to 5D, NaN or not: these are valid for it.
INFO_READS = {"2d", "4d", "5d", "nan-voxels", "inf-voxels", "constant"}


@dataclass
class Case:
    """One command line and the folders it must leave as they were."""

    args: list[str]
    out: Path | None
    inputs: list[Path]


def command_line(command: str, target: Path, tmp: Path, cohort: Path, runs: dict[str, Path]) -> Case:
    """The command line running ``command`` on ``target`` (an image, a manifest or a table)."""
    task, _, action = command.partition(" ")
    out = tmp / "out"
    if command == "info":
        return Case(["info", target], None, [])
    if command == "check":
        return Case(["check", target], None, [])
    if action == "train":
        return Case([task, "train", target, *TRAIN_ARGS[task], "--out", out], out, [])
    model = ["--model", runs[task]]
    if action == "evaluate":
        return Case([task, "evaluate", *model, target, "--allow-overlap", "--out", out], out, [runs[task]])
    if command in ("classify predict", "autoencode encode", "biomarkers predict"):
        return Case([task, action, *model, target, "-o", out / "predictions.csv"], out, [runs[task]])
    return Case([task, action, *model, target, "-o", out, "--quiet"], out, [runs[task]])


def run_case(
    run_cli: Callable[..., object],
    case: Case,
    folders: list[Path],
    names: list[str],
) -> str:
    """Run a case expected to fail; check exit 2, the message, the inputs and the outputs."""
    before = snapshot(*folders, *case.inputs)
    result = run_cli(*case.args)
    output = result.output  # type: ignore[attr-defined]
    assert result.exit_code == 2, output  # type: ignore[attr-defined]
    assert "Traceback" not in output
    assert "Internal error" not in output
    assert any(name in output for name in names), f"none of {names} named in:\n{output}"
    assert snapshot(*folders, *case.inputs) == before, "an input was modified"
    assert not stray_files(*folders, *case.inputs), "temporary files left behind"
    if case.out is not None and case.out.exists():
        left = sorted(p.name for p in case.out.rglob("*"))
        assert left in ([], ["config.json"]), f"partial outputs left in {case.out}: {left}"
    return output


# -- images ----------------------------------------------------------------------------------


def _image_params() -> list[object]:
    params = []
    for kind in BAD_IMAGES:
        for command in IMAGE_COMMANDS:
            if command == "info" and kind in INFO_READS:
                continue  # tested below: info describes them
            marks = []
            if kind == "unreadable" and IS_ROOT:
                marks.append(pytest.mark.skip(reason="root reads any file, whatever its mode"))
            params.append(pytest.param(kind, command, id=f"{command.replace(' ', '-')}-{kind}", marks=marks))
    return params


@pytest.mark.parametrize(("kind", "command"), _image_params())
def test_bad_image(
    kind: str, command: str, run_cli, cohort: Path, runs: dict[str, Path], tmp_path: Path
) -> None:
    bad_dir = tmp_path / "data"
    bad_dir.mkdir()
    if IMAGE_COMMANDS[command] == "manifest":
        first = cohort.parent / pd.read_csv(cohort, sep="\t")["t1"][0]
        bad = BAD_IMAGES[kind](grid_of(first, bad_dir))
        target = replace_cell(cohort, tmp_path / "manifest.tsv", "t1", 0, str(bad))
    else:
        bad = BAD_IMAGES[kind](Grid(bad_dir))
        target = bad
    case = command_line(command, target, tmp_path, cohort, runs)
    run_case(run_cli, case, [bad_dir, cohort.parent, tmp_path / "manifest.tsv"], [bad.name])


# Commands that also read a target image per row: the bad image replaces row 1's target instead.
TARGET_COMMANDS = {"translate train": "t2", "translate evaluate": "t2"}
BAD_TARGETS = [
    "missing",
    "zero-bytes",
    "truncated-gz",
    "garbage-bytes",
    "2d",
    "4d",
    "nan-voxels",
    "inf-voxels",
]


@pytest.mark.parametrize("kind", BAD_TARGETS)
@pytest.mark.parametrize("command", list(TARGET_COMMANDS))
def test_bad_target_image(
    kind: str, command: str, run_cli, cohort: Path, runs: dict[str, Path], tmp_path: Path
) -> None:
    column = TARGET_COMMANDS[command]
    bad_dir = tmp_path / "data"
    bad_dir.mkdir()
    first = cohort.parent / pd.read_csv(cohort, sep="\t")[column][0]
    bad = BAD_IMAGES[kind](grid_of(first, bad_dir))
    if bad.exists():  # named for the column it stands in
        bad = bad.rename(bad.with_name(bad.name.replace("T1w", "T2w")))
    else:
        bad = bad.with_name(bad.name.replace("T1w", "T2w"))
    target = replace_cell(cohort, tmp_path / "manifest.tsv", column, 0, str(bad))
    case = command_line(command, target, tmp_path, cohort, runs)
    run_case(run_cli, case, [bad_dir, cohort.parent, tmp_path / "manifest.tsv"], [bad.name])


@pytest.mark.parametrize("kind", sorted(INFO_READS))
def test_info_describes_unusual_but_readable_images(kind: str, run_cli, tmp_path: Path) -> None:
    image = BAD_IMAGES[kind](Grid(tmp_path))
    before = snapshot(tmp_path)
    result = run_cli("info", image, "--json")
    assert result.exit_code == 0, result.output
    assert image.name in result.stdout
    assert snapshot(tmp_path) == before


# -- tables -----------------------------------------------------------------------------------


def _table_text(cohort: Path) -> str:
    frame = pd.read_csv(cohort, sep="\t", dtype=str)
    for name in ("t1", "t2", "dseg"):
        frame[name] = [str((cohort.parent / v).resolve()) for v in frame[name]]
    return frame.to_csv(sep="\t", index=False)


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def _missing_table(folder: Path, text: str) -> Path:
    return folder / "participants.tsv"


def _zero_byte_table(folder: Path, text: str) -> Path:
    return _write(folder / "participants.tsv", b"")


def _header_only(folder: Path, text: str) -> Path:
    return _write(folder / "participants.tsv", text.splitlines()[0] + "\n")


def _latin1(folder: Path, text: str) -> Path:
    lines = text.splitlines()
    lines[1] = lines[1].replace("\tM\t", "\tMé\t").replace("\tF\t", "\tFé\t")
    return _write(folder / "participants.tsv", ("\n".join(lines) + "\n").encode("latin-1"))


def _pipe_delimited(folder: Path, text: str) -> Path:
    return _write(folder / "participants.csv", text.replace("\t", "|"))


def _binary_table(folder: Path, text: str) -> Path:
    return _write(folder / "participants.tsv", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)


def _ragged(folder: Path, text: str) -> Path:
    lines = text.splitlines()
    lines[3] += "\textra\tfields"
    return _write(folder / "participants.tsv", "\n".join(lines) + "\n")


def _duplicated_column(folder: Path, text: str) -> Path:
    lines = text.splitlines()
    lines[0] = lines[0].replace("\tage\t", "\tdiagnosis\t")
    return _write(folder / "participants.tsv", "\n".join(lines) + "\n")


def _missing_column(folder: Path, text: str) -> Path:
    frame = pd.read_csv(io.StringIO(text), sep="\t", dtype=str)
    return _write(
        folder / "participants.tsv", frame.drop(columns=["diagnosis"]).to_csv(sep="\t", index=False)
    )


def _missing_target_image_column(folder: Path, text: str) -> Path:
    frame = pd.read_csv(io.StringIO(text), sep="\t", dtype=str)
    return _write(folder / "participants.tsv", frame.drop(columns=["t2"]).to_csv(sep="\t", index=False))


def _spreadsheet(folder: Path, text: str) -> Path:
    return _write(folder / "participants.xlsx", b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256)) * 4)


def _non_numeric_cell(folder: Path, text: str) -> Path:
    frame = pd.read_csv(io.StringIO(text), sep="\t", dtype=str)
    frame.loc[2, "csf_volume_ml"] = "0.2O"  # a letter O typed for a zero
    return _write(folder / "participants.tsv", frame.to_csv(sep="\t", index=False))


def _empty_participant(folder: Path, text: str) -> Path:
    frame = pd.read_csv(io.StringIO(text), sep="\t", dtype=str)
    frame.loc[1, "participant_id"] = ""
    return _write(folder / "participants.tsv", frame.to_csv(sep="\t", index=False))


TABLE_COMMANDS = [
    "check",
    "biomarkers train",
    "biomarkers predict",
    "biomarkers evaluate",
    "classify train",
    "classify predict",
    "classify evaluate",
    "segment train",
    "segment predict",
    "segment evaluate",
    "autoencode train",
    "autoencode encode",
    "autoencode reconstruct",
    "autoencode evaluate",
    "translate train",
    "translate predict",
    "translate evaluate",
]
_TARGET_NEEDED = ["biomarkers train", "biomarkers evaluate", "classify train", "classify evaluate"]

# kind: (writer, the commands it is bad for, patterns the message must hold besides the file name)
BAD_TABLES: dict[str, tuple[Callable[[Path, str], Path], list[str], list[str]]] = {
    "missing": (_missing_table, TABLE_COMMANDS, []),
    "zero-bytes": (_zero_byte_table, TABLE_COMMANDS, []),
    "header-only": (_header_only, TABLE_COMMANDS, []),
    "not-utf8": (_latin1, TABLE_COMMANDS, ["byte"]),
    "wrong-delimiter": (_pipe_delimited, TABLE_COMMANDS, ["delimiter"]),
    "binary": (_binary_table, TABLE_COMMANDS, []),
    "spreadsheet": (_spreadsheet, TABLE_COMMANDS, []),
    "ragged-rows": (_ragged, TABLE_COMMANDS, []),
    "duplicated-column": (_duplicated_column, TABLE_COMMANDS, ["diagnosis"]),
    "missing-target-column": (_missing_column, _TARGET_NEEDED, ["diagnosis"]),
    "missing-target-image-column": (
        _missing_target_image_column,
        ["translate train", "translate evaluate"],
        ["'t2'"],
    ),
    "non-numeric-feature": (
        _non_numeric_cell,
        ["biomarkers train", "biomarkers predict", "biomarkers evaluate"],
        ["csf_volume_ml", r"rows? 3\b"],
    ),
    "empty-participant": (
        _empty_participant,
        ["biomarkers train", "classify train", "segment train", "autoencode train", "translate train"],
        ["participant_id", r"rows? 2\b"],
    ),
}


def _table_params() -> list[object]:
    return [
        pytest.param(kind, command, id=f"{command.replace(' ', '-')}-{kind}")
        for kind, (_, commands, _) in BAD_TABLES.items()
        for command in commands
    ]


@pytest.mark.parametrize(("kind", "command"), _table_params())
def test_bad_table(
    kind: str, command: str, run_cli, cohort: Path, runs: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    writer, _, names = BAD_TABLES[kind]
    table = writer(folder, _table_text(cohort))
    case = command_line(command, table, tmp_path, cohort, runs)
    output = run_case(run_cli, case, [folder, cohort.parent], [table.name])
    for pattern in names:
        assert re.search(pattern, output), pattern


# -- odd but valid ----------------------------------------------------------------------------

ODD = "my data/cohorte ünïcødé 脑"


@pytest.fixture(scope="module")
def odd_cohort(cohort: Path, runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cohort and runs under a folder with spaces and non-ASCII letters; T1w files renamed alike."""
    root = tmp_path_factory.mktemp("odd") / ODD
    shutil.copytree(cohort.parent, root)
    frame = pd.read_csv(root / cohort.name, sep="\t", dtype=str)
    renamed = []
    for value in frame["t1"]:
        path = root / value
        new = path.with_name(path.name.replace("_T1w", " T1w (é)"))
        path.rename(new)
        renamed.append(str(new.relative_to(root)))
    frame["t1"] = renamed
    frame.to_csv(root / cohort.name, sep="\t", index=False)
    for task, run in runs.items():
        shutil.copytree(run, root / "runs" / f"{task} modèle")
    return root / cohort.name


@pytest.mark.parametrize(
    "command",
    [
        "info",
        "check",
        "biomarkers train",
        "biomarkers predict",
        "biomarkers evaluate",
        "classify train",
        "classify predict",
        "classify evaluate",
        "segment train",
        "segment predict",
        "segment evaluate",
        "autoencode train",
        "autoencode encode",
        "autoencode reconstruct",
        "autoencode evaluate",
        "translate train",
        "translate predict",
        "translate evaluate",
    ],
)
def test_paths_with_spaces_and_unicode_work(command: str, run_cli, odd_cohort: Path, tmp_path: Path) -> None:
    root = odd_cohort.parent
    image = next(root.glob("sub-001/anat/* T1w (é).nii.gz"))
    runs = {task: root / "runs" / f"{task} modèle" for task in TRAIN_ARGS}
    task, _, action = command.partition(" ")
    target = (
        image
        if command
        in ("info", "classify predict", "segment predict", "autoencode reconstruct", "translate predict")
        else odd_cohort
    )
    out_parent = tmp_path / "résultats à garder"
    case = command_line(command, target, out_parent, odd_cohort, runs)
    before = snapshot(root)
    result = run_cli(*case.args)
    assert result.exit_code == 0, result.output
    assert snapshot(root) == before
    assert not stray_files(root, tmp_path)
    if case.out is not None:
        assert any(case.out.rglob("*")), f"nothing written to {case.out}"


def test_several_rows_per_participant_stay_on_one_side_of_every_split(
    run_cli, cohort: Path, tmp_path: Path
) -> None:
    """Repeated participants (sessions, or a row pasted twice) are valid: grouped, never split."""
    frame = pd.read_csv(io.StringIO(_table_text(cohort)), sep="\t", dtype=str)
    twice = pd.concat([frame, frame.iloc[:4]], ignore_index=True)
    table = tmp_path / "participants.tsv"
    twice.to_csv(table, sep="\t", index=False)
    out = tmp_path / "run"
    result = run_cli("biomarkers", "train", table, *TRAIN_ARGS["biomarkers"], "--out", out)
    assert result.exit_code == 0, result.output
    splits = json.loads((out / "splits.json").read_text())
    assert splits["train"] and splits["validation"]
    assert not set(splits["train"]) & set(splits["validation"])
    check = run_cli("check", table)
    assert check.exit_code == 0, check.output
    assert "several rows" in check.output
