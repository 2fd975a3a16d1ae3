"""Attribution methods: ``explainer(model, inputs, target) -> (B, 1, H, W)``."""

from lightning_xai.explainers.attention_rollout import AttentionRollout
from lightning_xai.explainers.base import Explainer, reduce_channels
from lightning_xai.explainers.cam import GradCAM, GradCAMPlusPlus
from lightning_xai.explainers.captum_adapter import Captum
from lightning_xai.explainers.concept_relevance import ConceptRelevance, Concepts
from lightning_xai.explainers.gradient import InputXGradient, IntegratedGradients, Saliency, SmoothGrad
from lightning_xai.explainers.lrp import LRP
from lightning_xai.explainers.occlusion import Occlusion
from lightning_xai.explainers.perturbation_masks import ExtremalPerturbation, MeaningfulPerturbation
from lightning_xai.explainers.rise import RISE
from lightning_xai.explainers.score_cam import ScoreCAM
from lightning_xai.explainers.sidu import SIDU
from lightning_xai.explainers.similarity import (
    AveragedTransforms,
    ConditionalOcclusion,
    ContextAgnosticConditionalOcclusion,
    InteractionCAM,
    PairExplainer,
    PairwiseOcclusion,
    PixelInvariance,
)
from lightning_xai.explainers.sobol import Sobol

__all__ = [
    "LRP",
    "RISE",
    "SIDU",
    "AttentionRollout",
    "AveragedTransforms",
    "Captum",
    "ConceptRelevance",
    "Concepts",
    "ConditionalOcclusion",
    "ContextAgnosticConditionalOcclusion",
    "Explainer",
    "ExtremalPerturbation",
    "GradCAM",
    "GradCAMPlusPlus",
    "InputXGradient",
    "IntegratedGradients",
    "InteractionCAM",
    "MeaningfulPerturbation",
    "Occlusion",
    "PairExplainer",
    "PairwiseOcclusion",
    "PixelInvariance",
    "Saliency",
    "ScoreCAM",
    "SmoothGrad",
    "Sobol",
    "reduce_channels",
]
