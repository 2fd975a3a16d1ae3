"""SpRAy during training: cluster each label's explanations every monitored epoch, log and gate what they show."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import Metric

from lightning_xai._checks import check_choice, check_in_range, check_positive_int
from lightning_xai.callbacks.analyses.base import Analysis, EpochContext, ExplainedBatch, Samples
from lightning_xai.functional.spectral_relevance import SpectralRelevanceResult
from lightning_xai.metrics.spectral_relevance import SpectralRelevance
from lightning_xai.visualize import captioned_map_grid


class SpectralRelevanceAnalysis(Analysis):
    """Spectral Relevance Analysis (Lapuschkin et al. 2019) of each label's maps, for the ExplanationMonitor.

    A global per-label map averages a label's explanations, so a shortcut taken by a minority of the label's samples
    is diluted; SpRAy clusters the label's maps and shows each strategy on its own, with no region given in advance.
    Every monitored epoch this analysis feeds one explainer's maps, grouped by the monitor's aggregation labels
    (``ExplainedBatch.groups``: class indices ``(B,)`` or multi-hot ``(B, L)``), into a :class:`SpectralRelevance`
    metric, clusters them (synchronised across ranks) and logs, for every label with enough maps:

    * ``xai/<explainer>/spray/n_clusters/<label>`` (scalar): the number of clusters the eigengap picked.
    * ``xai/<explainer>/spray/eigengap/<label>`` (scalar): that gap, ``λ_k - λ_{k-1}`` (higher: a clearer split).
    * ``xai/<explainer>/spray/clusters/<label>`` (image): the cluster means, each tile captioned with its cluster's
      size (and, with regions, its mass in each region).
    * with the monitor's ``regions``: ``xai/<explainer>/spray_relevance_mass_<region>/<label>`` and
      ``xai/<explainer>/spray_relevance_mass_<region>_max`` (scalars): the share of a cluster mean's mass inside the
      region, largest over the label's clusters and over every label's clusters. A gate with ``mode="min"`` on the
      ``_max`` key fails a run in which part of a class looks at a forbidden region.

    Only clusters of at least ``max(min_cluster_size, ceil(min_cluster_fraction x N_label))`` maps count for the
    region masses, so that one odd image cannot trip a gate; the largest cluster always counts.

    The cluster means are at ``size``: the region masses are computed there, with each cell weighted by the share of
    it the region covers (exact when the region is a union of cells, as a 4 x 4 corner of a 16 x 16 image at
    ``size=(16, 16)``).

    Args:
        num_labels: the number of labels (the monitor's classes).
        size: ``(H', W')`` the maps are pooled to before clustering.
        max_per_label: the most maps clustered per label (and kept per label and rank); the clustering costs
            ``O(max_per_label^3)`` per label.
        max_clusters: the largest number of clusters per label.
        n_neighbors: neighbours per map in the affinity graph.
        min_cluster_fraction: the smallest share of a label's maps a cluster needs for its region mass to count.
        min_cluster_size: the smallest number of maps a cluster needs for its region mass to count.
        samples: which explained samples feed it: ``"streamed"`` (the validation batches the monitor explains with
            ``max_samples``, the default), ``"measured"`` or ``"probe"``.
        log_images: log the cluster-mean grids.
        seed: seeds k-means.

    Example:
        >>> from lightning_xai import ExplanationMonitor
        >>> from lightning_xai.explainers import Saliency
        >>> monitor = ExplanationMonitor(Saliency(), max_samples=None, analyses=[SpectralRelevanceAnalysis(10)])
        >>> monitor.analyses["Saliency"][0].name
        'spray'
    """

    name: ClassVar[str] = "spray"

    def __init__(
        self,
        num_labels: int,
        size: tuple[int, int] = (16, 16),
        max_per_label: int = 256,
        max_clusters: int = 8,
        n_neighbors: int = 10,
        min_cluster_fraction: float = 0.1,
        min_cluster_size: int = 5,
        samples: Samples = "streamed",
        log_images: bool = True,
        seed: int = 0,
    ) -> None:
        check_in_range(min_cluster_fraction, "min_cluster_fraction", 0.0, 1.0)
        check_positive_int(min_cluster_size, "min_cluster_size")
        check_choice(samples, "samples", ("streamed", "measured", "probe"))
        self.metric = SpectralRelevance(
            num_labels,
            size=size,
            max_per_label=max_per_label,
            max_clusters=max_clusters,
            n_neighbors=n_neighbors,
            seed=seed,
        )
        self.num_labels = num_labels
        self.min_cluster_fraction = float(min_cluster_fraction)
        self.min_cluster_size = min_cluster_size
        self.samples = samples  # type: ignore[misc]  # an instance may choose its samples
        self.log_images = log_images
        self._noticed: set[str] = set()
        self.last: dict[int, dict[str, Any]] = {}

    def metrics(self) -> list[Metric]:
        """The one :class:`SpectralRelevance` state."""
        return [self.metric]

    def _notice(self, key: str, message: str) -> None:
        if key not in self._noticed:
            self._noticed.add(key)
            rank_zero_warn(f"SpectralRelevanceAnalysis: {message} (shown once)")

    def update(self, batch: ExplainedBatch) -> None:
        """Keep the batch's maps for their aggregation labels; skip, with a notice, what cannot be clustered."""
        if batch.groups is None:
            self._notice("groups", "the monitor gave no labels to group the maps by; SpRAy is skipped.")
            return
        maps, groups = batch.maps.detach(), batch.groups
        finite = torch.isfinite(maps).flatten(1).all(dim=1)
        if not bool(finite.all()):
            self._notice("finite", f"{int((~finite).sum())} maps with NaN or inf values were left out.")
            maps, groups = maps[finite], groups[finite.to(groups.device)]
            if maps.shape[0] == 0:
                return
        self.metric.update(maps, groups)

    def minimum_size(self, count: int) -> int:
        """The smallest cluster whose region masses count, for a label with ``count`` maps."""
        return max(self.min_cluster_size, math.ceil(self.min_cluster_fraction * count))

    def region_masses(self, result: SpectralRelevanceResult, region: Tensor) -> Tensor:
        """``(k,)`` share of each cluster mean's mass inside the ``(H, W)`` region (pooled to the means' size)."""
        means = result.cluster_means
        cover = region.to(means.device, torch.float32)[None, None]
        if tuple(cover.shape[-2:]) != tuple(means.shape[-2:]):
            cover = F.adaptive_avg_pool2d(cover, (int(means.shape[-2]), int(means.shape[-1])))
        mass = means.flatten(1).sum(dim=1)
        inside = (means * cover[0, 0].to(means.dtype)).flatten(1).sum(dim=1)
        return torch.where(mass > 0, inside / mass.clamp(min=torch.finfo(means.dtype).tiny), torch.zeros_like(mass))

    def log(self, context: EpochContext) -> None:
        """Cluster every label's maps (synchronised) and log the counts, gaps, masses and cluster pictures."""
        results = self.metric.compute()
        if not results:
            self._notice("empty", "no label had enough maps to cluster this epoch; nothing is logged.")
            return
        scalars: dict[str, Tensor] = {}
        region_max: dict[str, Tensor] = {}
        self.last = {}
        for label, result in results.items():
            scalars[f"spray/n_clusters/{label}"] = torch.tensor(float(result.n_clusters))
            scalars[f"spray/eigengap/{label}"] = result.eigengap.detach().float().cpu()
            sizes = result.cluster_sizes.cpu()
            counts = sizes >= self.minimum_size(int(sizes.sum()))
            counts[0] = True  # the largest cluster always counts
            masses = {name: self.region_masses(result, region).cpu() for name, region in context.regions.items()}
            for name, mass in masses.items():
                best = mass[counts].max()
                scalars[f"spray_relevance_mass_{name}/{label}"] = best
                region_max[name] = best if name not in region_max else torch.maximum(region_max[name], best)
            self.last[label] = {
                "n_clusters": result.n_clusters,
                "cluster_sizes": sizes.tolist(),
                "masses": {name: mass.tolist() for name, mass in masses.items()},
            }
            if self.log_images and context.pictures.active:
                captions = []
                for index, size in enumerate(sizes.tolist()):
                    caption = f"n={size}" + ("" if counts[index] else " (small)")
                    for name, mass in masses.items():
                        caption += f"\n{name} {100 * float(mass[index]):.0f}%"
                    captions.append(caption)
                title = f"label {label}: {int(sizes.sum())} maps, {result.n_clusters} clusters"
                context.image(f"spray/clusters/{label}", captioned_map_grid(result.cluster_means, captions, title))
        for name, value in region_max.items():
            scalars[f"spray_relevance_mass_{name}_max"] = value
        context.log(scalars)

    def state_dict(self) -> dict[str, Any]:
        """The last epoch's cluster summary per label (sizes, region masses), for inspection after a resume."""
        return {"last": self.last}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (a missing key leaves it empty)."""
        self.last = dict(state_dict.get("last", {}))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_labels={self.num_labels}, size={self.metric.size}, "
            f"max_per_label={self.metric.max_per_label}, max_clusters={self.metric.max_clusters}, "
            f"n_neighbors={self.metric.n_neighbors})"
        )
