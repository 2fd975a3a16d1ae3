"""Perturbation curves: rank pixels by attribution, replace them step by step, score every step in chunks.

The engine behind deletion, insertion, MIF and LIF. Every ``(sample, step)`` perturbed image is a masked blend
``where(rank < count[step], replacement, start)`` built on the device inside the chunk that scores it, so peak
memory depends on ``batch_size`` and not on ``steps x B``, and there is no Python loop over samples or steps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_xai._scoring import ChunkSize, score_in_chunks
from lightning_xai._targets import ScoreKind
from lightning_xai._typing import TargetType
from lightning_xai.functional._common import chunk_scores, flat_saliency
from lightning_xai.functional.ranking import rank_positions


def pixel_ranks(attributions: Tensor, *, descending: bool = True) -> Tensor:
    """Rank of every pixel by its attribution summed over channels, shape ``(B, H * W)``, 0 = first removed.

    Clip maps ``(B, 1|C, T, H, W)`` rank voxels, ``(B, T * H * W)`` (flat index frame-major).

    Ties are broken deterministically by a stable sort: among equal values the lower flat pixel index
    (row-major) comes first, in either direction. An all-constant map therefore ranks pixels in reading order.

    Args:
        attributions: ``(B, 1, H, W)`` or ``(B, C, H, W)``.
        descending: most important first (deletion, insertion, MIF, MoRF) when True; least important first (LIF).

    Example:
        >>> a = torch.tensor([[[[0.1, 0.9], [0.5, 0.5]]]])
        >>> pixel_ranks(a).tolist()
        [[3, 0, 1, 2]]
    """
    return rank_positions(flat_saliency(attributions), descending=descending)


def step_counts(num_pixels: int, steps: int, device: torch.device | str = "cpu") -> Tensor:
    """Pixels perturbed at each of the ``steps + 1`` points ``k / steps`` (rounded to the nearest pixel).

    Example:
        >>> step_counts(10, 4).tolist()
        [0, 3, 5, 8, 10]
    """
    fractions = torch.arange(steps + 1, device=device) * num_pixels
    return torch.div(2 * fractions + steps, 2 * steps, rounding_mode="floor")


def curve_x(steps: int, device: torch.device | str = "cpu") -> Tensor:
    """The perturbed fractions ``k / steps``, ``k = 0..steps``: the x-axis of every curve, in ``[0, 1]``."""
    return torch.linspace(0.0, 1.0, steps + 1, device=device)


def curve_auc(curves: Tensor) -> Tensor:
    """Area under curves ``(B, K)`` sampled at ``K`` equally spaced points on ``[0, 1]`` (trapezoid rule), ``(B,)``.

    This is RISE's ``auc(arr) = (arr.sum() - arr[0] / 2 - arr[-1] / 2) / (len(arr) - 1)``.

    Example:
        >>> curve_auc(torch.tensor([[1.0, 0.5, 0.0]])).tolist()
        [0.5]
    """
    if curves.shape[-1] < 2:
        raise ValueError(f"A curve needs at least 2 points to have an area, got {curves.shape[-1]}.")
    return torch.trapezoid(curves, dx=1.0 / (curves.shape[-1] - 1), dim=-1)


def perturbed_chunk(start: Tensor, replacement: Tensor, ranks: Tensor, counts: Tensor, first: int, stop: int) -> Tensor:
    """Images ``first:stop`` of the sample-major grid of (sample ``i``, point ``k``) perturbed images.

    Image ``(i, k)`` is ``where(ranks[i] < counts[k], replacement[i], start[i])``: the ``counts[k]`` pixels of
    lowest rank come from ``replacement`` (all channels together), the others from ``start``.

    Args:
        start: ``(B, C, H, W)`` (or clips ``(B, C, T, H, W)``).
        replacement: ``(B, C, H, W)`` (an expanded view is fine).
        ranks: ``(B, H * W)`` rank positions (``(B, T * H * W)`` for clips), 0 = first perturbed.
        counts: ``(K,)`` pixels perturbed at each point, on the images' device.
        first: first flat index ``i * K + k`` of the chunk.
        stop: one past its last.

    Returns:
        ``(stop - first, C, H, W)``.

    Example:
        >>> start, replacement = torch.zeros(1, 1, 1, 2), torch.ones(1, 1, 1, 2)
        >>> perturbed_chunk(start, replacement, torch.tensor([[1, 0]]), torch.tensor([0, 1, 2]), 0, 3).flatten(1)
        tensor([[0., 0.],
                [0., 1.],
                [1., 1.]])
    """
    items = torch.arange(first, stop, device=start.device)
    rows, columns = items // counts.shape[0], items % counts.shape[0]
    perturbed = (ranks[rows] < counts[columns, None]).view(-1, 1, *start.shape[2:])
    return torch.where(perturbed, replacement[rows], start[rows])


def shared_baseline(baseline: object) -> bool:
    """Whether :func:`~lightning_xai.functional.baselines.make_baseline` gives every sample the same image.

    True for a number and for ``"noise"`` (one image shared by the batch): the fully perturbed image is then
    forwarded once per batch instead of once per sample, with the same score.
    """
    if isinstance(baseline, bool):
        return False
    return isinstance(baseline, (int, float)) or (isinstance(baseline, str) and baseline == "noise")


def _shared_image_scores(model: nn.Module, image: Tensor, target: TargetType, batch: int, score: ScoreKind) -> Tensor:
    """Scores ``(batch,)`` of one image that every sample shares (a constant baseline): one forward, not ``batch``."""
    outputs = model(image[:1])
    if not isinstance(outputs, Tensor):  # let the ordinary path raise or handle it
        return chunk_scores(
            model, image.expand(batch, *image.shape[1:]), target, torch.arange(batch, device=image.device), score
        )
    expanded = outputs.expand(batch, *outputs.shape[1:])
    rows = torch.arange(batch, device=image.device)
    return chunk_scores(lambda _: expanded, image, target, rows, score)  # type: ignore[arg-type]


def perturbation_curves(
    model: nn.Module,
    start: Tensor,
    replacement: Tensor,
    ranks: Tensor,
    counts: Tensor,
    target: TargetType,
    *,
    score: ScoreKind = "probability",
    batch_size: ChunkSize = "auto",
    known: dict[int, Tensor] | None = None,
    shared_start: bool = False,
    shared_replacement: bool = False,
) -> Tensor:
    """Score ``where(ranks < counts[k], replacement, start)`` for every sample and every count, in chunks.

    Deletion is ``start = inputs, replacement = baseline``; insertion is ``start = baseline,
    replacement = inputs``. Runs under ``torch.no_grad()``; the model is called as it is (eval mode is the
    caller's business, see :func:`~lightning_xai._model_state.explanation_mode`).

    Args:
        model: the classifier.
        start: the images before any step, ``(B, C, H, W)``.
        replacement: what a perturbed pixel becomes (all channels together), ``(B, C, H, W)``.
        ranks: :func:`pixel_ranks`, ``(B, H * W)``.
        counts: pixels perturbed at each point, ``(K,)``.
        target: class indices ``(B,)`` or a row-wise callable ``(outputs) -> scores``.
        score: ``"probability"`` (softmax), ``"logit"`` or ``"log_probability"`` of the target class.
        batch_size: perturbed images per forward pass, or ``"auto"`` (see :mod:`lightning_xai._scoring`).
        known: scores ``(B,)`` of points already scored elsewhere (MIF and LIF share both end points), by
            point index; they are not forwarded again.
        shared_start: every sample's ``start`` is the same image (a constant or noise baseline): a point with
            no pixel perturbed is forwarded once for the whole batch.
        shared_replacement: the same for ``replacement`` and a point with every pixel perturbed.

    Returns:
        float32 scores ``(B, K)``.
    """
    batch = start.shape[0]
    points = counts.shape[0]
    counts = counts.to(start.device)
    pixels = ranks.shape[1]
    known = dict(known or {})
    for index, count in enumerate(counts.tolist()):
        if index in known:
            continue
        if count == 0 and shared_start:
            known[index] = _shared_image_scores(model, start, target, batch, score)
        elif count >= pixels and shared_replacement:
            known[index] = _shared_image_scores(model, replacement, target, batch, score)
    todo = [index for index in range(points) if index not in known]
    curves = torch.empty(batch, points, device=start.device, dtype=torch.float32)
    for index, values in known.items():
        curves[:, index] = values.to(curves.device, torch.float32)
    if not todo:
        return curves
    todo_counts = counts[todo]
    width = len(todo)

    def make_inputs(first: int, stop: int) -> Tensor:
        return perturbed_chunk(start, replacement, ranks, todo_counts, first, stop)

    def forward(chunk: Tensor, first: int, stop: int) -> Tensor:
        rows = torch.arange(first, stop, device=start.device) // width
        return chunk_scores(model, chunk, target, rows, score, first=first == 0 and not known)

    scored = score_in_chunks(forward, make_inputs, batch * width, batch_size, model=model, like=start)
    curves[:, todo] = scored.view(batch, width)
    return curves
