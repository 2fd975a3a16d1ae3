"""Pure tensor functions behind every metric and aggregate (no state)."""

from lightning_xai.functional.baselines import gaussian_blur, make_baseline, scaled_blur
from lightning_xai.functional.deletion_insertion import deletion_auc, deletion_curve, insertion_auc, insertion_curve
from lightning_xai.functional.drift import explanation_drift
from lightning_xai.functional.global_attribution import global_attribution, normalize_maps
from lightning_xai.functional.global_concepts import global_concept_relevance
from lightning_xai.functional.infidelity import infidelity
from lightning_xai.functional.mif_lif import mif_lif_curves, mif_lif_fidelity
from lightning_xai.functional.mufidelity import mufidelity
from lightning_xai.functional.peppr import peppr
from lightning_xai.functional.perturbation_curves import curve_auc, perturbation_curves, pixel_ranks
from lightning_xai.functional.randomisation import map_similarity, model_randomisation, random_logit
from lightning_xai.functional.ranking import average_ranks, spearman_correlation
from lightning_xai.functional.relevance_mass import pointing_game, relevance_mass
from lightning_xai.functional.road import linear_imputation, noisy_linear_imputation, road_combined, road_curves
from lightning_xai.functional.robustness import (
    average_sensitivity,
    local_lipschitz_estimate,
    relative_input_stability,
    relative_output_stability,
    relative_representation_stability,
)
from lightning_xai.functional.sensitivity import max_sensitivity
from lightning_xai.functional.similarity_curves import (
    similarity_curves,
    similarity_deletion_auc,
    similarity_insertion_auc,
)
from lightning_xai.functional.spectral_relevance import SpectralRelevanceResult, spectral_relevance

__all__ = [
    "SpectralRelevanceResult",
    "average_ranks",
    "average_sensitivity",
    "curve_auc",
    "deletion_auc",
    "deletion_curve",
    "explanation_drift",
    "gaussian_blur",
    "global_attribution",
    "global_concept_relevance",
    "infidelity",
    "insertion_auc",
    "insertion_curve",
    "linear_imputation",
    "local_lipschitz_estimate",
    "make_baseline",
    "map_similarity",
    "max_sensitivity",
    "mif_lif_curves",
    "mif_lif_fidelity",
    "model_randomisation",
    "mufidelity",
    "noisy_linear_imputation",
    "normalize_maps",
    "peppr",
    "perturbation_curves",
    "pixel_ranks",
    "pointing_game",
    "random_logit",
    "relative_input_stability",
    "relative_output_stability",
    "relative_representation_stability",
    "relevance_mass",
    "road_combined",
    "road_curves",
    "scaled_blur",
    "similarity_curves",
    "similarity_deletion_auc",
    "similarity_insertion_auc",
    "spearman_correlation",
    "spectral_relevance",
]
