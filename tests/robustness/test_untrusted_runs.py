"""Run directories from elsewhere are data, not code: nothing is unpickled, tampering gives exit 2."""

from __future__ import annotations

import json
import pickle
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from neurodl.errors import RunDirectoryError
from neurodl.io.rundir import RunDirectory
from neurodl_testing.robustness import snapshot, stray_files

# The catalogue runs every case through every command: CI runs it all, `pytest -m 'not slow'` skips it.
pytestmark = pytest.mark.slow

TASKS = ["biomarkers", "classify", "segment", "autoencode", "translate"]


def predict_args(task: str, run: Path, cohort: Path, out: Path) -> list[str | Path]:
    """The command that loads ``run`` and applies it to one input."""
    image = next(cohort.parent.glob("sub-001/anat/sub-001_T1w.nii.gz"))
    if task == "biomarkers":
        return ["biomarkers", "predict", "--model", run, cohort, "-o", out / "predictions.csv"]
    if task == "classify":
        return ["classify", "predict", "--model", run, image, "-o", out / "predictions.csv", "--quiet"]
    if task in ("segment", "translate"):
        return [task, "predict", "--model", run, image, "-o", out, "--quiet"]
    return ["autoencode", "encode", "--model", run, image, "-o", out / "latents.csv", "--quiet"]


def copy_run(runs: dict[str, Path], task: str, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(runs[task], run)
    return run


def assert_refused(result, *names: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "Internal error" not in result.output
    for name in names:
        assert name in result.output, f"{name!r} not in {result.output}"


@pytest.mark.parametrize("task", TASKS)
def test_loading_and_predicting_never_unpickles(
    task: str, run_cli, runs: dict[str, Path], cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a model directory was unpickled")

    run = runs[task]  # trained (on first use) before the patch: only loading is under test
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    result = run_cli(*predict_args(task, run, cohort, tmp_path / "out"))
    assert result.exit_code == 0, result.output


# -- tampered weights ---------------------------------------------------------------------------


class _Payload:
    """Unpickling this would create a file: proof that code from the run directory ran."""

    def __init__(self, proof: Path) -> None:
        self.proof = proof

    def __reduce__(self):
        return (Path.touch, (self.proof,))


def _wrong_shapes(weights: Path, tmp: Path) -> None:
    tensors = load_file(str(weights))
    save_file(
        {k: torch.zeros(tuple(s + 1 for s in v.shape) or (2,)) for k, v in tensors.items()}, str(weights)
    )


def _wrong_keys(weights: Path, tmp: Path) -> None:
    tensors = load_file(str(weights))
    save_file({f"evil.{k}": v for k, v in tensors.items()}, str(weights))


def _missing_keys(weights: Path, tmp: Path) -> None:
    tensors = load_file(str(weights))
    save_file(dict(list(tensors.items())[:1]), str(weights))


def _truncated(weights: Path, tmp: Path) -> None:
    raw = weights.read_bytes()
    weights.write_bytes(raw[: len(raw) // 2])


def _garbage(weights: Path, tmp: Path) -> None:
    weights.write_bytes(bytes(range(256)) * 16)


def _zero_bytes(weights: Path, tmp: Path) -> None:
    weights.write_bytes(b"")


def _huge_header(weights: Path, tmp: Path) -> None:
    """A header that claims a tensor of 10^12 floats in a 200-byte file."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [10**12], "data_offsets": [0, 4 * 10**12]}}).encode()
    weights.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 64)


def _pickle(weights: Path, tmp: Path) -> None:
    with open(weights, "wb") as handle:
        pickle.dump({"model": _Payload(tmp / "pwned")}, handle)


TAMPERED: dict[str, Callable[[Path, Path], None]] = {
    "wrong-shapes": _wrong_shapes,
    "wrong-keys": _wrong_keys,
    "missing-keys": _missing_keys,
    "truncated": _truncated,
    "garbage": _garbage,
    "zero-bytes": _zero_bytes,
    "huge-header": _huge_header,
    "pickle": _pickle,
}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("kind", list(TAMPERED))
def test_tampered_weights_are_refused(
    kind: str, task: str, run_cli, runs: dict[str, Path], cohort: Path, tmp_path: Path
) -> None:
    run = copy_run(runs, task, tmp_path)
    TAMPERED[kind](run / "model.safetensors", tmp_path)
    before = snapshot(run, cohort.parent)
    result = run_cli(*predict_args(task, run, cohort, tmp_path / "out"))
    assert_refused(result, "model.safetensors")
    assert not (tmp_path / "pwned").exists()
    assert snapshot(run, cohort.parent) == before
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert not stray_files(run, tmp_path)


# -- tampered descriptions ------------------------------------------------------------------------


def _edit_json(run: Path, name: str, change: Callable[[dict], None]) -> None:
    payload = json.loads((run / name).read_text())
    change(payload)
    (run / name).write_text(json.dumps(payload))


def _unknown_model(run: Path) -> None:
    _edit_json(run, "preprocessing.json", lambda p: p["model"].update(name="evil_net"))


_ABSURD = {
    "biomarkers": {"hidden": [10**9]},
    "classify": {"depth": 10**4},
    "segment": {"out_channels": 10**6},
    "autoencode": {"latent_dim": 10**9},
    "translate": {"width": 10**9},
}


def _absurd_model(run: Path) -> None:
    task = json.loads((run / "config.json").read_text())["task"]
    _edit_json(run, "preprocessing.json", lambda p: p["model"].update(_ABSURD[task]))


def _absurd_image_size(run: Path) -> None:
    def change(payload: dict) -> None:
        if "window" in payload:  # translate: an absurd inference window
            payload["window"] = [10**6] * len(payload["window"])
        elif "images" in payload:
            payload["images"]["size"] = [1024, 1024, 1024]
        else:  # biomarkers: an absurd number of input features
            payload["model"]["in_features"] = 10**8

    _edit_json(run, "preprocessing.json", change)


def _not_a_mapping(run: Path) -> None:
    (run / "preprocessing.json").write_text("[1, 2, 3]")


def _not_json(run: Path) -> None:
    (run / "preprocessing.json").write_text("{'model': cnn")


def _newer_format(run: Path) -> None:
    _edit_json(run, "config.json", lambda p: p.update(neurodl_format=99))


def _config_missing(run: Path) -> None:
    (run / "config.json").unlink()


def _weights_outside(run: Path) -> None:
    """model.safetensors is a link to a file outside the run directory."""
    outside = run.parent / "elsewhere.safetensors"
    shutil.move(run / "model.safetensors", outside)
    (run / "model.safetensors").symlink_to(outside)


DESCRIPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    # kind: (tampering, what the message names)
    "unknown-model": (_unknown_model, "preprocessing.json"),
    "absurd-model-size": (_absurd_model, "preprocessing.json"),
    "absurd-input-size": (_absurd_image_size, "preprocessing.json"),
    "preprocessing-not-a-mapping": (_not_a_mapping, "preprocessing.json"),
    "preprocessing-not-json": (_not_json, "preprocessing.json"),
    "newer-format": (_newer_format, "newer neurodl"),
    "config-missing": (_config_missing, "config.json"),
    "weights-outside-the-run": (_weights_outside, "outside the run directory"),
}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("kind", list(DESCRIPTIONS))
def test_tampered_run_descriptions_are_refused(
    kind: str, task: str, run_cli, runs: dict[str, Path], cohort: Path, tmp_path: Path
) -> None:
    run = copy_run(runs, task, tmp_path)
    tamper, named = DESCRIPTIONS[kind]
    tamper(run)
    result = run_cli(*predict_args(task, run, cohort, tmp_path / "out"))
    assert_refused(result, named)


def _target_scale(change: dict) -> Callable[[Path], None]:
    return lambda run: _edit_json(run, "preprocessing.json", lambda p: p["target_scale"].update(change))


def _edit_preprocessing(change: Callable[[dict], None]) -> Callable[[Path], None]:
    return lambda run: _edit_json(run, "preprocessing.json", change)


# Translate's own description: the intensity map back to the target's units, and the inference window.
TRANSLATE_DESCRIPTIONS: dict[str, Callable[[Path], None]] = {
    "target-scale-nan": _target_scale({"high": float("nan")}),
    "target-scale-inf": _target_scale({"maximum": float("inf")}),
    "target-scale-low-above-high": _target_scale({"low": 10.0, "high": 1.0}),
    "target-scale-not-numbers": _target_scale({"low": "zero"}),
    "target-scale-missing": _edit_preprocessing(lambda p: p.pop("target_scale")),
    "huge-input-size": _edit_preprocessing(lambda p: p["images"].update(size=[1024, 1024, 1024])),
    "window-of-other-dims": _edit_preprocessing(lambda p: p.update(window=[32, 32, 32])),
    "window-larger-than-the-images": _edit_preprocessing(lambda p: p.update(window=[1024, 1024])),
    "target-column-a-path": _edit_preprocessing(lambda p: p.update(target_column="/../../escaped")),
    "window-not-a-list": _edit_preprocessing(lambda p: p.update(window=32)),
    "dims-4": _edit_preprocessing(lambda p: p["model"].update(dims=4)),
    "image-columns-missing": _edit_preprocessing(lambda p: p.pop("image_columns")),
    "image-columns-a-string": _edit_preprocessing(lambda p: p.update(image_columns="t1")),
    "target-column-not-a-string": _edit_preprocessing(lambda p: p.update(target_column=["t2"])),
}


@pytest.mark.parametrize("kind", list(TRANSLATE_DESCRIPTIONS))
def test_tampered_translate_descriptions_are_refused(
    kind: str, run_cli, runs: dict[str, Path], cohort: Path, tmp_path: Path
) -> None:
    run = copy_run(runs, "translate", tmp_path)
    TRANSLATE_DESCRIPTIONS[kind](run)
    before = snapshot(run, cohort.parent)
    result = run_cli(*predict_args("translate", run, cohort, tmp_path / "out"))
    assert_refused(result, "preprocessing.json")
    assert snapshot(run, cohort.parent) == before
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert not [*tmp_path.rglob("*escaped*"), *tmp_path.parent.glob("*escaped*")], "written outside -o"


@pytest.mark.parametrize("task", TASKS)
def test_a_run_from_another_task_is_refused(
    task: str, run_cli, runs: dict[str, Path], cohort: Path, tmp_path: Path
):
    other = "classify" if task == "biomarkers" else "biomarkers"
    result = run_cli(*predict_args(task, runs[other], cohort, tmp_path / "out"))
    article = "an" if task[0] in "aeiou" else "a"  # "not an 'autoencode' run"
    assert_refused(result, f"is a '{other}' run, not {article} '{task}' run")


@pytest.mark.parametrize("name", ["../outside.json", "/etc/passwd", "checkpoints/../../outside.json"])
def test_names_inside_a_run_cannot_escape_it(name: str, tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run", "biomarkers")
    with pytest.raises(RunDirectoryError, match="outside the run directory"):
        run.file(name)
    with pytest.raises(RunDirectoryError):
        run.write_json(name, {"x": 1})
    assert not (tmp_path / "outside.json").exists()


COLUMNS: dict[str, Callable[[dict], None]] = {
    "image-columns-missing": lambda p: p.pop("image_columns"),
    "image-columns-a-string": lambda p: p.update(image_columns="t1"),
    "participant-column-not-a-name": lambda p: p.update(participant_column=["participant_id"]),
}


@pytest.mark.parametrize("task", ["classify", "segment", "autoencode", "translate"])
@pytest.mark.parametrize("kind", list(COLUMNS))
def test_tampered_column_names_are_refused(
    kind: str, task: str, run_cli, runs: dict[str, Path], cohort: Path, tmp_path: Path
) -> None:
    run = copy_run(runs, task, tmp_path)
    _edit_json(run, "preprocessing.json", COLUMNS[kind])
    result = run_cli(*predict_args(task, run, cohort, tmp_path / "out"))
    assert_refused(result, "preprocessing.json")
