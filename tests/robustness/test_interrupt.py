"""Interrupted runs: SIGKILL or Ctrl-C mid-training, a crash mid-write; then ``--resume`` finishes the run."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from neurodl.io.nifti import load_volume, save_volume
from neurodl.io.rundir import RunDirectory
from neurodl.io.state import load_state, save_state
from neurodl_testing.robustness import TRAIN_ARGS, digest, snapshot, stray_files

# The catalogue runs every case through every command: CI runs it all, `pytest -m 'not slow'` skips it.
pytestmark = pytest.mark.slow

EPOCHS = 300
# Full-batch epochs on 8 rows: each a few milliseconds; 300 of them outlast the signal sent after
# the first checkpoint even on an idle machine (40 did not, once).
SLOW_TRAIN = [
    "--target", "diagnosis", "--features", "csf_volume_ml,brain_metabolism",
    "--epochs", str(EPOCHS), "--patience", "0", "--batch-size", "all", "--seed", "3", "--quiet",
]  # fmt: skip


def start_training(table: Path, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "neurodl", "biomarkers", "train", str(table), *SLOW_TRAIN, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"},
        # A shell running this suite in the background may ignore SIGINT, and a Python started with
        # SIGINT ignored keeps ignoring it: give the child the default handling a terminal gives.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_checkpoint(process: subprocess.Popen[bytes], out: Path) -> Path:
    """Poll until the first epoch's checkpoint is on disk (the process must still be running)."""
    checkpoint = out / "checkpoints" / "final.safetensors"
    while True:
        if checkpoint.exists():
            return checkpoint
        if process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(f"training ended (rc {process.returncode}) before a checkpoint:\n{err.decode()}")
        time.sleep(0.005)


def assert_finished_run(run_cli, out: Path, table: Path) -> None:
    """A complete, usable run: metrics, weights, every epoch once in the history, and predict works."""
    assert json.loads((out / "metrics.json").read_text())
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == list(range(1, EPOCHS + 1))
    predicted = run_cli("biomarkers", "predict", "--model", out, table)
    assert predicted.exit_code == 0, predicted.output
    assert not stray_files(out)


def test_sigkill_mid_training_then_resume_finishes_the_run(run_cli, cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    process = start_training(cohort, out)
    try:
        wait_for_checkpoint(process, out)
        process.send_signal(signal.SIGKILL)
        process.communicate()
    finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists()
    # What a kill in the middle of a checkpoint write leaves (the timing above rarely hits one).
    (out / "checkpoints" / ".final.safetensors.k1ll3d00.tmp.safetensors").write_bytes(b"\x00" * 64)

    again = run_cli("biomarkers", "train", cohort, *SLOW_TRAIN, "--out", out)
    assert again.exit_code == 2 and f"--resume (with --out {out})" in again.output

    resumed = run_cli("biomarkers", "train", "--resume", "--out", out, "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert_finished_run(run_cli, out, cohort)


def test_ctrl_c_exits_130_with_a_checkpoint_and_the_resume_command(
    run_cli, cohort: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    process = start_training(cohort, out)
    try:
        checkpoint = wait_for_checkpoint(process, out)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    message = err.decode()
    assert process.returncode == 130, message
    assert "Traceback" not in message
    assert f"neurodl biomarkers train --resume --out {out}" in message
    assert load_state(checkpoint)["model"]

    resumed = run_cli("biomarkers", "train", "--resume", "--out", out, "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert_finished_run(run_cli, out, cohort)


def test_a_run_that_failed_on_bad_data_can_be_retried_without_overwrite(
    run_cli, cohort: Path, tmp_path: Path
) -> None:
    table = tmp_path / "participants.tsv"
    frame = pd.read_csv(cohort, sep="\t", dtype=str)
    frame.loc[2, "brain_metabolism"] = "high"
    frame.to_csv(table, sep="\t", index=False)
    out = tmp_path / "run"
    failed = run_cli("biomarkers", "train", table, *TRAIN_ARGS["biomarkers"], "--out", out)
    assert failed.exit_code == 2 and "brain_metabolism" in failed.output
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]

    frame.loc[2, "brain_metabolism"] = "1.2"
    frame.to_csv(table, sep="\t", index=False)
    retried = run_cli("biomarkers", "train", table, *TRAIN_ARGS["biomarkers"], "--out", out)
    assert retried.exit_code == 0, retried.output
    assert json.loads((out / "config.json").read_text())["options"]["input_sha256"] == digest(table)


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(
    run_cli, cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up while epoch 3's checkpoint is written: epoch 2's stays, and --resume goes on from it."""
    import safetensors.torch

    real_save = safetensors.torch.save_file
    calls = []

    def disk_full_on_third_call(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 3:
            Path(filename).write_bytes(b"\x00" * 100)  # half-written
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full_on_third_call)
    out = tmp_path / "run"
    crashed = run_cli("biomarkers", "train", cohort, *SLOW_TRAIN, "--out", out)
    assert crashed.exit_code == 2, crashed.output
    assert "No space left on device" in crashed.output and "Traceback" not in crashed.output
    checkpoint = out / "checkpoints" / "final.safetensors"
    assert len(load_state(checkpoint)["history"]) == 2
    assert not stray_files(out)

    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    resumed = run_cli("biomarkers", "train", "--resume", "--out", out, "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert_finished_run(run_cli, out, cohort)


# -- every atomic writer keeps the old file when a write fails part-way -----------------------------


def _state_writer(path: Path, value: float) -> None:
    save_state({"model": {"w": torch.full((3,), value)}, "epoch": int(value)}, path)


def _weights_writer(path: Path, value: float) -> None:
    RunDirectory(path.parent, "biomarkers").save_weights({"w": torch.full((3,), value)}, path.name)


def _json_writer(path: Path, value: float) -> None:
    RunDirectory(path.parent, "biomarkers").write_json(path.name, {"value": value})


def _csv_writer(path: Path, value: float) -> None:
    RunDirectory(path.parent, "biomarkers").write_csv(path.name, pd.DataFrame({"value": [value] * 3}))


def _nifti_writer(path: Path, value: float) -> None:
    reference = path.parent / "reference.nii.gz"
    if not reference.exists():
        import nibabel as nib

        nib.save(
            nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), str(reference)
        )
    save_volume(np.full((4, 4, 4), value, np.float32), path, like=load_volume(reference))


WRITERS = {
    "checkpoint": (_state_writer, "final.safetensors", "safetensors.torch.save_file"),
    "weights": (_weights_writer, "model.safetensors", "safetensors.torch.save_file"),
    "json": (_json_writer, "metrics.json", "pathlib.Path.write_bytes"),
    "csv": (_csv_writer, "predictions.csv", "pandas.DataFrame.to_csv"),
    "nifti": (_nifti_writer, "mask.nii.gz", "nibabel.save"),
}


@pytest.mark.parametrize(
    "interruption", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()]
)
@pytest.mark.parametrize("kind", list(WRITERS))
def test_a_failed_write_leaves_the_previous_file(
    kind: str, interruption: BaseException, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer, name, target = WRITERS[kind]
    path = tmp_path / name
    writer(path, 1.0)
    before = snapshot(tmp_path)

    module_name, _, attribute = target.rpartition(".")
    owner: object = __import__(module_name.split(".")[0])
    for part in module_name.split(".")[1:]:
        owner = getattr(owner, part)

    def half_written(*args, **kwargs):
        destination = next(Path(a) for a in (*args, *kwargs.values()) if isinstance(a, str | Path))
        Path(destination).parent.mkdir(parents=True, exist_ok=True)
        with open(destination, "wb") as handle:
            handle.write(b"\x00" * 10)
        raise interruption

    monkeypatch.setattr(owner, attribute, half_written)
    with pytest.raises(type(interruption)):
        writer(path, 2.0)
    assert snapshot(tmp_path) == before
    assert not stray_files(tmp_path)
