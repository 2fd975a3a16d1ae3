"""lightning_xai: explanations of image models as a monitored, tested property of every training run."""

from lightning_xai.explainers import Explainer

__version__ = "0.1.0"

__all__ = [
    "Explainer",
    "__version__",
]
