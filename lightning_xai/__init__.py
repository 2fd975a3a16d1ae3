"""lightning_xai: explanations of image models as a monitored, tested property of every training run."""

from lightning_xai.callbacks import ExplanationMonitor, FaithfulnessGate, FaithfulnessRegressionError, ProbeMonitor
from lightning_xai.explainers import (
    Captum,
    Explainer,
    GradCAM,
    GradCAMPlusPlus,
    InputXGradient,
    IntegratedGradients,
    Occlusion,
    Saliency,
    SmoothGrad,
)
from lightning_xai.metrics import (
    ROAD,
    DeletionAUC,
    Infidelity,
    InsertionAUC,
    MaxSensitivity,
    MIFLIFFidelity,
    MuFidelity,
)
from lightning_xai.probes import FillInTheBlanks, PrototypeGeneration, activation_similarity

__version__ = "0.1.0"

__all__ = [
    "ROAD",
    "Captum",
    "DeletionAUC",
    "Explainer",
    "ExplanationMonitor",
    "FaithfulnessGate",
    "FaithfulnessRegressionError",
    "FillInTheBlanks",
    "GradCAM",
    "GradCAMPlusPlus",
    "Infidelity",
    "InputXGradient",
    "InsertionAUC",
    "IntegratedGradients",
    "MIFLIFFidelity",
    "MaxSensitivity",
    "MuFidelity",
    "Occlusion",
    "ProbeMonitor",
    "PrototypeGeneration",
    "Saliency",
    "SmoothGrad",
    "__version__",
    "activation_similarity",
]
