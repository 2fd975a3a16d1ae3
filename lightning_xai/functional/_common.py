"""Helpers shared by the perturbation metrics: argument checks, chunk scoring and seeded randomness."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_xai._checks import check_attributions, check_choice, check_image_batch
from lightning_xai._targets import (
    SCORE_KINDS,
    ScoreKind,
    check_class_range,
    check_target,
    class_scores,
    take_rows,
    target_scores,
)
from lightning_xai._typing import TargetType


def check_metric_arguments(
    inputs: Tensor, attributions: Tensor, target: TargetType, *, video: bool = False, method: str | None = None
) -> None:
    """Raise unless ``inputs`` is ``(B, C, H, W)``, ``attributions`` a finite matching map and ``target`` valid.

    With ``video=True`` clips ``(B, C, T, H, W)`` with ``(B, 1 or C, T, H, W)`` maps are accepted too; otherwise a
    clip is refused with a message naming ``method``.
    """
    check_image_batch(inputs, video=video, method=method)
    check_attributions(attributions, inputs)
    check_target(target, inputs.shape[0])


def check_score(score: object) -> None:
    """Raise unless ``score`` names a kind of class score (``"probability"``, ``"logit"``, ``"log_probability"``)."""
    check_choice(score, "score", SCORE_KINDS)


def flat_saliency(attributions: Tensor) -> Tensor:
    """Sum ``(B, C|1, H, W)`` attributions over channels and flatten them to ``(B, H * W)`` (``(B, T * H * W)`` voxels
    for clip maps ``(B, C|1, T, H, W)``).
    """  # noqa: D205
    return attributions.sum(dim=1).flatten(1)


def chunk_scores(
    model: nn.Module, chunk: Tensor, target: TargetType, rows: Tensor, score: ScoreKind, *, first: bool = True
) -> Tensor:
    """Score a chunk of perturbed copies: ``rows[i]`` is the sample that ``chunk[i]`` was built from.

    A class-index target is gathered for the rows; a row-aware target (:class:`~lightning_xai._targets.RowAwareTarget`)
    is viewed for the rows; a plain callable target is applied to the chunk's outputs and must therefore act row by
    row. Returns float32 scores of shape ``(len(chunk),)``.

    ``first`` marks the first chunk of a batch: only then is the whole ``target`` checked against the number of
    classes (one host synchronisation per batch, not one per chunk); later chunks of the same model and batch
    gather directly.
    """
    outputs = model(chunk)
    if isinstance(target, Tensor):
        if first:
            check_class_range(outputs, target)
        elif isinstance(outputs, Tensor) and outputs.ndim == 2:
            picked = target[rows].to(outputs.device).long().view(-1, 1)
            return class_scores(outputs, score).gather(1, picked).squeeze(1).to(torch.float32)
    rows_target = take_rows(target, rows)
    return target_scores(outputs, rows_target, score).to(torch.float32)


def local_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``seed`` (never the global RNG)."""
    return torch.Generator(device=device).manual_seed(seed)
