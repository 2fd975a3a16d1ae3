from __future__ import annotations

import pytest
import torch

from lightning_xai.functional.peppr import peppr
from lightning_xai.metrics.peppr import PEPPR
from tests.helpers.models import RegionModel, ResidualCNN, region_mask
from tests.unit.functional.test_peppr import small_classifier


def test_accumulated_updates_equal_one_batch(device: torch.device) -> None:
    generator = torch.Generator().manual_seed(0)
    model = small_classifier(36, 3).to(device)
    inputs = torch.randn(9, 1, 6, 6, generator=generator)
    labels = torch.randint(0, 3, (9,), generator=generator)
    global_map = torch.rand(3, 1, 6, 6, generator=generator)
    metric = PEPPR(global_map, steps=6, batch_size=10, seed=2).to(device)
    for chunk, chunk_labels in zip(inputs.split(4), labels.split(4), strict=True):
        metric.update(model, chunk.to(device), chunk_labels.to(device))
    expected = peppr(model, inputs.to(device), labels.to(device), global_map.to(device), steps=6, batch_size=50, seed=2)
    result = metric.compute()
    assert set(result) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(result[key], value, atol=1e-5, rtol=1e-5)


def test_state_memory_is_independent_of_the_number_of_samples() -> None:
    model = RegionModel(num_classes=3)
    metric = PEPPR(region_mask(), steps=8, batch_size=256)
    generator = torch.Generator().manual_seed(1)
    for _ in range(6):
        inputs = torch.randn(8, 1, 16, 16, generator=generator)
        metric.update(model, inputs, torch.randint(0, 3, (8,), generator=generator))
    assert metric.curve_sums.numel() == 2 * 2 * 2 * 9 and metric.count.numel() == 1
    assert float(metric.count) == 48


def test_region_model_summary_and_curves() -> None:
    generator = torch.Generator().manual_seed(2)
    model = RegionModel(num_classes=3)
    inputs = 4 * torch.randn(16, 1, 16, 16, generator=generator)
    metric = PEPPR(region_mask(), steps=8)
    metric.update(model, inputs, model(inputs).argmax(dim=1))
    summary = metric.summary()
    assert summary["erasing_auc"] < summary["random_erasing_auc"]
    assert summary["restoration_auc"] > summary["random_restoration_auc"]
    assert all(value.ndim == 0 for value in summary.values()) and "peppr" in summary and "random_peppr" in summary
    curves = metric.curves()
    assert set(curves) == {"erasing", "restoration", "random_erasing", "random_restoration"}
    fractions, curve = curves["erasing"]
    assert fractions[0] == 0 and fractions[-1] == 1 and curve.shape == (9,)


def test_model_is_left_as_found() -> None:
    model = ResidualCNN(in_channels=1, num_classes=2, width=4).train()
    metric = PEPPR(torch.rand(4, 4), steps=2)
    inputs = torch.randn(2, 1, 4, 4)
    state = torch.get_rng_state()
    metric.update(model, inputs, torch.tensor([0, 1]))
    assert model.training and all(
        parameter.requires_grad and parameter.grad is None for parameter in model.parameters()
    )
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.filterwarnings("ignore:.*was called before the ``update``")
def test_errors() -> None:
    with pytest.raises(ValueError, match="`global_map`"):
        PEPPR(torch.rand(3, 4, 4))
    with pytest.raises(ValueError, match="`steps`"):
        PEPPR(torch.rand(4, 4), steps=0)
    with pytest.raises(TypeError, match="`baseline`"):
        PEPPR(torch.rand(4, 4), baseline="black")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="before any update"):
        PEPPR(torch.rand(4, 4)).compute()
    metric = PEPPR(torch.rand(4, 4))
    with pytest.raises(ValueError, match=r"spatial size \(4, 4\)"):
        metric.update(ResidualCNN(in_channels=1), torch.randn(2, 1, 5, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"`labels` must have shape \(B,\)"):
        metric.update(ResidualCNN(in_channels=1), torch.randn(2, 1, 4, 4), torch.tensor([0]))
