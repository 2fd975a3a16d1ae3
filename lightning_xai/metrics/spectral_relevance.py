"""``SpectralRelevance``: SpRAy clusters of each label's maps, gathered across ranks in a deterministic order."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.distributed import gather_all_tensors

from lightning_xai._checks import check_positive_int
from lightning_xai.functional.global_attribution import _check_maps, check_labels
from lightning_xai.functional.spectral_relevance import (
    SpectralRelevanceResult,
    check_spray_arguments,
    spectral_relevance,
    spray_features,
)


class SpectralRelevance(Metric):
    """Spectral Relevance Analysis (Lapuschkin et al. 2019) of every label's explanation maps.

    :meth:`update` pools each map to ``size`` and normalises it by its mass (:func:`spray_features`), and keeps it
    for each of its labels; :meth:`compute` clusters every label's kept maps with
    :func:`~lightning_xai.functional.spectral_relevance`.

    **Memory bound.** Per label and rank at most ``max_per_label`` maps are kept (the first ones that rank sees; later
    ones are dropped), so the states hold at most ``num_labels x max_per_label`` maps of ``H' x W'`` float32 per rank
    (10 labels x 256 x 16 x 16: 2.6 MB), plus two int64 per map. A multi-label sample is kept once per positive label.

    **Distributed.** The kept maps are one ``"cat"`` list state of float64 rows ``[key, label, map...]`` (float64
    holds the integer key and label exactly; a list, because ranks keep different numbers). Every kept map carries
    the key ``j * world_size + rank``, where ``j`` counts the samples this rank was given so far; after the gather
    the rows are sorted by that key and each label clusters its first ``max_per_label``. With a
    ``DistributedSampler`` that does not shuffle (Lightning's validation sampler), rank ``r``'s ``j``-th sample is
    the dataset's sample ``j * world_size + r``, so the result is the one a single process finds on the whole data,
    and it is the same on every rank (the clustering is deterministic for a given device type). The clustering
    never sees more than ``max_per_label`` maps per label, so its ``O(N^3)`` cost does not grow with the ranks.

    A label with fewer than ``n_neighbors + 1`` maps is left out of the result, with a one-time notice.

    Args:
        num_labels: the number of labels ``L``.
        size: ``(H', W')`` the maps are pooled to.
        max_per_label: the most maps kept per label and rank, and clustered per label.
        max_clusters: the largest number of clusters considered per label.
        n_neighbors: neighbours per map in the affinity graph.
        n_clusters: a fixed number of clusters per label, or ``None`` to pick it by the largest eigengap.
        seed: seeds k-means.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Example:
        >>> left = torch.zeros(12, 1, 4, 4); left[:, :, :, 0] = 1 + torch.rand(12, 1, 4)
        >>> right = torch.zeros(12, 1, 4, 4); right[:, :, :, 3] = 1 + torch.rand(12, 1, 4)
        >>> metric = SpectralRelevance(num_labels=2, size=(4, 4), n_neighbors=5)
        >>> metric.update(torch.cat([left, right]), torch.zeros(24, dtype=torch.long))
        >>> result = metric.compute()
        >>> list(result), result[0].n_clusters, result[0].cluster_sizes.tolist()
        ([0], 2, [12, 12])
    """

    is_differentiable = False
    higher_is_better: bool | None = None
    full_state_update = False
    name = "spectral_relevance"

    entries: list[Tensor]
    seen: Tensor

    def __init__(
        self,
        num_labels: int,
        size: tuple[int, int] = (16, 16),
        max_per_label: int = 256,
        max_clusters: int = 8,
        n_neighbors: int = 10,
        n_clusters: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_positive_int(num_labels, "num_labels")
        check_positive_int(max_per_label, "max_per_label")
        self.size = check_spray_arguments(n_clusters, max_clusters, n_neighbors, size)
        if max_per_label < n_neighbors + 1:
            raise ValueError(
                f"`max_per_label` must be at least `n_neighbors + 1` = {n_neighbors + 1} (SpRAy needs more maps than "
                f"neighbours), got {max_per_label}."
            )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"`seed` must be an int, got {seed!r}.")
        self.num_labels = num_labels
        self.max_per_label = max_per_label
        self.max_clusters = max_clusters
        self.n_neighbors = n_neighbors
        self.n_clusters = n_clusters
        self.seed = seed
        self._noticed: set[int] = set()
        self.add_state("entries", default=[], dist_reduce_fx="cat")
        self.add_state("seen", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def _rows(self) -> Tensor:
        """The kept ``[key, label, map...]`` rows as one ``(n, 2 + H' W')`` float64 tensor (after a sync too)."""
        entries = self.entries
        if isinstance(entries, Tensor):  # synchronised: torchmetrics has concatenated the ranks' rows
            rows = entries
        else:
            rows = torch.cat(entries) if entries else torch.zeros(0, device=self.seen.device)
        width = 2 + self.size[0] * self.size[1]
        return rows.to(torch.float64).reshape(-1, width)

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None) -> None:
        # a rank that kept nothing sends an empty (0, 2 + H' W') float64 block, not torchmetrics' 1-D float32 one
        if isinstance(self.entries, list) and not self.entries:
            width = 2 + self.size[0] * self.size[1]
            self.entries = [torch.zeros(0, width, dtype=torch.float64, device=self.seen.device)]
        super()._sync_dist(dist_sync_fn, process_group)

    @property
    def label(self) -> Tensor:
        """``(n,)`` the label of every map kept on this rank (or gathered, inside ``compute``)."""
        return self._rows()[:, 1].long()

    @property
    def maps(self) -> Tensor:
        """``(n, H', W')`` the pooled, mass-normalised maps kept on this rank (or gathered, inside ``compute``)."""
        return self._rows()[:, 2:].float().reshape(-1, *self.size)

    def update(self, attributions: Tensor, labels: Tensor) -> None:
        """Keep one batch of maps for their labels (up to ``max_per_label`` per label on this rank).

        Args:
            attributions: ``(B, 1, H, W)`` or ``(B, C, H, W)``, finite (any ``H, W``: they are pooled to ``size``).
            labels: class indices ``(B,)`` in ``[0, num_labels)``, or a multi-label 0/1 tensor ``(B, num_labels)``.
        """
        _check_maps(attributions)
        batch = attributions.shape[0]
        check_labels(labels, self.num_labels, batch)
        distributed = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        keys = (self.seen + torch.arange(batch, device=self.seen.device)) * world + rank
        self.seen += batch
        labels = labels.to(self.seen.device)
        if labels.ndim == 1:
            sample, label = torch.arange(batch, device=labels.device), labels.long()
        else:
            sample, label = labels.nonzero(as_tuple=True)
        kept_before = torch.bincount(self.label, minlength=self.num_labels)
        # the position of each (sample, label) pair among this batch's pairs of its label, in sample order
        order = torch.argsort(label * batch + sample, stable=True)
        sorted_label = label[order]
        starts = torch.searchsorted(sorted_label, sorted_label, right=False)
        position = torch.empty_like(order)
        position[order] = torch.arange(order.numel(), device=order.device) - starts
        keep = position + kept_before[label] < self.max_per_label
        if not bool(keep.any()):
            return
        sample, label = sample[keep], label[keep]
        features = spray_features(attributions.detach()[sample.to(attributions.device)], self.size)
        rows = torch.cat(
            [
                keys[sample].unsqueeze(1).double(),
                label.unsqueeze(1).double(),
                features.flatten(1).to(device=self.seen.device, dtype=torch.float64),
            ],
            dim=1,
        )
        self.entries.append(rows)

    def compute(self) -> dict[int, SpectralRelevanceResult]:
        """Cluster every label's maps (the same on every rank).

        Returns:
            ``{label: SpectralRelevanceResult}`` for every label with at least ``n_neighbors + 1`` maps, in
            increasing label order; ``cluster_means`` are ``(k, H', W')`` at ``size``.
        """
        rows = self._rows()
        rows = rows[torch.argsort(rows[:, 0], stable=True)]
        maps, labels = rows[:, 2:].float().reshape(-1, *self.size), rows[:, 1].long()
        results: dict[int, SpectralRelevanceResult] = {}
        for value in labels.unique().tolist():
            members = (labels == value).nonzero().flatten()[: self.max_per_label]
            if members.numel() < self.n_neighbors + 1:
                if value not in self._noticed:
                    self._noticed.add(value)
                    rank_zero_warn(
                        f"SpectralRelevance: label {value} has {members.numel()} maps, fewer than `n_neighbors + 1` = "
                        f"{self.n_neighbors + 1}; it is skipped (this notice is shown once per label)."
                    )
                continue
            results[int(value)] = spectral_relevance(
                maps[members],
                n_clusters=self.n_clusters,
                max_clusters=self.max_clusters,
                n_neighbors=self.n_neighbors,
                size=self.size,
                seed=self.seed,
            )
        return results

    def _wrap_compute(self, compute: Callable) -> Callable:
        # torchmetrics squeezes one-element tensors of a compute() result: give (1,) cluster sizes their shape back
        wrapped = super()._wrap_compute(compute)

        @functools.wraps(compute)
        def compute_with_shapes(*args: Any, **kwargs: Any) -> Any:
            results = wrapped(*args, **kwargs)
            for result in results.values():
                result.cluster_sizes = result.cluster_sizes.reshape(-1)
                result.labels = result.labels.reshape(-1)
                result.eigenvalues = result.eigenvalues.reshape(-1)
                result.cluster_means = result.cluster_means.reshape(result.n_clusters, *self.size)
            return results

        return compute_with_shapes
