"""Attribution methods: ``explainer(model, inputs, target) -> (B, 1, H, W)``."""

from lightning_xai.explainers.base import Explainer, reduce_channels

__all__ = [
    "Explainer",
    "reduce_channels",
]
