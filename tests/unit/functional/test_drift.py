from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import rankdata, spearmanr

from lightning_xai.functional.drift import explanation_drift
from lightning_xai.functional.ranking import average_ranks, spearman_correlation


def test_average_ranks_match_scipy() -> None:
    generator = torch.Generator().manual_seed(0)
    values = torch.randint(0, 5, (6, 30), generator=generator).float()  # many ties
    expected = np.stack([rankdata(row, method="average") for row in values.numpy()])
    np.testing.assert_allclose(average_ranks(values).numpy(), expected)


@pytest.mark.parametrize("ties", [False, True])
def test_rows_match_scipy_spearmanr(device: torch.device, ties: bool) -> None:
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(8, 40, generator=generator)
    b = a + torch.randn(8, 40, generator=generator) * torch.linspace(0.1, 3, 8).view(-1, 1)
    if ties:
        a, b = a.round(), (b * 2).round()
    result = spearman_correlation(a.to(device), b.to(device)).cpu()
    expected = [spearmanr(row_a, row_b).statistic for row_a, row_b in zip(a.numpy(), b.numpy(), strict=True)]
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-10, atol=1e-12)
    single = spearman_correlation(a[0], b[0])
    assert single.ndim == 0 and single.item() == pytest.approx(expected[0], abs=1e-12)


def test_constant_row_is_nan_like_scipy() -> None:
    a = torch.tensor([[1.0, 1.0, 1.0], [1.0, 2.0, 3.0]])
    b = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    result = spearman_correlation(a, b)
    assert math.isnan(result[0].item()) and result[1].item() == pytest.approx(-1.0)
    with pytest.warns(Warning):  # scipy warns about the constant input and returns NaN too
        assert math.isnan(spearmanr(a[0].numpy(), b[0].numpy()).statistic)


def test_explanation_drift_per_map() -> None:
    generator = torch.Generator().manual_seed(2)
    previous = torch.rand(4, 1, 5, 5, generator=generator)
    current = previous + 0.3 * torch.rand(4, 1, 5, 5, generator=generator)
    expected = [
        spearmanr(p.flatten().numpy(), c.flatten().numpy()).statistic for p, c in zip(previous, current, strict=True)
    ]
    np.testing.assert_allclose(explanation_drift(current, previous).numpy(), expected, rtol=1e-10)
    assert explanation_drift(previous[0], previous[0]).tolist() == [pytest.approx(1.0)]  # (1, H, W): one map


def test_errors() -> None:
    with pytest.raises(ValueError, match="same shape"):
        spearman_correlation(torch.rand(3, 4), torch.rand(3, 5))
    with pytest.raises(ValueError, match=r"`a` must be a tensor of shape \(D,\) or \(N, D\)"):
        spearman_correlation(torch.rand(2, 3, 4), torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match="non-finite"):
        spearman_correlation(torch.tensor([1.0, float("nan")]), torch.rand(2))
    with pytest.raises(ValueError, match="keep their shape"):
        explanation_drift(torch.rand(2, 1, 4, 4), torch.rand(3, 1, 4, 4))
