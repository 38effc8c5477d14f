"""`neurodl autoencode sample|interpolate`: new images from a VAE's prior and between two images' codes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from neurodl.data.images import ImagePreprocessing, preprocess
from neurodl.data.phantom import generate_cohort

TINY = ["--size", "16", "--spacing", "1.5", "--latent-dim", "4", "--width", "4", "--epochs", "2", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    generate_cohort(root, n=6, size=24, seed=3)
    return root / "participants.tsv"


@pytest.fixture(scope="module")
def runs(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from neurodl.cli.main import main

    folder = tmp_path_factory.mktemp("runs")
    for name in ("vae", "ae"):
        assert (
            main(["autoencode", "train", str(cohort), "--model", name, "--out", str(folder / name), *TINY])
            == 0
        )
    return {"vae": folder / "vae", "ae": folder / "ae"}


def test_vae_samples_are_reproducible_in_the_training_grid(run_cli, runs, cohort: Path, tmp_path: Path):
    first = run_cli(
        "autoencode", "sample", "--model", runs["vae"], "--n", "3", "--seed", "2", "-o", tmp_path / "a"
    )
    assert first.exit_code == 0, first.output
    again = run_cli(
        "autoencode", "sample", "--model", runs["vae"], "--n", "3", "--seed", "2", "-o", tmp_path / "b"
    )
    other = run_cli(
        "autoencode", "sample", "--model", runs["vae"], "--n", "3", "--seed", "3", "-o", tmp_path / "c"
    )
    assert again.exit_code == other.exit_code == 0
    table = pd.read_csv(tmp_path / "a" / "samples.csv")
    assert list(table["t1"]) == ["sample-001.nii.gz", "sample-002.nii.gz", "sample-003.nii.gz"]
    assert (tmp_path / "a" / "samples.png").exists()
    image = nib.load(tmp_path / "a" / "sample-001.nii.gz")
    prep = json.loads((runs["vae"] / "preprocessing.json").read_text())
    real = preprocess(
        ImagePreprocessing.from_dict(prep["images"]), [cohort.parent / "sub-001/anat/sub-001_T1w.nii.gz"]
    )
    assert image.shape == (16, 16, 16) and np.allclose(image.affine, np.asarray(real.affine), atol=1e-4)

    def voxels(folder: str, name: str) -> np.ndarray:
        return np.asarray(nib.load(tmp_path / folder / name).dataobj)

    assert np.array_equal(voxels("a", "sample-002.nii.gz"), voxels("b", "sample-002.nii.gz"))
    assert not np.array_equal(voxels("a", "sample-002.nii.gz"), voxels("c", "sample-002.nii.gz"))
    assert not np.array_equal(voxels("a", "sample-001.nii.gz"), voxels("a", "sample-002.nii.gz"))


def test_interpolation_starts_and_ends_at_the_two_images_codes(run_cli, runs, cohort: Path, tmp_path: Path):
    a, b = (cohort.parent / f"sub-00{k}/anat/sub-00{k}_T1w.nii.gz" for k in (1, 2))
    result = run_cli(
        "autoencode", "interpolate", "--model", runs["ae"], a, b, "--steps", "4", "-o", tmp_path / "i"
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "i" / "interpolation.csv")
    assert list(table["weight_of_second"]) == pytest.approx([0, 1 / 3, 2 / 3, 1])
    ends = [np.asarray(nib.load(tmp_path / "i" / f"interp-0{k}.nii.gz").dataobj) for k in (0, 1, 3)]
    assert not np.allclose(ends[0], ends[2])
    # The middle of the path lies between its ends.
    assert np.abs(ends[1] - ends[0]).mean() < np.abs(ends[2] - ends[0]).mean()


def test_sampling_a_plain_autoencoder_is_refused_with_the_fix(run_cli, runs, tmp_path: Path):
    result = run_cli("autoencode", "sample", "--model", runs["ae"], "-o", tmp_path / "x")
    assert result.exit_code == 2
    assert "only a VAE has a prior" in result.stderr and "--model vae" in result.stderr
