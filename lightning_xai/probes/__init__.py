"""Global, model-level probes: what a model fills in, what it considers typical of a class."""

from lightning_xai.probes.activation_similarity import activation_similarity, layer_activations
from lightning_xai.probes.fill_in_the_blanks import (
    FillInTheBlanks,
    center_mask,
    class_mean_fills,
    grid_mask,
    random_patch_mask,
)
from lightning_xai.probes.prototype_generation import PrototypeGeneration, high_frequency_energy

__all__: list[str] = [
    "FillInTheBlanks",
    "PrototypeGeneration",
    "activation_similarity",
    "center_mask",
    "class_mean_fills",
    "grid_mask",
    "high_frequency_energy",
    "layer_activations",
    "random_patch_mask",
]
