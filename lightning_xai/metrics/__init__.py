"""Faithfulness metrics and global aggregates as ``torchmetrics.Metric`` classes."""

from lightning_xai.metrics.base import FaithfulnessMetric
from lightning_xai.metrics.deletion_insertion import DeletionAUC, InsertionAUC
from lightning_xai.metrics.drift import ExplanationDrift
from lightning_xai.metrics.global_attribution import GlobalAttribution
from lightning_xai.metrics.global_concepts import GlobalConceptRelevance
from lightning_xai.metrics.infidelity import Infidelity
from lightning_xai.metrics.mif_lif import MIFLIFFidelity
from lightning_xai.metrics.mufidelity import MuFidelity
from lightning_xai.metrics.peppr import PEPPR
from lightning_xai.metrics.randomisation import ModelRandomisation, RandomLogit
from lightning_xai.metrics.relevance_mass import RelevanceMass
from lightning_xai.metrics.road import ROAD
from lightning_xai.metrics.robustness import (
    AvgSensitivity,
    LocalLipschitzEstimate,
    RelativeInputStability,
    RelativeOutputStability,
    RelativeRepresentationStability,
)
from lightning_xai.metrics.sensitivity import MaxSensitivity
from lightning_xai.metrics.similarity import SimilarityDeletionAUC, SimilarityInsertionAUC
from lightning_xai.metrics.spectral_relevance import SpectralRelevance

__all__ = [
    "PEPPR",
    "ROAD",
    "AvgSensitivity",
    "DeletionAUC",
    "ExplanationDrift",
    "FaithfulnessMetric",
    "GlobalAttribution",
    "GlobalConceptRelevance",
    "Infidelity",
    "InsertionAUC",
    "LocalLipschitzEstimate",
    "MIFLIFFidelity",
    "MaxSensitivity",
    "ModelRandomisation",
    "MuFidelity",
    "RandomLogit",
    "RelativeInputStability",
    "RelativeOutputStability",
    "RelativeRepresentationStability",
    "RelevanceMass",
    "SimilarityDeletionAUC",
    "SimilarityInsertionAUC",
    "SpectralRelevance",
]
