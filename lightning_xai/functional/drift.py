"""Spearman rank correlation between maps: how much an explanation changed from one epoch to the next."""

from __future__ import annotations

from torch import Tensor

from lightning_xai.functional.ranking import spearman_correlation


def map_rows(maps: Tensor, name: str = "maps") -> Tensor:
    """Flatten maps to one row per map.

    ``(N, C, H, W)`` (or clip maps ``(N, C, T, H, W)``) gives ``N`` rows; one map ``(1, H, W)`` or ``(H, W)`` gives
    one row.

    Example:
        >>> import torch
        >>> map_rows(torch.zeros(3, 1, 4, 4)).shape, map_rows(torch.zeros(1, 4, 4)).shape
        (torch.Size([3, 16]), torch.Size([1, 16]))
    """
    if not isinstance(maps, Tensor) or maps.ndim not in (2, 3, 4, 5) or maps.numel() == 0:
        got = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(
            f"`{name}` must be per-sample or per-label maps (N, 1, H, W) or one map (1, H, W) or (H, W), got {got}."
        )
    return maps.flatten(1) if maps.ndim >= 4 else maps.reshape(1, -1)


def explanation_drift(current: Tensor, previous: Tensor) -> Tensor:
    """Spearman correlation ``(N,)`` between each current map and the previous map at the same position.

    Args:
        current: ``(N, 1, H, W)`` (a fixed probe's per-sample maps, or per-label global maps), ``(1, H, W)`` or
            ``(H, W)`` (one global map).
        previous: the same shape, from the previous epoch.

    Returns:
        ``(N,)`` float64: 1 means the pixel ranking did not change; NaN where a map is constant (no ranking).

    Example:
        >>> import torch
        >>> previous = torch.arange(8.0).view(2, 1, 2, 2)
        >>> explanation_drift(previous.flip(-1), previous)
        tensor([0.6000, 0.6000], dtype=torch.float64)
    """
    if not isinstance(previous, Tensor) or not isinstance(current, Tensor) or previous.shape != current.shape:
        got = tuple(previous.shape) if isinstance(previous, Tensor) else type(previous).__name__
        now = tuple(current.shape) if isinstance(current, Tensor) else type(current).__name__
        raise ValueError(f"The maps must keep their shape from one epoch to the next: previous {got}, current {now}.")
    return spearman_correlation(map_rows(current, "current"), map_rows(previous, "previous"))
