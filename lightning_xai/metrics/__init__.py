"""Faithfulness metrics and global aggregates as ``torchmetrics.Metric`` classes."""

from lightning_xai.metrics.base import FaithfulnessMetric

__all__ = [
    "FaithfulnessMetric",
]
