"""Chunked scoring of perturbed inputs: the hot loop shared by perturbation metrics and black-box explainers."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def score_in_chunks(
    forward: Callable[[Tensor, int, int], Tensor],
    make_inputs: Callable[[int, int], Tensor],
    total: int,
    batch_size: int,
) -> Tensor:
    """Build and score ``total`` perturbed inputs, ``batch_size`` at a time, under ``torch.no_grad()``.

    Only one chunk of perturbed inputs exists at any time, so peak memory is bounded by ``batch_size``
    and not by ``total``.

    Args:
        forward: ``forward(chunk, start, stop)`` returning the scores of inputs ``start:stop``, shape
            ``(stop - start, ...)``.
        make_inputs: ``make_inputs(start, stop)`` building inputs ``start:stop`` on the device.
        total: how many inputs to score.
        batch_size: the chunk size.

    Returns:
        The concatenated scores, shape ``(total, ...)``.

    Example:
        >>> import torch
        >>> x = torch.arange(10.0)
        >>> score_in_chunks(lambda chunk, a, b: chunk * 2, lambda a, b: x[a:b], total=10, batch_size=3)
        tensor([ 0.,  2.,  4.,  6.,  8., 10., 12., 14., 16., 18.])
    """
    outputs = []
    with torch.no_grad():
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            outputs.append(forward(make_inputs(start, stop), start, stop))
    return torch.cat(outputs, dim=0)
