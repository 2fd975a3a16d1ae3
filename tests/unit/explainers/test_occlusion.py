"""Occlusion against Captum called directly and known answers on RegionModel."""

from __future__ import annotations

import captum.attr
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_xai.explainers import Occlusion
from tests.helpers.models import RegionModel, ResidualCNN, region_mask


def test_occlusion_matches_captum(device: torch.device) -> None:
    model = ResidualCNN().eval().to(device)
    inputs, target = torch.randn(3, 3, 10, 10, device=device), torch.tensor([0, 3, 1], device=device)
    reference = captum.attr.Occlusion(model).attribute(
        inputs.clone(), sliding_window_shapes=(3, 4, 3), strides=(3, 3, 2), baselines=0.25, target=target
    )
    assert torch.equal(reference, reference[:, :1].expand_as(reference))  # a window over all channels
    maps = Occlusion(window=(4, 3), stride=(3, 2), baseline=0.25)(model, inputs, target)
    assert maps.shape == (3, 1, 10, 10) and maps.dtype == torch.float32 and maps.device == inputs.device
    torch.testing.assert_close(maps, reference[:, :1])
    chunked = Occlusion(window=[4, 3], stride=[3, 2], baseline=0.25, internal_batch_size=7)(model, inputs, target)
    torch.testing.assert_close(chunked, reference[:, :1])


def test_occlusion_region_model(device: torch.device) -> None:
    """The evidence lies in the region: the map peaks there and is exactly zero where no window touches it."""
    model = RegionModel(num_classes=3).to(device)
    mask = region_mask().to(device).bool()
    inputs = torch.rand(4, 1, 16, 16, device=device) + 0.5
    target = torch.tensor([2, 2, 0, 2], device=device)
    maps = Occlusion(window=3, stride=1, internal_batch_size=4 * 49)(model, inputs, target)
    positive = maps[target == 2, 0]
    peaks = positive.flatten(1).argmax(dim=1)
    assert bool(mask.flatten()[peaks].all())
    far = F.max_pool2d(mask[None, None].float(), kernel_size=5, stride=1, padding=2)[0, 0] == 0
    assert bool((maps[:, 0][:, far] == 0).all())
    # Class 0's slope is negative: hiding the region raises its score, the map is negative there.
    assert float(maps[target == 0, 0][:, mask].max()) < 0


def test_occlusion_callable_target_known_answer() -> None:
    """One window covering the image: every pixel gets S(x) - S(baseline image)."""
    model = ResidualCNN().eval()
    inputs = torch.randn(3, 3, 6, 6)
    reference = torch.tensor([0.5, -1.0, 2.0, 0.0])

    def target(outputs: Tensor) -> Tensor:
        return F.cosine_similarity(outputs, reference[None], dim=1)

    maps = Occlusion(window=6, stride=1, baseline=0.1, internal_batch_size=9)(model, inputs, target)
    with torch.no_grad():
        drop = target(model(inputs)) - target(model(torch.full_like(inputs, 0.1)))
    torch.testing.assert_close(maps, drop.view(3, 1, 1, 1).expand(3, 1, 6, 6))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"window": 0}, ValueError, "window"),
        ({"window": 2.5}, TypeError, "window"),
        ({"window": (2,)}, ValueError, "window"),
        ({"window": (2, 0)}, ValueError, "window"),
        ({"stride": 0}, ValueError, "stride"),
        ({"baseline": float("nan")}, ValueError, "baseline"),
        ({"internal_batch_size": 0}, ValueError, "internal_batch_size"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Occlusion(**kwargs)


def test_window_larger_than_image() -> None:
    with pytest.raises(ValueError, match=r"`window` \(8, 8\) is larger than the images \(6, 6\)"):
        Occlusion(window=8)(ResidualCNN(), torch.randn(1, 3, 6, 6), torch.tensor([0]))


def test_occlusion_runs_without_autograd() -> None:
    model, inputs, target = ResidualCNN(), torch.randn(2, 3, 6, 6), torch.tensor([1, 2])
    assert Occlusion.needs_grad is False
    with torch.inference_mode():
        maps = Occlusion(window=2, stride=2)(model, inputs, target)
    assert maps.shape == (2, 1, 6, 6) and not maps.requires_grad
