"""``RelevanceMass``: the share of attribution mass inside a region, with the pointing game."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_xai._checks import check_choice
from lightning_xai.functional.global_attribution import check_labels
from lightning_xai.functional.relevance_mass import (
    RELEVANCES,
    Relevance,
    _checked_masks,
    _relevance_mass_update,
    check_region,
    relevance_map,
)
from lightning_xai.metrics.base import _cat_state, normal_quantile


class RelevanceMass(Metric):
    """Mean share of attribution mass inside a region (Arras et al. 2022), and the pointing game (Zhang et al. 2016).

    This is how domain knowledge is stated: "the mass must lie in the retina" (region = the retina, higher is
    better), or "it must not lie in the corner with the text overlay" (region = the overlay, lower is better; the
    gate decides the direction). The region is, per batch, the first of:

    1. ``masks`` passed to :meth:`update`: one 0/1 mask per sample (for instance lesion annotations);
    2. ``region`` given here: ``(H, W)`` shared by every sample, or ``(L, H, W)`` with one region per label,
       picked by the ``labels`` passed to :meth:`update`.

    The pointing game (is the map's maximum inside the region) is recorded for every sample, whichever the region
    came from. Per-sample values are ``"cat"`` states, so the mean, its standard error and a confidence interval
    are exact under DDP. Choices (``relevance``, zero maps, ties) are listed in
    :mod:`lightning_xai.functional.relevance_mass`.

    Args:
        region: 0/1 (or bool) ``(H, W)`` or per-label ``(L, H, W)``; ``None`` if every update passes ``masks``.
        relevance: ``"absolute"`` (``|a|`` summed over channels) or ``"positive"`` (positive part of the signed
            channel sum, as in Arras et al.).
        kwargs: passed to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> region = torch.zeros(2, 2)
        >>> region[0] = 1
        >>> metric = RelevanceMass(region)
        >>> metric.update(torch.tensor([[3.0, 1.0], [0.0, 0.0]]).view(1, 1, 2, 2))
        >>> metric.update(torch.tensor([[1.0, 0.0], [0.0, 3.0]]).view(1, 1, 2, 2))
        >>> metric.compute()
        tensor(0.6250)
        >>> {key: round(value.item(), 4) for key, value in metric.summary().items()}
        {'relevance_mass': 0.625, 'relevance_mass_stderr': 0.375, 'pointing_game': 0.5}
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    name = "relevance_mass"

    masses: list[Tensor]
    hits: list[Tensor]
    region: Tensor | None

    def __init__(self, region: Tensor | None = None, relevance: Relevance = "absolute", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_choice(relevance, "relevance", RELEVANCES)
        self.relevance = relevance
        self.register_buffer("region", None if region is None else check_region(region, "region"), persistent=False)
        self.add_state("masses", default=[], dist_reduce_fx="cat")
        self.add_state("hits", default=[], dist_reduce_fx="cat")

    def _masks(self, relevance: Tensor, labels: Tensor | None, masks: Tensor | None) -> Tensor:
        if masks is not None:
            return _checked_masks(masks, relevance)
        if self.region is None:
            raise ValueError(
                "RelevanceMass.update() needs `masks` (one 0/1 mask per sample) when no `region` was given "
                "at construction."
            )
        size = tuple(relevance.shape[-2:])
        if tuple(self.region.shape[-2:]) != size:
            raise ValueError(
                f"`region` has spatial size {tuple(self.region.shape[-2:])} (H, W), but the attributions "
                f"have {size}: give a region of the maps' size."
            )
        region = self.region.to(relevance.device)
        if region.ndim == 2:
            return region
        if labels is None:
            raise ValueError(
                f"A per-label `region` of shape {tuple(region.shape)} needs `labels` (B,) in update() to "
                "pick each sample's region."
            )
        check_labels(labels, region.shape[0], relevance.shape[0])
        if labels.ndim != 1:
            raise ValueError(
                f"A per-label `region` needs class indices `labels` of shape (B,), got shape {tuple(labels.shape)}."
            )
        return region[labels.to(relevance.device).long()]

    def update(self, attributions: Tensor, labels: Tensor | None = None, masks: Tensor | None = None) -> None:
        """Record the relevance mass and the pointing game of one batch.

        Args:
            attributions: ``(B, 1, H, W)`` or ``(B, C, H, W)``, finite.
            labels: class indices ``(B,)``; needed with a per-label ``region``, ignored otherwise.
            masks: per-sample 0/1 masks ``(B, H, W)`` or ``(B, 1, H, W)`` (or a shared ``(H, W)``); override the
                ``region`` for this batch.
        """
        relevance = relevance_map(attributions.detach(), self.relevance)
        mass, hits = _relevance_mass_update(relevance, self._masks(relevance, labels, masks))
        self.masses.append(mass.to(torch.float32))
        self.hits.append(hits.to(torch.float32))

    def per_sample(self) -> Tensor:
        """The per-sample relevance masses ``(N,)``, gathered from every rank."""
        with self.sync_context():
            return _cat_state(self.masses, self.device)

    def _values(self) -> tuple[Tensor, Tensor]:
        masses = _cat_state(self.masses, self.device)
        if masses.numel() == 0:
            raise RuntimeError("RelevanceMass.compute() was called before any update().")
        return masses, _cat_state(self.hits, self.device)

    def compute(self) -> Tensor:
        """The mean relevance mass over every sample seen (on every rank), a scalar in ``[0, 1]``."""
        return self._values()[0].mean()

    @staticmethod
    def _standard_error(values: Tensor) -> Tensor:
        if values.numel() < 2:
            return torch.zeros((), device=values.device)
        return values.std(unbiased=True) / math.sqrt(values.numel())

    def confidence_interval(self, level: float = 0.95) -> tuple[Tensor, Tensor]:
        """Normal-approximation confidence interval of the mean relevance mass at ``level``, as ``(low, high)``."""
        quantile = normal_quantile(level)
        with self.sync_context():
            masses = self._values()[0]
            mean, half = masses.mean(), quantile * self._standard_error(masses)
        return mean - half, mean + half

    def summary(self) -> dict[str, Tensor]:
        """Scalars to log: ``{"relevance_mass", "relevance_mass_stderr", "pointing_game"}`` (hit rate in [0, 1])."""
        with self.sync_context():
            masses, hits = self._values()
            return {
                self.name: masses.mean(),
                f"{self.name}_stderr": self._standard_error(masses),
                "pointing_game": hits.mean(),
            }
