"""Preprocessing planned for full-size heads (crop to the head, at most 128 voxels a side), and inputs
whose field of view differs from the training images' (brought to the model's input, or a warning)."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from neurodl.data.images import (
    WHOLE_VOLUME_SIDE,
    ImagePreprocessing,
    head_mask,
    plan_preprocessing,
    preprocess,
)


def _head(path: Path, shape: tuple[int, int, int], radii: tuple[float, float, float], seed: int = 0) -> Path:
    """A bright ellipsoid 'head' in scanner-like noise, 1 mm voxels (LAS, like many scanners' files)."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.arange(n) - n / 2 for n in shape], indexing="ij")
    inside = sum((g / r) ** 2 for g, r in zip(grid, radii, strict=True)) <= 1
    data = np.abs(rng.normal(0, 6, shape)).astype(np.float32)
    data[inside] = 150 + 50 * (grid[0][inside] > 0)  # two tissues: something to normalise
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [shape[0] / 2, -shape[1] / 2, -shape[2] / 2]
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.fixture(scope="module")
def full_size(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("heads")
    return [_head(root / f"h{i}.nii.gz", (160, 190, 150), (62 - i, 76, 56), seed=i) for i in range(3)]


def _plan(paths: list[Path], **kwargs) -> ImagePreprocessing:
    options = {"spacing": (), "size": (), "normalize": "zscore", "crop_foreground": False, "channels": 1}
    return plan_preprocessing(paths, **{**options, **kwargs})


def test_the_head_mask_ignores_noise_and_finds_the_head(full_size):
    data = np.asarray(nib.load(full_size[0]).dataobj)
    found = np.nonzero(head_mask(data))
    extent = [int(found[a].max() - found[a].min() + 1) for a in range(3)]
    assert extent == pytest.approx([2 * 62, 2 * 76, 2 * 56], abs=3)


def test_full_size_heads_are_cropped_to_the_head_and_resampled_within_128_a_side(full_size, caplog):
    plan = _plan(full_size)
    assert plan.crop_foreground and max(plan.size) <= WHOLE_VOLUME_SIDE
    assert all(s % 16 == 0 for s in plan.size)
    assert plan.spacing[0] == plan.spacing[1] == plan.spacing[2] > 1.0  # 156 mm of head in <= 128 voxels
    assert "cropped to the head" in plan.describe() and "--spacing/--size" in plan.describe()
    # Recorded: a run's preprocessing.json gives back the same plan.
    assert ImagePreprocessing.from_dict(plan.to_dict()) == plan
    with caplog.at_level(logging.WARNING):
        image = preprocess(plan, [full_size[1]])
    assert tuple(image.shape[1:]) == plan.size
    assert not caplog.records  # the whole head is in the input


def test_explicit_spacing_and_size_win(full_size):
    plan = _plan(full_size, spacing=(1.0,), size=(160,))
    assert plan.spacing == (1.0, 1.0, 1.0) and plan.size == (160, 160, 160)
    assert not plan.crop_foreground and not plan.planned


def test_segmentation_keeps_whole_volumes_at_their_resolution(full_size):
    plan = _plan(full_size, resize=False)
    assert plan.spacing == (1.0, 1.0, 1.0) and not plan.crop_foreground


def test_small_images_keep_their_grid(tmp_path):
    small = [_head(tmp_path / "s.nii.gz", (48, 48, 48), (18, 20, 16))]
    plan = _plan(small)
    assert plan.spacing == (1.0, 1.0, 1.0) and plan.size == (48, 48, 48) and not plan.crop_foreground


@pytest.mark.slow
def test_a_head_larger_than_the_models_field_of_view_is_used_whole_or_named_in_a_warning(
    full_size, tmp_path, caplog
):
    # Trained on 48 mm volumes without a crop: the centre of a 160x190x150 mm head is all it can see.
    small_model = ImagePreprocessing(spacing=(1.0, 1.0, 1.0), size=(48, 48, 48))
    with caplog.at_level(logging.WARNING):
        preprocess(small_model, [full_size[0]], where="row 2 of new.tsv")
    (record,) = caplog.records
    text = record.getMessage()
    assert "row 2 of new.tsv" in text and "160x190x150 mm" in text and "central 48x48x48 mm" in text
    assert "% of the head" in text and "ignored" in text
    caplog.clear()
    # Planned on these heads (cropped to the head): a head in a wider field of view is cropped the same way.
    plan = _plan(full_size)
    wider = _head(tmp_path / "wide.nii.gz", (200, 230, 190), (60, 74, 55), seed=9)
    with caplog.at_level(logging.WARNING):
        image = preprocess(plan, [wider])
    assert tuple(image.shape[1:]) == plan.size and not caplog.records


@pytest.mark.slow
def test_classify_predict_on_a_head_of_another_field_of_view_says_what_it_ignored(
    run_cli, full_size, tmp_path, caplog
):
    from neurodl.data.phantom import generate_cohort

    generate_cohort(tmp_path / "cohort", n=4, size=24, seed=2)
    tiny = ["--model", "cnn", "--depth", "1", "--width", "2", "--epochs", "1", "--quiet"]
    trained = run_cli(
        "classify", "train", tmp_path / "cohort" / "participants.tsv", "--out", tmp_path / "run", *tiny
    )
    assert trained.exit_code == 0, trained.output
    result = run_cli(
        "classify", "predict", "--model", tmp_path / "run", full_size[0], "--output", tmp_path / "pred.csv"
    )
    assert result.exit_code == 0, result.output
    # On stderr through logging (captured here by pytest's log handler).
    assert "this image spans 160x190x150 mm" in caplog.text and "central 32x32x32 mm" in caplog.text
    assert "% of the head, outside that centre, was ignored" in caplog.text
