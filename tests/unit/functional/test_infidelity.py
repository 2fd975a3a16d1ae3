"""Infidelity against captum.metrics.infidelity on the same perturbations."""

import pytest
import torch
from captum.metrics import infidelity as captum_infidelity
from torch import Tensor

from lightning_xai.functional.infidelity import infidelity
from lightning_xai.functional.noise import perturbation_noise
from tests.helpers.models import LinearModel, ResidualCNN


def _captum_perturbation(noise: Tensor, batch: int):
    """A Captum perturb_func returning our (n, C, H, W) draws in Captum's sample-major order, as (I, x - I)."""
    arranged = noise.repeat(batch, 1, 1, 1)

    def perturb(inputs: Tensor) -> tuple[Tensor, Tensor]:
        return arranged, inputs - arranged

    return perturb


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
def test_infidelity_matches_captum(normalize: bool, per_channel: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    model = ResidualCNN(in_channels=3, num_classes=4).eval()
    inputs = torch.randn(3, 3, 6, 6, generator=generator)
    maps = torch.randn(3, 3 if per_channel else 1, 6, 6, generator=generator)
    target = torch.tensor([0, 3, 2])
    n_samples, scale = 6, 0.2
    ours = infidelity(
        model, inputs, maps, target, n_samples=n_samples, noise_scale=scale, normalize=normalize, batch_size=4, seed=9
    )
    noise = perturbation_noise(inputs, n_samples, scale, "normal", seed=9)
    expected = captum_infidelity(
        model,
        _captum_perturbation(noise, 3),
        inputs,
        maps.expand_as(inputs),
        target=target,
        n_perturb_samples=n_samples,
        normalize=normalize,
    )
    assert torch.allclose(ours, expected.float(), rtol=1e-4, atol=1e-6)


def test_exact_linear_attribution_has_zero_infidelity() -> None:
    model = LinearModel(shape=(2, 4, 4), num_classes=3)
    inputs, target = torch.randn(2, 2, 4, 4), torch.tensor([0, 2])
    weights = torch.stack([model.weight_map(0), model.weight_map(2)])
    assert infidelity(model, inputs, weights, target, normalize=False).max().item() < 1e-8
    assert infidelity(model, inputs, 5 * weights, target, normalize=True).max().item() < 1e-8
    assert infidelity(model, inputs, 5 * weights, target, normalize=False).min().item() > 1e-3


def test_infidelity_does_not_depend_on_the_chunk_size_and_is_seeded() -> None:
    model = ResidualCNN(in_channels=1, num_classes=3).eval()
    inputs, maps, target = torch.randn(3, 1, 5, 5), torch.rand(3, 1, 5, 5), torch.tensor([0, 1, 2])
    reference = infidelity(model, inputs, maps, target, n_samples=5, batch_size=100)
    for batch_size in (1, 2, 4, 7):
        assert torch.allclose(
            infidelity(model, inputs, maps, target, n_samples=5, batch_size=batch_size), reference, rtol=1e-5
        )
    assert not torch.allclose(infidelity(model, inputs, maps, target, n_samples=5, seed=1), reference)


def test_bad_noise_scale_is_rejected() -> None:
    with pytest.raises(ValueError, match="noise_scale"):
        infidelity(
            torch.nn.Flatten(), torch.rand(1, 1, 2, 2), torch.rand(1, 1, 2, 2), torch.tensor([0]), noise_scale=0.0
        )
