"""Per-epoch analyses the :class:`~lightning_xai.ExplanationMonitor` holds and runs for each explainer."""

from lightning_xai.callbacks.analyses.base import Analysis, EpochContext, ExplainedBatch
from lightning_xai.callbacks.analyses.concepts import ConceptAnalysis
from lightning_xai.callbacks.analyses.drift import ProbeDrift
from lightning_xai.callbacks.analyses.global_maps import GlobalMaps
from lightning_xai.callbacks.analyses.regions import RegionMasses
from lightning_xai.callbacks.analyses.spray import SpectralRelevanceAnalysis

__all__ = [
    "Analysis",
    "ConceptAnalysis",
    "EpochContext",
    "ExplainedBatch",
    "GlobalMaps",
    "ProbeDrift",
    "RegionMasses",
    "SpectralRelevanceAnalysis",
]
