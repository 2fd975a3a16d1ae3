"""What the curve metrics add to the contract: mean curves, the MIF/LIF interval and guard, ROAD's summary."""

import math
import warnings

import pytest
import torch

from lightning_xai.functional.deletion_insertion import deletion_curve, insertion_curve
from lightning_xai.functional.mif_lif import mif_lif_curves
from lightning_xai.functional.road import road_curves
from lightning_xai.metrics import ROAD, DeletionAUC, InsertionAUC, MIFLIFFidelity
from tests.helpers.models import ResidualCNN


@pytest.fixture
def case() -> tuple:
    generator = torch.Generator().manual_seed(0)
    model = ResidualCNN(in_channels=1, num_classes=3).eval()
    inputs = torch.randn(5, 1, 6, 6, generator=generator)
    maps = torch.randn(5, 1, 6, 6, generator=generator)
    return model, inputs, maps, torch.tensor([0, 1, 2, 0, 1])


@pytest.mark.parametrize(
    ("factory", "build", "label"),
    [(DeletionAUC, deletion_curve, "deletion"), (InsertionAUC, insertion_curve, "insertion")],
)
def test_mean_curve_and_interval(case: tuple, factory: type, build: object, label: str) -> None:
    model, inputs, maps, target = case
    metric = factory(steps=4, batch_size=7)
    metric.update(model, inputs[:2], maps[:2], target[:2])
    metric.update(model, inputs[2:], maps[2:], target[2:])
    curves = build(model, inputs, maps, target, steps=4)
    x, y = metric.curves()[label]
    assert torch.allclose(x, torch.linspace(0, 1, 5))
    assert torch.allclose(y, curves.mean(0), atol=1e-6)
    aucs = torch.trapezoid(curves, x, dim=1)
    assert torch.allclose(metric.per_sample(), aucs, atol=1e-6)
    low, high = metric.confidence_interval(0.95)
    half = 1.959964 * aucs.std() / math.sqrt(5)
    assert low.item() == pytest.approx((aucs.mean() - half).item(), abs=1e-5)
    assert high.item() == pytest.approx((aucs.mean() + half).item(), abs=1e-5)


def test_mif_lif_summary_uses_the_reference_interval(case: tuple) -> None:
    model, inputs, maps, target = case
    metric = MIFLIFFidelity(steps=3)
    metric.update(model, inputs, maps, target)
    mif, lif = mif_lif_curves(model, inputs, maps, target, steps=3)
    x = torch.linspace(0, 1, 4)
    mif_auc = torch.trapezoid(mif / mif[:, :1], x, dim=1)
    lif_auc = torch.trapezoid(lif / lif[:, :1], x, dim=1)
    summary = metric.summary()
    assert summary["mif_lif_fidelity"].item() == pytest.approx((lif_auc.mean() - mif_auc.mean()).item(), abs=1e-6)
    assert summary["mif_auc"].item() == pytest.approx(mif_auc.mean().item(), abs=1e-6)
    assert summary["lif_auc"].item() == pytest.approx(lif_auc.mean().item(), abs=1e-6)
    expected_stderr = torch.sqrt(mif_auc.var() + lif_auc.var()) / math.sqrt(5)
    assert summary["mif_lif_fidelity_stderr"].item() == pytest.approx(expected_stderr.item(), abs=1e-6)
    assert summary["mif_lif_skipped"].item() == 0
    curves = metric.curves()
    assert torch.allclose(curves["mif"][1], (mif / mif[:, :1]).mean(0), atol=1e-6)
    assert curves["lif"][1][0].item() == pytest.approx(1.0)


def test_mif_lif_leaves_out_samples_it_cannot_normalise(case: tuple) -> None:
    model, inputs, maps, target = case
    metric = MIFLIFFidelity(steps=3, score="logit", eps=0.0)
    with torch.no_grad():
        logits = model(inputs).gather(1, target[:, None]).squeeze(1)
    with pytest.warns(UserWarning, match="left out samples"):
        metric.update(model, inputs, maps, target)
    summary = metric.summary()
    assert summary["mif_lif_skipped"].item() == int((logits <= 0).sum()) > 0
    assert metric.per_sample().numel() == int((logits > 0).sum())
    assert all(bool(torch.isfinite(value).all()) for value in summary.values())


def test_mif_lif_says_when_every_sample_was_left_out(case: tuple) -> None:
    model, inputs, maps, target = case
    metric = MIFLIFFidelity(steps=2, eps=1.0)  # no probability exceeds 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric.update(model, inputs, maps, target)
        with pytest.raises(RuntimeError, match="all 5 were left out"):
            metric.compute()


def test_road_summary_and_curves(case: tuple) -> None:
    model, inputs, maps, target = case
    metric = ROAD(percentages=[0.2, 0.6], noise=0.0)
    metric.update(model, inputs, maps, target)
    morf, lerf = road_curves(model, inputs, maps, target, percentages=[0.2, 0.6], noise=0.0)
    summary = metric.summary()
    assert summary["road"].item() == pytest.approx(((lerf - morf) / 2).mean().item(), abs=1e-6)
    assert summary["road_morf"].item() == pytest.approx(morf.mean().item(), abs=1e-6)
    assert summary["road_lerf"].item() == pytest.approx(lerf.mean().item(), abs=1e-6)
    curves = metric.curves()
    assert torch.allclose(curves["morf"][0], torch.tensor([0.2, 0.6]))
    assert torch.allclose(curves["lerf"][1], lerf.mean(0), atol=1e-6)
    assert ROAD.higher_is_better is True
