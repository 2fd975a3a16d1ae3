from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from lightning_xai.probes import activation_similarity, layer_activations


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 3),
    )


@pytest.mark.parametrize("reduction", ["flatten", "channel_mean"])
def test_scores_match_a_plain_reference(reduction: str) -> None:
    model = _model()
    generator = torch.Generator().manual_seed(2)
    natural = torch.rand(12, 1, 8, 8, generator=generator)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 0, 1])
    prototypes = torch.rand(3, 1, 8, 8, generator=generator)
    baseline = torch.rand(3, 1, 8, 8, generator=generator)
    classes = [2, 0, 1]
    scores = activation_similarity(
        model,
        prototypes,
        natural,
        ["1", "4"],
        natural_labels=labels,
        classes=classes,
        baseline=baseline,
        reduction=reduction,
        batch_size=5,
    )
    with torch.no_grad():
        for name, depth in (("1", 2), ("4", 5)):  # activations by slicing the Sequential: no hooks

            def vectors(x: torch.Tensor, depth: int = depth) -> np.ndarray:
                out = model[:depth](x)
                return (out.mean(dim=(2, 3)) if reduction == "channel_mean" else out.flatten(1)).numpy()

            natural_vectors = vectors(natural)
            for row, generated in (("", vectors(prototypes)), ("baseline_", vectors(baseline))):
                for k, cls in enumerate(classes):
                    mean = natural_vectors[labels.numpy() == cls].mean(0)
                    l1 = np.abs(generated[k] - mean).mean()
                    rho = stats.spearmanr(generated[k], mean).statistic
                    assert abs(float(scores[name][f"{row}l1"][k]) - l1) < 1e-5
                    assert abs(float(scores[name][f"{row}spearman"][k]) - rho) < 1e-5
    assert set(scores["1"]) == {"l1", "spearman", "baseline_l1", "baseline_spearman"}


def test_identical_activations_score_perfectly() -> None:
    model = _model()
    natural = torch.rand(1, 1, 8, 8)
    scores = activation_similarity(model, natural.clone(), natural, "4", natural_labels=torch.tensor([0]))
    assert float(scores["4"]["l1"][0]) == 0.0
    assert abs(float(scores["4"]["spearman"][0]) - 1.0) < 1e-6


def test_hooks_are_removed_and_the_model_is_left_as_found() -> None:
    model = _model()
    model.train()
    inputs = torch.rand(3, 1, 8, 8)
    rng = torch.get_rng_state()
    layer_activations(model, inputs, ["1", "3"])
    assert all(not module._forward_hooks for module in model.modules())
    assert all(module.training for module in model.modules())
    assert torch.equal(torch.get_rng_state(), rng)
    # Also when the forward fails half way.
    with pytest.raises(RuntimeError):
        layer_activations(model, torch.rand(3, 2, 8, 8), ["1"])
    assert all(not module._forward_hooks for module in model.modules())


def test_bad_arguments_are_refused() -> None:
    model = _model()
    natural, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 0, 1, 1])
    prototypes = torch.rand(3, 1, 8, 8)
    with pytest.raises(ValueError, match=r"no image of classes \[2\]"):
        activation_similarity(model, prototypes, natural, ["1"], natural_labels=labels)
    with pytest.raises(ValueError, match="not a module of the model"):
        activation_similarity(model, prototypes[:2], natural, ["relu9"], natural_labels=labels)
    with pytest.raises(ValueError, match="`layers`"):
        activation_similarity(model, prototypes[:2], natural, [], natural_labels=labels)
    with pytest.raises(ValueError, match="`natural_labels`"):
        activation_similarity(model, prototypes[:2], natural, ["1"], natural_labels=labels[:3])
    with pytest.raises(ValueError, match="`baseline`"):
        activation_similarity(model, prototypes[:2], natural, ["1"], natural_labels=labels, baseline=prototypes)
    with pytest.raises(ValueError, match="`natural_inputs` must have the prototypes"):
        activation_similarity(model, prototypes[:2], torch.rand(4, 1, 6, 6), ["1"], natural_labels=labels)
    with pytest.raises(ValueError, match="`classes`"):
        activation_similarity(model, prototypes[:2], natural, ["1"], natural_labels=labels, classes=[0])
    with pytest.raises(ValueError, match="`reduction`"):
        activation_similarity(model, prototypes[:2], natural, ["1"], natural_labels=labels, reduction="max")
