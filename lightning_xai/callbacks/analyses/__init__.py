"""Per-epoch analyses the :class:`~lightning_xai.ExplanationMonitor` holds and runs for each explainer."""

from lightning_xai.callbacks.analyses.base import Analysis, EpochContext, ExplainedBatch
from lightning_xai.callbacks.analyses.spray import SpectralRelevanceAnalysis

__all__ = ["Analysis", "EpochContext", "ExplainedBatch", "SpectralRelevanceAnalysis"]
