"""Z-scores over non-zero voxels: MONAI's NormalizeIntensityd(nonzero, channel_wise) values, faster."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import NormalizeIntensityd

from neurodl.data.intensity import NormalizeNonzerod


def test_same_values_as_monai_for_every_kind_of_channel():
    rng = np.random.default_rng(0)
    image = rng.normal(80, 30, size=(4, 20, 24, 18)).astype(np.float32)
    image[:, :5] = 0  # air
    image[1] = 0  # an empty channel stays empty
    image[2, 5:] = 7.0  # a constant head: deviation 0, taken as 1
    image[3, 10:12] = -5  # negative voxels count as non-zero
    volume = MetaTensor(torch.from_numpy(image), affine=torch.diag(torch.tensor([1.5, 1.5, 1.5, 1.0])))
    ours = NormalizeNonzerod("image")({"image": volume.clone()})["image"]
    theirs = NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)({"image": volume.clone()})[
        "image"
    ]
    assert ours.dtype == torch.float32 and isinstance(ours, MetaTensor)
    assert torch.allclose(ours.affine, volume.affine)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=2e-6)
    assert torch.equal(volume.as_tensor(), torch.from_numpy(image))  # the input is left as it was
