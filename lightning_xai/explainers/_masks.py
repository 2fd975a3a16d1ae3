"""Shared machinery of the black-box explainers: masks shared by a batch, scored in chunks; layer activations."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from lightning_xai._scoring import ChunkSize, score_in_chunks
from lightning_xai._targets import ScoreKind, repeat_target, take_rows, target_scores
from lightning_xai._typing import TargetType

#: ``make_masks(start, stop) -> (stop - start, 1, H, W)``: masks ``start:stop`` built on the inputs' device.
MaskMaker = Callable[[int, int], Tensor]
#: ``perturb(images, masks) -> (b, m, C, H, W)``: every image of ``images`` (b of the batch) under every mask.
Perturbation = Callable[[slice, Tensor], Tensor]
#: ``accumulate(images, scores, masks)``: called for each chunk with the image slice, the ``(b, m)`` scores
#: and the ``(m, 1, H, W)`` masks, so a saliency can be summed without keeping the masks.
Accumulator = Callable[[slice, Tensor, Tensor], None]


def check_grid_size(grid_size: int, height: int, width: int) -> None:
    """Raise unless a ``grid_size`` x ``grid_size`` grid fits an ``height`` x ``width`` image."""
    if grid_size > min(height, width):
        raise ValueError(
            f"`grid_size` must lie in [1, min(H, W)] = [1, {min(height, width)}] for images of size "
            f"{height}x{width}, got {grid_size}."
        )


def skimage_linear_weights(in_size: int, out_size: int, device: torch.device) -> Tensor:
    """``(out_size, in_size)`` linear-interpolation weights of skimage's ``resize(order=1, mode="reflect")``.

    Output pixel ``i`` samples the input at ``(i + 0.5) * in_size / out_size - 0.5``; outside the input the
    samples are mirrored without repeating the edge (``x[-1] = x[1]``, numpy's ``"reflect"``), which
    ``F.interpolate`` (it clamps) does not do.
    """
    # Built on the CPU in float64 (exact for any image size, and some accelerators lack float64), then moved.
    coordinates = (torch.arange(out_size, dtype=torch.float64) + 0.5) * in_size / out_size - 0.5
    low = coordinates.floor()
    fraction = coordinates - low
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    for index, weight in ((low.long(), 1.0 - fraction), (low.long() + 1, fraction)):
        mirrored = index.abs()
        mirrored = torch.where(mirrored > in_size - 1, 2 * (in_size - 1) - mirrored, mirrored).clamp(0, in_size - 1)
        weights.index_put_((rows, mirrored), weight, accumulate=True)
    return weights.to(device=device, dtype=torch.float32)


def skimage_resize(maps: Tensor, height: int, width: int) -> Tensor:
    """Resize ``(..., h, w)`` maps to ``(..., H, W)`` as skimage's ``resize(order=1, mode="reflect",
    anti_aliasing=False)`` (bilinear, mirrored borders), on the maps' device.
    """  # noqa: D205
    rows = skimage_linear_weights(maps.shape[-2], height, maps.device)
    columns = skimage_linear_weights(maps.shape[-1], width, maps.device)
    return rows @ maps.float() @ columns.T


def score_shared_masks(
    model: nn.Module,
    inputs: Tensor,
    target: TargetType,
    *,
    make_masks: MaskMaker,
    perturb: Perturbation,
    n_masks: int,
    batch_size: ChunkSize,
    score: ScoreKind,
    accumulate: Accumulator | None = None,
) -> Tensor:
    """Score every image of a batch under the same ``n_masks`` masks, ``batch_size`` perturbed images per forward.

    Each forward holds a chunk of ``m`` masks applied to a group of ``b`` images (``b * m <= batch_size``; groups
    of ``min(B, batch_size)`` images, ``m = batch_size // b``), laid out sample-major (row ``i * m + j`` is image
    ``i`` under mask ``j``). Only one chunk of masks and perturbed images exists at a time; the masks of a chunk
    are built once and shared by the perturbation and ``accumulate``.

    Args:
        model: the model, called on ``(b * m, C, H, W)`` perturbed images.
        inputs: images ``(B, C, H, W)``.
        target: class indices ``(B,)`` or a callable applied row-wise to the outputs of the perturbed images.
        make_masks: builds masks ``start:stop``.
        perturb: applies masks to a slice of the images.
        n_masks: how many masks.
        batch_size: how many perturbed images one forward pass may hold.
        score: which score of a class-index target (``"probability"``, ``"logit"`` or ``"log_probability"``).
        accumulate: optional per-chunk callback.

    Returns:
        float32 scores ``(B, n_masks)``.
    """
    batch = inputs.shape[0]
    group = batch if batch_size == "auto" else min(batch, int(batch_size))
    masks_per_chunk: ChunkSize = "auto" if batch_size == "auto" else max(1, int(batch_size) // group)
    scores = [
        _score_image_group(
            model,
            inputs,
            target,
            slice(first, min(first + group, batch)),
            make_masks=make_masks,
            perturb=perturb,
            n_masks=n_masks,
            masks_per_chunk=masks_per_chunk,
            score=score,
            accumulate=accumulate,
        )
        for first in range(0, batch, group)
    ]
    return torch.cat(scores, dim=0)


def _score_image_group(
    model: nn.Module,
    inputs: Tensor,
    target: TargetType,
    images: slice,
    *,
    make_masks: MaskMaker,
    perturb: Perturbation,
    n_masks: int,
    masks_per_chunk: ChunkSize,
    score: ScoreKind,
    accumulate: Accumulator | None,
) -> Tensor:
    """:func:`score_shared_masks` for one group of images: scores ``(images, n_masks)``."""
    count = images.stop - images.start
    group_target = take_rows(target, torch.arange(images.start, images.stop, device=inputs.device))
    current: dict[str, Tensor] = {}

    def make_inputs(start: int, stop: int) -> Tensor:
        current["masks"] = make_masks(start, stop)
        return perturb(images, current["masks"]).flatten(0, 1)

    def forward(chunk: Tensor, start: int, stop: int) -> Tensor:
        chunk_scores = target_scores(model(chunk), repeat_target(group_target, stop - start), score)
        chunk_scores = chunk_scores.detach().float().view(count, stop - start)
        if accumulate is not None:
            accumulate(images, chunk_scores, current["masks"])
        return chunk_scores.T

    return score_in_chunks(
        forward, make_inputs, total=n_masks, batch_size=masks_per_chunk, model=model, images_per_item=count, like=inputs
    ).T


def check_layer_argument(layer: object) -> None:
    """Raise ``TypeError`` unless ``layer`` is a dotted module name, an ``nn.Module`` or None."""
    if layer is not None and not isinstance(layer, (str, nn.Module)):
        raise TypeError(
            f"`layer` must be a dotted module name (str), an nn.Module or None (the default layer), got "
            f"{type(layer).__name__}."
        )
