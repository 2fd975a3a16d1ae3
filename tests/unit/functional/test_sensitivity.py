"""Max-sensitivity against captum.metrics.sensitivity_max on the same perturbations."""

import math

import pytest
import torch
from captum.metrics import sensitivity_max
from torch import Tensor, nn

from lightning_xai._typing import TargetType
from lightning_xai.explainers.base import Explainer
from lightning_xai.functional.noise import perturbation_noise
from lightning_xai.functional.sensitivity import max_sensitivity
from tests.helpers.models import ResidualCNN


class GradientTimesInput(Explainer):
    """A tiny local explainer: x * d(target logit)/dx summed over channels."""

    def attribute(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        inputs = inputs.requires_grad_(True)
        outputs = model(inputs)
        scores = outputs.gather(1, target.view(-1, 1)).sum() if isinstance(target, Tensor) else target(outputs).sum()
        (gradient,) = torch.autograd.grad(scores, inputs)
        return (gradient * inputs).sum(1, keepdim=True).detach()


@pytest.mark.parametrize("norm_ord", ["fro", math.inf])
def test_max_sensitivity_matches_captum(norm_ord: object) -> None:
    generator = torch.Generator().manual_seed(0)
    model = ResidualCNN(in_channels=3, num_classes=4).eval()
    inputs = torch.randn(3, 3, 6, 6, generator=generator)
    target = torch.tensor([1, 0, 3])
    explainer = GradientTimesInput()
    n_samples, radius = 5, 0.05
    ours = max_sensitivity(
        explainer, model, inputs, target, radius=radius, n_samples=n_samples, norm_ord=norm_ord, batch_size=4, seed=2
    )
    noise = perturbation_noise(inputs, n_samples, radius, "uniform", seed=2)
    assert float(noise.abs().max()) <= radius
    arranged = noise.repeat(inputs.shape[0], 1, 1, 1)  # Captum is sample-major: item b * n + s

    def perturb(expanded: Tensor) -> Tensor:
        return expanded + arranged

    def explanation(batch: Tensor | tuple[Tensor, ...], target: Tensor) -> Tensor | tuple[Tensor, ...]:
        if isinstance(batch, tuple):  # Captum explains the unperturbed inputs as a tuple and expects a tuple back
            return (explainer(model, batch[0], target),)
        return explainer(model, batch, target)

    expected = sensitivity_max(
        explanation, inputs, perturb_func=perturb, n_perturb_samples=n_samples, norm_ord=norm_ord, target=target
    )
    assert torch.allclose(ours, expected.float(), rtol=1e-4, atol=1e-6)


def test_sensitivity_does_not_depend_on_the_chunk_size() -> None:
    model = ResidualCNN(in_channels=1, num_classes=3).eval()
    inputs, target = torch.randn(3, 1, 5, 5), torch.tensor([0, 1, 2])
    explainer = GradientTimesInput()
    reference = max_sensitivity(explainer, model, inputs, target, n_samples=4, batch_size=100)
    for batch_size in (1, 5):
        assert torch.allclose(
            max_sensitivity(explainer, model, inputs, target, n_samples=4, batch_size=batch_size), reference, rtol=1e-5
        )


@pytest.mark.parametrize(
    ("arguments", "match"),
    [({"radius": 0.0}, "radius"), ({"norm_ord": "nuc"}, "norm_ord"), ({"n_samples": 0}, "n_samples")],
)
def test_bad_arguments_are_rejected(arguments: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        max_sensitivity(GradientTimesInput(), nn.Flatten(), torch.rand(1, 1, 2, 2), torch.tensor([0]), **arguments)
