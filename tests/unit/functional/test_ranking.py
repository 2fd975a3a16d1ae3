from __future__ import annotations

import numpy as np
import torch
from scipy import stats

from lightning_xai.functional.ranking import average_ranks, spearman_correlation


def test_average_ranks_match_scipy_with_ties() -> None:
    generator = torch.Generator().manual_seed(0)
    values = torch.randint(0, 5, (4, 30), generator=generator).float()  # many ties
    expected = np.stack([stats.rankdata(row) for row in values.numpy()])
    np.testing.assert_allclose(average_ranks(values).numpy(), expected)


def test_spearman_matches_scipy_including_ties_and_constant_rows() -> None:
    generator = torch.Generator().manual_seed(1)
    first = torch.relu(torch.randn(5, 40, generator=generator))  # zeros tie, as ReLU activations do
    second = torch.relu(torch.randn(5, 40, generator=generator) + first)
    expected = [stats.spearmanr(a, b).statistic for a, b in zip(first.numpy(), second.numpy(), strict=True)]
    np.testing.assert_allclose(spearman_correlation(first, second).numpy(), expected, rtol=1e-5, atol=1e-6)
    constant = spearman_correlation(torch.ones(1, 5), torch.arange(5.0)[None])
    assert bool(torch.isnan(constant).all())
