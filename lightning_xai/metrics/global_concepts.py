"""``GlobalConceptRelevance``: the per-label channel relevance of a layer, synchronised across ranks by summation."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_xai._checks import check_positive_int
from lightning_xai.functional.global_attribution import check_labels
from lightning_xai.functional.global_concepts import (
    _global_concepts_compute,
    _global_concepts_update,
    check_channel_relevances,
    normalize_relevances,
)


class GlobalConceptRelevance(Metric):
    """Which concepts (channels of a layer) each label relies on: mean channel relevance per label (CRP, 2023).

    Each update takes the channel relevances ``(B, C)`` of a batch (from
    :meth:`~lightning_xai.explainers.ConceptRelevance.channel_relevance`), optionally normalises every sample's
    vector by its sum of absolute values (zennit-crp's ``abs_norm``) and adds it to the sums of the sample's labels.
    The states are a per-label sum ``(L, C)`` and a count ``(L,)`` in float64, both reduced with ``"sum"``: under DDP
    the synchronised result equals the single-process one up to float rounding.

    The channel count is fixed by ``num_channels`` or by the first update. Under DDP, pass ``num_channels`` if a rank
    may see no sample at all.

    Args:
        num_labels: the number of labels ``L``.
        num_channels: the layer's channel count ``C``, or ``None`` to take it from the first update.
        normalize: normalise each sample's relevance vector before summing (every sample weighs equally).
        kwargs: passed to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = GlobalConceptRelevance(num_labels=2)
        >>> metric.update(torch.tensor([[1.0, 3.0], [-2.0, 2.0]]), torch.tensor([0, 0]))
        >>> metric.compute()["per_label"]
        tensor([[-0.1250,  0.6250],
                [ 0.0000,  0.0000]])
    """

    is_differentiable = False
    higher_is_better: bool | None = None
    full_state_update = False
    name = "global_concepts"

    sum_relevance: Tensor
    count: Tensor

    def __init__(self, num_labels: int, num_channels: int | None = None, normalize: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_positive_int(num_labels, "num_labels")
        if num_channels is not None:
            check_positive_int(num_channels, "num_channels")
        if not isinstance(normalize, bool):
            raise TypeError(f"`normalize` must be a bool, got {normalize!r}.")
        self.num_labels = num_labels
        self.normalize = normalize
        sums = torch.zeros(num_labels, num_channels or 0, dtype=torch.float64)
        self.add_state("sum_relevance", default=sums, dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(num_labels, dtype=torch.float64), dist_reduce_fx="sum")

    @property
    def num_channels(self) -> int | None:
        """The channel count the states are sized for, or ``None`` before the first update when not given."""
        channels = int(self.sum_relevance.shape[1])
        return channels if channels > 0 else None

    def _size_states(self, channels: int) -> None:
        # as GlobalAttribution: size the default too (reset restores it), and never alias it
        default = torch.zeros(self.num_labels, channels, dtype=torch.float64)
        self._defaults["sum_relevance"] = default
        self.sum_relevance = default.to(self.device, copy=True)

    def update(self, relevances: Tensor, labels: Tensor) -> None:
        """Add one batch.

        Args:
            relevances: channel relevances ``(B, C)``, finite; the same ``C`` at every update.
            labels: class indices ``(B,)`` in ``[0, num_labels)`` or a multi-label 0/1 tensor ``(B, num_labels)``.
        """
        check_channel_relevances(relevances)
        check_labels(labels, self.num_labels, relevances.shape[0])
        channels = relevances.shape[1]
        if self.num_channels is None:
            self._size_states(channels)
        elif self.num_channels != channels:
            raise ValueError(
                f"`relevances` must keep the {self.num_channels} channels of the earlier updates (or `num_channels`), "
                f"got shape {tuple(relevances.shape)}."
            )
        sums, counts = _global_concepts_update(
            normalize_relevances(relevances.detach(), self.normalize), labels, self.num_labels
        )
        self.sum_relevance += sums.to(self.sum_relevance.device)
        self.count += counts.to(self.count.device)

    def forward(self, relevances: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Update with one batch and return that batch's result alone (torchmetrics' ``forward``)."""
        if self.num_channels is None and isinstance(relevances, Tensor) and relevances.ndim == 2:
            self._size_states(relevances.shape[1])
        return super().forward(relevances, labels)

    def compute(self) -> dict[str, Tensor]:
        """The mean channel relevance of each label over every sample seen (on every rank).

        Returns:
            ``{"per_label": (L, C) float32, "count": (L,) int64}``; a label never seen has an all-zero row and count 0.

        Raises:
            RuntimeError: before any update when ``num_channels`` was not given.
        """
        if self.num_channels is None:
            raise RuntimeError("GlobalConceptRelevance.compute() was called before any update() (C is unknown).")
        return _global_concepts_compute(self.sum_relevance, self.count)
