"""Per-label concept relevance: which channels of a layer each class relies on, summed over samples.

The concept (channel) relevances of Concept Relevance Propagation (Achtibat et al., Nature Machine Intelligence
2023) are aggregated per label, as their "global" concept analysis ranks the concepts of a class by their relevance
over many samples. Each sample's vector may first be divided by the sum of its absolute values (zennit-crp's
``abs_norm``), so that every sample weighs equally whatever its logit. Everything is kept as per-label sums and
counts in float64, so batches and ranks merge by addition.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_xai._checks import check_finite, check_positive_int
from lightning_xai.functional.global_attribution import check_labels, label_weights


def check_channel_relevances(relevances: object, name: str = "relevances") -> None:
    """Raise unless ``relevances`` is a finite floating-point tensor ``(B, C)`` with ``B, C >= 1``."""
    if not isinstance(relevances, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape (B, C), got {type(relevances).__name__}.")
    if relevances.ndim != 2 or relevances.shape[0] == 0 or relevances.shape[1] == 0:
        raise ValueError(f"`{name}` must have shape (B, C) with B, C >= 1, got shape {tuple(relevances.shape)}.")
    if not relevances.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {relevances.dtype}.")
    check_finite(relevances, name)


def normalize_relevances(relevances: Tensor, normalize: bool = True) -> Tensor:
    """Divide each row of ``(B, C)`` channel relevances by its sum of absolute values (all-zero rows stay zero).

    Example:
        >>> normalize_relevances(torch.tensor([[1.0, -3.0], [0.0, 0.0]]))
        tensor([[ 0.2500, -0.7500],
                [ 0.0000,  0.0000]])
    """
    if not normalize:
        return relevances
    scale = relevances.abs().sum(dim=1, keepdim=True)
    return relevances / torch.where(scale > 0, scale, torch.ones_like(scale))


def _global_concepts_update(relevances: Tensor, labels: Tensor, num_labels: int) -> tuple[Tensor, Tensor]:
    """Per-label sums of the (normalised) channel relevances ``(L, C)`` and counts ``(L,)``, float64."""
    weights = label_weights(labels.to(relevances.device), num_labels)
    return weights.T @ relevances.to(torch.float64), weights.sum(dim=0)


def _global_concepts_compute(sums: Tensor, counts: Tensor) -> dict[str, Tensor]:
    """Label-wise mean channel relevance ``(L, C)``, float32, from the sums; labels never seen are all zero."""
    mean = sums / counts.clamp(min=1).view(-1, 1)
    return {"per_label": mean.to(torch.float32), "count": counts.round().to(torch.long)}


def global_concept_relevance(
    relevances: Tensor, labels: Tensor, num_labels: int, normalize: bool = True
) -> dict[str, Tensor]:
    """The mean channel relevance of each label's samples.

    Args:
        relevances: channel relevances ``(B, C)`` (for instance
            :meth:`~lightning_xai.explainers.ConceptRelevance.channel_relevance`).
        labels: class indices ``(B,)`` or a multi-label 0/1 tensor ``(B, L)`` (a sample counts for each positive
            label).
        num_labels: the number of labels ``L``.
        normalize: divide each sample's vector by its sum of absolute values first.

    Returns:
        ``{"per_label": (L, C), "count": (L,)}``: higher means the label's predictions rely more on that channel.

    Example:
        >>> out = global_concept_relevance(torch.tensor([[1.0, 3.0], [2.0, 2.0]]), torch.tensor([1, 1]), 2)
        >>> out["per_label"], out["count"]
        (tensor([[0.0000, 0.0000],
                [0.3750, 0.6250]]), tensor([0, 2]))
    """
    check_positive_int(num_labels, "num_labels")
    check_channel_relevances(relevances)
    check_labels(labels, num_labels, relevances.shape[0])
    sums, counts = _global_concepts_update(normalize_relevances(relevances, normalize), labels, num_labels)
    return _global_concepts_compute(sums, counts)
