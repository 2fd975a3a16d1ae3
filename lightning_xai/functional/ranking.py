"""Ranks and rank correlation, row by row: the shared core of drift, MuFidelity and activation similarity."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_xai._checks import check_finite


def rank_positions(values: Tensor, descending: bool = True) -> Tensor:
    """Position ``0..D-1`` of every entry of each row of ``(N, D)`` values in the row's order (0 = first).

    Ties are broken by a stable sort: among equal values the lower index comes first, in either direction.

    Example:
        >>> rank_positions(torch.tensor([[0.1, 0.9, 0.5, 0.5]]))
        tensor([[3, 0, 1, 2]])
    """
    order = torch.argsort(values, dim=1, descending=descending, stable=True)
    positions = torch.arange(values.shape[1], device=values.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def average_ranks(values: Tensor) -> Tensor:
    """Ranks ``1..D`` of each row of ``values`` ``(N, D)``, tied values sharing their average rank, float64.

    Example:
        >>> import torch
        >>> average_ranks(torch.tensor([[10.0, 30.0, 20.0, 20.0]]))
        tensor([[1.0000, 4.0000, 2.5000, 2.5000]], dtype=torch.float64)
    """
    rows, width = values.shape
    sorted_values, order = values.sort(dim=1, stable=True)
    starts = torch.ones_like(sorted_values, dtype=torch.bool)
    starts[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    group = starts.long().cumsum(dim=1) - 1  # tie group of each sorted entry, 0.. per row
    positions = torch.arange(1, width + 1, dtype=torch.float64, device=values.device).expand(rows, width)
    group_sums = torch.zeros(rows, width, dtype=torch.float64, device=values.device).scatter_add_(1, group, positions)
    group_sizes = torch.zeros_like(group_sums).scatter_add_(1, group, torch.ones_like(positions))
    averaged = group_sums.gather(1, group) / group_sizes.gather(1, group)
    return torch.empty_like(averaged).scatter_(1, order, averaged)


def spearman_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of ``a`` and ``b``, row by row, with average ranks for ties.

    It is the Pearson correlation of the rows' ranks, as ``scipy.stats.spearmanr``. A row whose values are all
    equal has no ranking: its correlation is undefined and returned as NaN, as scipy does.

    Args:
        a: ``(D,)`` or ``(N, D)``, finite.
        b: the same shape as ``a``.

    Returns:
        A scalar for ``(D,)`` inputs, ``(N,)`` otherwise, float64 in ``[-1, 1]``; 1 means the same order.

    Example:
        >>> import torch
        >>> spearman_correlation(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 20.0, 40.0, 30.0]))
        tensor(0.8000, dtype=torch.float64)
    """
    for name, value in (("a", a), ("b", b)):
        if not isinstance(value, Tensor) or value.ndim not in (1, 2) or value.shape[-1] < 2:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"`{name}` must be a tensor of shape (D,) or (N, D) with D >= 2, got {got}.")
        check_finite(value, name)
    if a.shape != b.shape:
        raise ValueError(f"`a` and `b` must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
    rows_a, rows_b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]).to(a.device)
    ranks_a = average_ranks(rows_a)
    ranks_b = average_ranks(rows_b)
    centred_a = ranks_a - ranks_a.mean(dim=1, keepdim=True)
    centred_b = ranks_b - ranks_b.mean(dim=1, keepdim=True)
    numerator = (centred_a * centred_b).sum(dim=1)
    denominator = (centred_a.square().sum(dim=1) * centred_b.square().sum(dim=1)).sqrt()
    nan = torch.full_like(numerator, float("nan"))
    correlation = torch.where(denominator > 0, numerator / denominator.clamp(min=1e-300), nan).clamp(-1.0, 1.0)
    return correlation[0] if a.ndim == 1 else correlation
