"""Region masses: the share of each map's attribution inside the regions domain knowledge names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from torch import Tensor

from lightning_xai.callbacks.analyses.base import Analysis, EpochContext, ExplainedBatch, Samples
from lightning_xai.metrics.relevance_mass import RelevanceMass


def region_keys(summary: Mapping[str, Tensor], region: str) -> dict[str, Tensor]:
    """Name a metric's summary per region, keeping standard errors in the ``<key>_stderr`` form the gate reads.

    ``relevance_mass`` becomes ``relevance_mass_<region>`` and ``relevance_mass_stderr`` becomes
    ``relevance_mass_<region>_stderr``.
    """
    named = {}
    for key, value in summary.items():
        base, stderr = (key[: -len("_stderr")], "_stderr") if key.endswith("_stderr") else (key, "")
        named[f"{base}_{region}{stderr}"] = value
    return named


class RegionMasses(Analysis):
    """Relevance mass and pointing game (Arras et al. 2022) of the measured samples in each named region.

    Logs, per region: ``relevance_mass_<region>`` (mean share of ``|attribution|`` inside the region, in ``[0, 1]``;
    higher means the explanations rely more on the region), ``relevance_mass_<region>_stderr`` and
    ``pointing_game_<region>`` (how often a map's maximum lies inside).

    Args:
        regions: named ``(H, W)`` 0/1 masks.
    """

    name: ClassVar[str] = "regions"
    samples: ClassVar[Samples] = "measured"

    def __init__(self, regions: Mapping[str, Tensor]) -> None:
        self.masses = {region: RelevanceMass(mask) for region, mask in regions.items()}

    def metrics(self) -> list[RelevanceMass]:  # type: ignore[override]
        """One :class:`~lightning_xai.metrics.RelevanceMass` per region."""
        return list(self.masses.values())

    def update(self, batch: ExplainedBatch) -> None:
        """Add the batch's maps to every region's mass."""
        for metric in self.masses.values():
            metric.update(batch.maps)

    def log(self, context: EpochContext) -> None:
        """Log each region's synchronised mean mass, its standard error and the pointing game."""
        for region, metric in self.masses.items():
            context.log(region_keys(metric.summary(), region))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(regions={sorted(self.masses)})"
