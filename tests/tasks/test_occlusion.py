"""Occlusion maps: a mask and stride chosen from the input size, so one image takes hundreds of passes, not thousands."""

from __future__ import annotations

import pytest
import torch

from neurodl.tasks.classify import occlusion_settings


class CountingModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.images = 0
        self.linear = torch.nn.Linear(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.linear(x.mean(dim=(1, 2, 3, 4))[:, None])


@pytest.mark.parametrize("shape", [(48, 48, 48), (32, 40, 24), (56, 64, 40)])
def test_one_image_needs_a_few_hundred_forward_passes_at_any_size(shape):
    from monai.visualize import OcclusionSensitivity

    settings = occlusion_settings(shape)
    model = CountingModel()
    occlusion = OcclusionSensitivity(model, verbose=False, activate=False, **settings)
    with torch.no_grad():
        heat, _ = occlusion(torch.randn(1, 1, *shape))

    assert heat.shape[2:] == shape
    assert model.images <= 400  # MONAI's defaults as used before: 3,375 at 48^3
    assert settings["n_batch"] > 1  # occluded copies go through the network in batches
