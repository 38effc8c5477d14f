"""`segment predict` over a batch: pipelined = sequential, shards, resume after SIGKILL, the volumes table."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from neurodl.data.phantom import generate_cohort

TINY = ["--model", "unet", "--patch", "16", "--spacing", "1.5", "--epochs", "2", "--samples-per-image", "2"]
TINY += ["--batch-size", "2", "--augment", "none", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    generate_cohort(root, n=9, size=24, seed=5)  # RAS, LAS/LPS and 1.5 mm-slice subjects
    return root / "participants.tsv"


@pytest.fixture(scope="module")
def trained(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from neurodl.cli.main import main

    run = tmp_path_factory.mktemp("runs") / "unet"
    assert (
        main(["segment", "train", str(cohort), "--image", "t1", "--mask", "dseg", "--out", str(run), *TINY])
        == 0
    )
    return run


def images_of(cohort: Path) -> list[Path]:
    return sorted(cohort.parent.glob("sub-*/anat/*_T1w.nii.gz"))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_workers_2_writes_what_workers_0_writes_in_the_same_order(
    run_cli, trained: Path, cohort: Path, tmp_path
):
    tables = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        result = run_cli(
            "segment", "predict", "--model", trained, cohort, "-o", out, "--workers", workers,
            "--volumes", tmp_path / f"v{workers}.csv", "--probabilities", "--json", "--quiet",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        tables[workers] = pd.read_csv(tmp_path / f"v{workers}.csv")
    names = sorted(p.name for p in (tmp_path / "w0").iterdir())
    assert len(names) == 2 * 9 and names == sorted(p.name for p in (tmp_path / "w2").iterdir())
    for name in names:
        assert digest(tmp_path / "w0" / name) == digest(tmp_path / "w2" / name), name
    volumes = ["csf_volume_ml", "gm_volume_ml", "wm_volume_ml"]  # measured (the manifest has others)
    assert tables[0]["participant_id"].tolist() == pd.read_csv(cohort, sep="\t")["participant_id"].tolist()
    pd.testing.assert_frame_equal(
        tables[0].drop(columns=["mask"]), tables[2].drop(columns=["mask"]), check_exact=True
    )
    # Volumes in mL to 3 decimals: no float noise.
    assert all(round(v, 3) == v for c in volumes for v in tables[0][c])


def test_masks_equal_the_unpipelined_path_in_every_orientation(trained: Path, cohort: Path, tmp_path):
    """The fast inverse (labels copied inside tissue, probabilities interpolated at boundaries) gives
    the argmax of MONAI's inverted probabilities."""
    from neurodl.data.inputs import resolve_inputs
    from neurodl.tasks import segment

    loaded = segment.load(trained, device="cpu")
    out = tmp_path / "fast"
    table, failures = segment.predict(loaded, images_of(cohort), out, workers=0)
    assert not failures
    orientations = set()
    for image in resolve_inputs(images_of(cohort), image_columns=["t1"])[0]:
        reference, _, original = segment.segment_image(loaded, image)
        fast = nib.load(str(out / f"{image.name}_dseg.nii.gz"))
        assert np.allclose(fast.affine, original.affine) and fast.shape == original.shape
        assert np.mean(np.asarray(fast.dataobj) == reference) >= 0.999, image.name
        orientations.add(original.orientation + str(original.spacing))
    assert len(orientations) >= 3  # RAS, LAS/LPS, 1.5 mm slices


def test_shards_of_a_folder_write_every_mask_once_and_build_one_volumes_table(
    run_cli, trained: Path, cohort: Path, tmp_path
):
    folder = tmp_path / "t1w" / "nested"
    folder.mkdir(parents=True)
    for image in images_of(cohort):
        (folder / image.name).write_bytes(image.read_bytes())
    out, volumes = tmp_path / "masks", tmp_path / "volumes.csv"
    seen = []
    for i in (1, 2, 3):
        before = set(out.glob("*_dseg.nii.gz")) if out.exists() else set()
        result = run_cli(
            "segment", "predict", "--model", trained, folder.parent, "-o", out,
            "--shard", f"{i}/3", "--volumes", volumes, "--quiet",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "3 masks written" in result.stderr
        seen.append(set(out.glob("*_dseg.nii.gz")) - before)
    everything = {f"{p.name[: -len('.nii.gz')]}_dseg.nii.gz" for p in images_of(cohort)}
    assert set().union(*seen) == {out / n for n in everything} and sum(map(len, seen)) == len(everything)
    # The existing table was extended by each shard, not refused.
    table = pd.read_csv(volumes)
    assert len(table) == len(everything) and table["image"].is_unique


def test_rerunning_with_an_existing_volumes_table_completes_it(
    run_cli, trained: Path, cohort: Path, tmp_path
):
    images = images_of(cohort)
    out, volumes = tmp_path / "masks", tmp_path / "v.tsv"
    first = run_cli(
        "segment", "predict", "--model", trained, *images[:4], "-o", out, "--volumes", volumes, "-q"
    )
    assert first.exit_code == 0, first.output
    again = run_cli("segment", "predict", "--model", trained, *images, "-o", out, "--volumes", volumes, "-q")
    assert again.exit_code == 0, again.output
    assert "5 masks written" in again.stderr and "4 existing kept" in again.stderr
    table = pd.read_csv(volumes, sep="\t")
    assert [Path(p).name for p in table["image"]] == [p.name for p in images]
    not_volumes = tmp_path / "other.csv"
    not_volumes.write_text("a,b\n1,2\n")
    refused = run_cli(
        "segment", "predict", "--model", trained, images[0], "-o", out, "--volumes", not_volumes
    )
    assert refused.exit_code == 2 and "not a volumes table" in refused.stderr
    assert not_volumes.read_text() == "a,b\n1,2\n"


def test_participant_of_a_file_not_named_sub_xx_is_its_stem(run_cli, trained: Path, cohort: Path, tmp_path):
    plain = tmp_path / "in" / "patient7.nii.gz"
    plain.parent.mkdir()
    plain.write_bytes(images_of(cohort)[0].read_bytes())
    volumes = tmp_path / "v.csv"
    result = run_cli(
        "segment", "predict", "--model", trained, plain, "-o", tmp_path / "m", "--volumes", volumes
    )
    assert result.exit_code == 0, result.output
    assert pd.read_csv(volumes)["participant_id"].tolist() == ["patient7"]


@pytest.mark.slow
def test_sigkill_mid_batch_then_rerun_completes_without_rewriting_finished_masks(trained: Path, tmp_path):
    # Enough larger images that the batch is still running when the first mask appears.
    root = tmp_path / "big"
    generate_cohort(root, n=24, size=40, seed=8)
    out = tmp_path / "masks"
    command = [sys.executable, "-m", "neurodl", "segment", "predict", "--model", str(trained), str(root / "participants.tsv"), "-o", str(out), "--workers", "2", "--quiet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not list(out.glob("*_dseg.nii.gz")) and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    finished = {p: p.stat().st_mtime_ns for p in out.glob("*_dseg.nii.gz")}
    assert finished, "no mask was written before the kill"
    assert len(finished) < 24, "the batch ended before the kill: nothing was interrupted"
    for path in out.iterdir():  # a killed batch leaves only whole masks (and maybe hidden temporaries)
        if not path.name.startswith("."):
            assert np.asarray(nib.load(str(path)).dataobj).size  # readable: not truncated
    rerun = subprocess.run(command, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    masks = sorted(out.glob("*_dseg.nii.gz"))
    assert len(masks) == 24
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # finished masks were not rewritten
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left
