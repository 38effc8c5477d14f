"""The per-axis inverse gives MONAI's inverse: the same probabilities and the same argmax mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from neurodl.data.images import ImagePreprocessing, invert_to_input, preprocess
from neurodl.inference.resample import argmax_channels, labels_on_input_grid, resample_maps, separable_maps
from neurodl_testing import las_anisotropic_affine, make_nifti


def smooth_probabilities(shape: tuple[int, ...], classes: int = 4, seed: int = 0) -> np.ndarray:
    """Blobby class probabilities: large uniform regions with boundaries, like a segmenter's."""
    noise = torch.from_numpy(np.random.default_rng(seed).normal(size=(classes, *shape)).astype(np.float32))
    logits = torch.nn.functional.avg_pool3d(noise[None], 5, 1, 2)[0] * 12
    return torch.softmax(logits, 0).numpy()


@pytest.mark.parametrize(
    ("affine", "shape", "spacing"),
    [
        (las_anisotropic_affine(), (30, 40, 20), 1.5),  # LAS, 1 x 1.5 x 3 mm, padded to the size
        (np.diag([1.0, 1.0, 1.0, 1.0]), (41, 37, 33), 1.5),  # RAS, 1 mm, no pad
        (
            np.array([[0, 0, 1.2, 5], [-1, 0, 0, 7], [0, 1, 0, -3], [0, 0, 0, 1.0]]),
            (25, 30, 28),
            2.0,
        ),  # axes swapped
    ],
)
def test_fast_inverse_equals_monai_inverse(
    tmp_path: Path, affine: np.ndarray, shape: tuple[int, ...], spacing
):
    path = make_nifti(tmp_path / "in.nii.gz", affine=affine, shape=shape)
    preprocessing = ImagePreprocessing(spacing=(spacing,) * 3, size=(24, 24, 24), resize=False)
    x = preprocess(preprocessing, [path])
    probabilities = smooth_probabilities(tuple(x.shape[1:]))
    reference = invert_to_input(torch.from_numpy(probabilities), x, preprocessing)
    maps = separable_maps(x, affine, shape)
    assert maps is not None
    fast = resample_maps(probabilities, maps)
    assert fast.shape == reference.shape == (4, *shape)
    np.testing.assert_allclose(fast, reference, atol=1e-5)
    labels = labels_on_input_grid(probabilities, maps)
    assert labels.dtype == np.uint8 and labels.shape == shape
    assert np.mean(labels == reference.argmax(axis=0)) >= 0.9999


def test_crop_to_the_head_falls_back_to_monai(tmp_path: Path):
    data = np.zeros((30, 30, 30), np.float32)
    data[8:22, 8:22, 8:22] = 100
    path = make_nifti(tmp_path / "in.nii.gz", data)
    preprocessing = ImagePreprocessing(spacing=(1.5,) * 3, size=(16,) * 3, resize=False, crop_foreground=True)
    assert separable_maps(preprocess(preprocessing, [path]), np.eye(4), (30, 30, 30)) is None


def test_argmax_channels_is_argmax_with_ties_to_the_first():
    values = np.random.default_rng(0).integers(0, 3, size=(5, 20, 20, 20)).astype(np.float32)
    assert np.array_equal(argmax_channels(values), values.argmax(axis=0))
