"""lightning_xai: explanations of image models as a monitored, tested property of every training run."""

from lightning_xai.callbacks import ExplanationMonitor, FaithfulnessGate, FaithfulnessRegressionError, ProbeMonitor
from lightning_xai.callbacks.analyses import SpectralRelevanceAnalysis
from lightning_xai.explainers import (
    RISE,
    SIDU,
    Captum,
    Explainer,
    GradCAM,
    GradCAMPlusPlus,
    InputXGradient,
    IntegratedGradients,
    Occlusion,
    Saliency,
    ScoreCAM,
    SmoothGrad,
    Sobol,
)
from lightning_xai.metrics import (
    PEPPR,
    ROAD,
    DeletionAUC,
    ExplanationDrift,
    GlobalAttribution,
    Infidelity,
    InsertionAUC,
    MaxSensitivity,
    MIFLIFFidelity,
    MuFidelity,
    RelevanceMass,
    SpectralRelevance,
)
from lightning_xai.probes import FillInTheBlanks, PrototypeGeneration, activation_similarity

__version__ = "0.1.0"

__all__ = [
    "PEPPR",
    "RISE",
    "ROAD",
    "SIDU",
    "Captum",
    "DeletionAUC",
    "Explainer",
    "ExplanationDrift",
    "ExplanationMonitor",
    "FaithfulnessGate",
    "FaithfulnessRegressionError",
    "FillInTheBlanks",
    "GlobalAttribution",
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
    "RelevanceMass",
    "Saliency",
    "ScoreCAM",
    "SmoothGrad",
    "Sobol",
    "SpectralRelevance",
    "SpectralRelevanceAnalysis",
    "__version__",
    "activation_similarity",
]
