from __future__ import annotations

import math

import pytest
import torch

from lightning_xai.metrics.relevance_mass import RelevanceMass


def test_shared_region_by_hand(device: torch.device) -> None:
    region = torch.zeros(3, 3)
    region[0, :] = 1  # "the mass must lie in the top row"
    metric = RelevanceMass(region).to(device)
    first = torch.tensor([[2.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 4 / 5 inside, peak inside
    second = torch.tensor([[0.0, 1.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.0]])  # 1 / 4 inside, peak outside
    metric.update(torch.stack([first, second]).unsqueeze(1).to(device))
    assert metric.compute().item() == pytest.approx((0.8 + 0.25) / 2)
    summary = metric.summary()
    assert summary["relevance_mass_stderr"].item() == pytest.approx(abs(0.8 - 0.25) / 2)  # std of 2 values / sqrt(2)
    assert summary["pointing_game"].item() == 0.5
    assert metric.per_sample().tolist() == pytest.approx([0.8, 0.25])
    low, high = metric.confidence_interval(0.95)
    assert low.item() == pytest.approx(0.525 - 1.959964 * 0.275, rel=1e-5) and high.item() > 0.525


def test_per_label_regions_are_picked_by_labels() -> None:
    regions = torch.zeros(2, 2, 2)
    regions[0, 0, 0] = 1
    regions[1, 1, 1] = 1
    maps = torch.tensor([[3.0, 1.0], [0.0, 0.0]]).expand(3, 1, 2, 2)  # 3/4 at (0, 0), nothing at (1, 1)
    metric = RelevanceMass(regions)
    metric.update(maps, labels=torch.tensor([0, 1, 0]))
    assert metric.per_sample().tolist() == pytest.approx([0.75, 0.0, 0.75])
    assert metric.summary()["pointing_game"].item() == pytest.approx(2 / 3)


def test_masks_override_the_region_and_work_without_one() -> None:
    maps = torch.tensor([[3.0, 1.0], [0.0, 0.0]]).expand(2, 1, 2, 2).contiguous()
    masks = torch.tensor([[[0, 1], [0, 0]], [[1, 1], [0, 0]]])
    metric = RelevanceMass()
    metric.update(maps, masks=masks)
    assert metric.per_sample().tolist() == pytest.approx([0.25, 1.0])
    assert metric.summary()["pointing_game"].item() == 0.5
    with_region = RelevanceMass(torch.ones(2, 2))
    with_region.update(maps, masks=masks)
    assert with_region.per_sample().tolist() == pytest.approx([0.25, 1.0])


def test_per_sample_state_grows_and_single_sample_has_zero_error() -> None:
    metric = RelevanceMass(torch.ones(2, 2), relevance="positive")
    metric.update(torch.rand(1, 1, 2, 2))
    assert metric.summary()["relevance_mass_stderr"].item() == 0.0
    for _ in range(4):
        metric.update(torch.rand(5, 1, 2, 2))
    assert metric.per_sample().shape == (21,) and math.isclose(metric.compute().item(), 1.0, rel_tol=1e-6)


@pytest.mark.filterwarnings("ignore:.*was called before the ``update``")
def test_errors() -> None:
    with pytest.raises(ValueError, match="`region` must hold only 0 and 1"):
        RelevanceMass(torch.full((4, 4), 2.0))
    with pytest.raises(ValueError, match=r"`region` must have shape \(H, W\) or \(N, H, W\)"):
        RelevanceMass(torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match="`relevance` must be one of"):
        RelevanceMass(torch.ones(4, 4), relevance="abs")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`region` has spatial size \(4, 4\).*\(5, 5\)"):
        RelevanceMass(torch.ones(4, 4)).update(torch.rand(2, 1, 5, 5))
    with pytest.raises(ValueError, match="needs `labels`"):
        RelevanceMass(torch.ones(3, 4, 4)).update(torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"`labels`.*\[3\]"):
        RelevanceMass(torch.ones(3, 4, 4)).update(torch.rand(2, 1, 4, 4), labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="needs `masks`"):
        RelevanceMass().update(torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"`masks` must have the maps' spatial size"):
        RelevanceMass().update(torch.rand(2, 1, 4, 4), masks=torch.ones(2, 3, 3))
    with pytest.raises(RuntimeError, match="before any update"):
        RelevanceMass(torch.ones(4, 4)).compute()
