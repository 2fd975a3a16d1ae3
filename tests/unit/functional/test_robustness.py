"""Robustness metrics against Quantus 0.6 on the same model, inputs, attributions and perturbations."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from lightning_xai.explainers import Saliency
from lightning_xai.functional.noise import perturbation_noise
from lightning_xai.functional.robustness import (
    average_sensitivity,
    local_lipschitz_estimate,
    relative_input_stability,
    relative_output_stability,
    relative_representation_stability,
)
from tests.helpers.models import LinearModel, ResidualCNN

quantus = pytest.importorskip("quantus")

N_SAMPLES, SEED = 4, 3


class GradientTimesInput:
    """x * d(target logit)/dx summed over channels: a plain callable explainer."""

    def __call__(self, model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
        with torch.enable_grad():
            inputs = inputs.detach().clone().requires_grad_(True)
            scores = model(inputs).gather(1, target.view(-1, 1)).sum()
            (gradient,) = torch.autograd.grad(scores, inputs)
        return (gradient * inputs).sum(1, keepdim=True).detach()


def _case() -> tuple[nn.Module, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    model = ResidualCNN(in_channels=3, num_classes=4).eval()
    inputs = torch.randn(3, 3, 6, 6, generator=generator)
    with torch.no_grad():
        target = model(inputs).argmax(1)
    return model, inputs, target


def _shared_perturbation(noise: Tensor) -> Callable[..., np.ndarray]:
    """A Quantus ``perturb_func`` adding our perturbation ``s`` at its ``s``-th call (one batch, in order)."""
    calls = iter(noise.flatten(1).numpy())

    def perturb(arr: np.ndarray, indices: np.ndarray, **kwargs: Any) -> np.ndarray:
        return arr + next(calls)[None, :]

    return perturb


def _quantus(metric: Any, model: nn.Module, inputs: Tensor, target: Tensor, explainer: Callable) -> np.ndarray:
    def explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **kwargs: Any) -> np.ndarray:
        batch = torch.as_tensor(inputs, dtype=torch.float32)
        return explainer(model, batch, torch.as_tensor(targets).long()).numpy()

    attributions = explainer(model, inputs, target).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = metric(
            model=model,
            x_batch=inputs.numpy(),
            y_batch=target.numpy(),
            a_batch=attributions,
            explain_func=explain,
            device="cpu",
            batch_size=64,
        )
    return np.asarray(scores, dtype=np.float64)


QUANTUS_OPTIONS = {"disable_warnings": True, "nr_samples": N_SAMPLES}


NO_FLIP = {"return_nan_when_prediction_changes": False}
#: name -> (ours, our extra arguments, Quantus factory taking its perturb_func, radius, noise)
PARITY: dict[str, tuple[Callable, dict, Callable, float, str]] = {
    "avg_sensitivity": (
        average_sensitivity,
        {},
        lambda p: quantus.AvgSensitivity(perturb_func=p, **QUANTUS_OPTIONS),
        0.2,
        "uniform",
    ),
    "local_lipschitz": (
        local_lipschitz_estimate,
        {},
        lambda p: quantus.LocalLipschitzEstimate(perturb_func=p, normalise=False, **QUANTUS_OPTIONS),
        0.1,
        "normal",
    ),
    "ris": (
        relative_input_stability,
        {"keep_prediction": False},
        lambda p: quantus.RelativeInputStability(perturb_func=p, **NO_FLIP, **QUANTUS_OPTIONS),
        0.2,
        "uniform",
    ),
    "ros": (
        relative_output_stability,
        {"keep_prediction": False},
        lambda p: quantus.RelativeOutputStability(perturb_func=p, **NO_FLIP, **QUANTUS_OPTIONS),
        0.2,
        "uniform",
    ),
    "rrs": (
        relative_representation_stability,
        {"keep_prediction": False, "layers": ["stem.0", "head_conv"]},
        lambda p: quantus.RelativeRepresentationStability(
            perturb_func=p, layer_names=["stem.0", "head_conv"], **NO_FLIP, **QUANTUS_OPTIONS
        ),
        0.2,
        "uniform",
    ),
}


@pytest.mark.parametrize("name", list(PARITY))
def test_matches_quantus_on_the_same_perturbations(name: str) -> None:
    ours, extra, reference, radius, noise = PARITY[name]
    model, inputs, target = _case()
    explainer = GradientTimesInput()
    options = {"radius": radius, "n_samples": N_SAMPLES, "noise": noise, "batch_size": 5, "seed": SEED, **extra}
    got = ours(explainer, model, inputs, target, **options).double().numpy()
    perturbations = perturbation_noise(inputs, N_SAMPLES, radius, noise, SEED)  # type: ignore[arg-type]
    expected = _quantus(reference(_shared_perturbation(perturbations)), model, inputs, target, explainer)
    assert np.all(np.isfinite(expected))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_keep_prediction_matches_a_per_sample_loop() -> None:
    """Leaving out the perturbations that flip the prediction, against a loop over samples and perturbations."""
    model = LinearModel(shape=(3, 6, 6), num_classes=4)
    inputs = 0.3 * torch.randn(3, 3, 6, 6, generator=torch.Generator().manual_seed(5))
    target = model(inputs).argmax(1).detach()
    explainer = GradientTimesInput()
    radius = 0.5  # large enough for some perturbations to change the class
    ours = relative_input_stability(explainer, model, inputs, target, radius=radius, n_samples=6, seed=1)
    noise = perturbation_noise(inputs, 6, radius, "uniform", 1)
    reference = explainer(model, inputs, target)
    expected, flipped = [], 0
    for b in range(inputs.shape[0]):
        values = []
        for s in range(6):
            x, xs = inputs[b : b + 1].double(), (inputs[b : b + 1] + noise[s]).double()
            with torch.no_grad():
                if model(xs.float()).argmax(1) != model(x.float()).argmax(1):
                    flipped += 1
                    continue
            e, es = reference[b : b + 1].double(), explainer(model, xs.float(), target[b : b + 1]).double()
            top = torch.linalg.norm(((e - es) / torch.where(e == 0, 1e-6, e)).flatten())
            bottom = torch.linalg.norm(((x - xs) / torch.where(x == 0, 1e-6, x)).flatten())
            values.append(float(top / max(float(bottom), 1e-6)))
        expected.append(max(values) if values else float("nan"))
    assert 0 < flipped < 18, "the test needs some perturbations that change the prediction and some that do not"
    np.testing.assert_allclose(ours.double().numpy(), np.array(expected), rtol=1e-4)


def test_known_answers_on_a_linear_model() -> None:
    """Saliency of a linear model is |W[target]| for every input: every robustness score is 0."""
    model = LinearModel(shape=(1, 5, 5), num_classes=3)
    inputs = torch.rand(4, 1, 5, 5, generator=torch.Generator().manual_seed(0)) + 0.5
    target = torch.tensor([0, 1, 2, 1])
    explainer = Saliency()
    for function in (average_sensitivity, local_lipschitz_estimate, relative_input_stability):
        assert torch.equal(function(explainer, model, inputs, target, n_samples=3), torch.zeros(4)), function
    assert torch.equal(relative_output_stability(explainer, model, inputs, target, n_samples=3), torch.zeros(4))


def test_identity_map_has_lipschitz_constant_one_and_unit_relative_input_stability() -> None:
    model = LinearModel(shape=(1, 4, 4), num_classes=2)
    inputs = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(1)) + 0.5
    target = torch.tensor([0, 1, 0])

    def identity(model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
        return inputs.clone()

    lipschitz = local_lipschitz_estimate(identity, model, inputs, target, n_samples=5)
    assert torch.allclose(lipschitz, torch.ones(3), atol=1e-6)
    stability = relative_input_stability(identity, model, inputs, target, n_samples=5, keep_prediction=False)
    assert torch.allclose(stability, torch.ones(3), atol=1e-5)  # the relative map change is the relative input change


def test_chunk_size_does_not_change_the_scores_and_hooks_are_removed() -> None:
    model, inputs, target = _case()
    explainer = GradientTimesInput()
    whole = relative_representation_stability(explainer, model, inputs, target, n_samples=3, batch_size=100)
    chunked = relative_representation_stability(explainer, model, inputs, target, n_samples=3, batch_size=2)
    assert torch.allclose(whole, chunked, rtol=1e-5, equal_nan=True)
    for module in model.modules():
        assert not module._forward_hooks


@pytest.mark.parametrize(
    ("function", "arguments", "match"),
    [
        (average_sensitivity, {"n_samples": 0}, "n_samples"),
        (average_sensitivity, {"radius": -1.0}, "radius"),
        (local_lipschitz_estimate, {"noise": "laplace"}, "noise"),
        (relative_input_stability, {"eps": 0.0}, "eps"),
        (relative_representation_stability, {"layers": "nope"}, "nope"),
        (relative_representation_stability, {"layers": []}, "layers"),
    ],
)
def test_bad_arguments_are_named(function: Callable, arguments: dict, match: str) -> None:
    model, inputs, target = _case()
    with pytest.raises(ValueError, match=match):
        function(GradientTimesInput(), model, inputs, target, **arguments)


def test_binary_head_keeps_the_sign_of_its_logit() -> None:
    """For a single logit the prediction is ``logit > 0``: a per-sample loop gives the same kept perturbations."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 1)).eval()
    inputs = 0.2 * torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    target = torch.zeros(4, dtype=torch.long)
    explainer = GradientTimesInput()
    ours = relative_output_stability(explainer, model, inputs, target, radius=0.5, n_samples=6, seed=0)
    noise = perturbation_noise(inputs, 6, 0.5, "uniform", 0)
    with torch.no_grad():
        logits = model(inputs)[:, 0]
        perturbed = model((inputs[:, None] + noise[None]).flatten(0, 1))[:, 0].view(4, 6)
    kept = (perturbed > 0) == (logits > 0)[:, None]
    assert bool(kept.any()) and not bool(kept.all())
    everything = relative_output_stability(
        explainer, model, inputs, target, radius=0.5, n_samples=6, seed=0, keep_prediction=False
    )
    assert bool((ours[kept.any(1)] <= everything[kept.any(1)] + 1e-6).all())
    assert torch.equal(ours.isnan(), ~kept.any(1))
