"""MuFidelity against a per-sample, per-subset loop with scipy's correlations."""

import numpy as np
import pytest
import scipy.stats
import torch
from torch import Tensor

from lightning_xai.functional.mufidelity import (
    mufidelity,
    mufidelity_masks,
    pearson_correlation,
    spearman_correlation_or_zero,
)
from lightning_xai.functional.ranking import average_ranks
from tests.helpers.models import ResidualCNN


def test_correlations_match_scipy() -> None:
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(0, 5, (4, 30), generator=generator).float()  # many ties
    second = torch.randn(4, 30, generator=generator) + first
    for row in range(4):
        pearson = scipy.stats.pearsonr(first[row].numpy(), second[row].numpy())[0]
        spearman = scipy.stats.spearmanr(first[row].numpy(), second[row].numpy())[0]
        assert pearson_correlation(first, second)[row].item() == pytest.approx(pearson, abs=1e-6)
        assert spearman_correlation_or_zero(first, second)[row].item() == pytest.approx(spearman, abs=1e-6)
        np.testing.assert_allclose(average_ranks(first)[row].numpy(), scipy.stats.rankdata(first[row].numpy()))


def test_constant_series_give_zero_not_nan() -> None:
    constant, varying = torch.zeros(1, 5), torch.arange(5.0)[None]
    assert pearson_correlation(constant, varying).item() == 0.0
    assert spearman_correlation_or_zero(constant, varying).item() == 0.0


def _reference(
    model: torch.nn.Module, image: Tensor, saliency: Tensor, target: int, masks: Tensor, grid: int, correlation: str
) -> float:
    _, height, width = image.shape
    saliency = saliency.sum(0)
    with torch.no_grad():
        original = model(image[None])[0, target].item()
    attribution_sums, drops = [], []
    for mask in masks:
        perturbed = image.clone()
        total = 0.0
        for i in range(height):
            for j in range(width):
                if mask[(i * grid // height) * grid + j * grid // width]:
                    perturbed[:, i, j] = 0.0
                    total += saliency[i, j].item()
        with torch.no_grad():
            drops.append(original - model(perturbed[None])[0, target].item())
        attribution_sums.append(total)
    statistic = scipy.stats.pearsonr if correlation == "pearson" else scipy.stats.spearmanr
    value = statistic(attribution_sums, drops)[0]
    return 0.0 if np.isnan(value) else float(value)


@pytest.mark.parametrize("correlation", ["pearson", "spearman"])
def test_mufidelity_matches_per_subset_loop(correlation: str) -> None:
    generator = torch.Generator().manual_seed(1)
    model = ResidualCNN(in_channels=2, num_classes=3).eval()
    inputs = torch.randn(2, 2, 10, 9, generator=generator)
    maps = torch.randn(2, 2, 10, 9, generator=generator)
    target = torch.tensor([1, 2])
    settings = {"grid_size": 4, "subset_percent": 0.3, "n_samples": 12, "seed": 4}
    ours = mufidelity(model, inputs, maps, target, correlation=correlation, batch_size=7, **settings)
    masks = mufidelity_masks(12, 4, 0.3, seed=4)
    for b in range(2):
        expected = _reference(model, inputs[b], maps[b], int(target[b]), masks, 4, correlation)
        assert ours[b].item() == pytest.approx(expected, abs=1e-5)


def test_mufidelity_does_not_depend_on_the_chunk_size_and_is_seeded() -> None:
    model = ResidualCNN(in_channels=1, num_classes=3).eval()
    inputs, maps, target = torch.randn(3, 1, 6, 6), torch.rand(3, 1, 6, 6), torch.tensor([0, 1, 2])
    reference = mufidelity(model, inputs, maps, target, grid_size=3, n_samples=10, batch_size=100)
    assert torch.allclose(
        mufidelity(model, inputs, maps, target, grid_size=3, n_samples=10, batch_size=3), reference, atol=1e-5
    )
    other = mufidelity(model, inputs, maps, target, grid_size=3, n_samples=10, seed=1)
    assert not torch.allclose(other, reference)


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"n_samples": 1}, "n_samples"),
        ({"subset_percent": 0.0}, "subset_percent"),
        ({"correlation": "kendall"}, "correlation"),
        ({"grid_size": 0}, "grid_size"),
    ],
)
def test_bad_arguments_are_rejected(arguments: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mufidelity(torch.nn.Flatten(), torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), torch.tensor([0]), **arguments)
