"""Saliency, InputXGradient, IntegratedGradients and SmoothGrad against Captum called directly and known answers."""

from __future__ import annotations

import captum.attr
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_xai.explainers import InputXGradient, IntegratedGradients, Saliency, SmoothGrad
from tests.helpers.models import LinearModel, primed_residual_cnn, residual_batch


def reductions(raw: Tensor) -> dict[str, Tensor]:
    """The three channel reductions written out independently of ``reduce_channels``."""
    return {
        "sum": raw.sum(1, keepdim=True),
        "abs_sum": raw.abs().sum(1, keepdim=True),
        "max_abs": raw.abs().max(1, keepdim=True).values,
    }


def check_parity(
    explainer_cls: type, kwargs: dict, reference: Tensor, model: nn.Module, inputs: Tensor, target
) -> None:
    raw = explainer_cls(channel_reduction=None, **kwargs)(model, inputs, target)
    assert raw.shape == inputs.shape and raw.dtype == torch.float32 and raw.device == inputs.device
    torch.testing.assert_close(raw, reference)
    for name, expected in reductions(reference).items():
        reduced = explainer_cls(channel_reduction=name, **kwargs)(model, inputs, target)
        assert reduced.shape == (inputs.shape[0], 1, *inputs.shape[2:])
        torch.testing.assert_close(reduced, expected)


def test_saliency_matches_captum(device: torch.device) -> None:
    model, (inputs, target) = primed_residual_cnn(device), residual_batch(device)
    reference = captum.attr.Saliency(model).attribute(inputs.clone().requires_grad_(), target=target)
    check_parity(Saliency, {}, reference, model, inputs, target)
    torch.testing.assert_close(Saliency()(model, inputs, target), reference.sum(1, keepdim=True))  # abs_sum


def test_input_x_gradient_matches_captum(device: torch.device) -> None:
    model, (inputs, target) = primed_residual_cnn(device), residual_batch(device)
    reference = captum.attr.InputXGradient(model).attribute(inputs.clone().requires_grad_(), target=target)
    check_parity(InputXGradient, {}, reference, model, inputs, target)
    torch.testing.assert_close(InputXGradient()(model, inputs, target), reference.sum(1, keepdim=True))  # sum


@pytest.mark.parametrize(
    ("kwargs", "captum_kwargs"),
    [
        ({"n_steps": 8}, {"n_steps": 8, "baselines": 0.0}),
        (
            {"n_steps": 6, "baseline": 0.5, "internal_batch_size": 7, "method": "riemann_trapezoid"},
            {"n_steps": 6, "baselines": 0.5, "internal_batch_size": 7, "method": "riemann_trapezoid"},
        ),
    ],
)
def test_integrated_gradients_matches_captum(device: torch.device, kwargs: dict, captum_kwargs: dict) -> None:
    model, (inputs, target) = primed_residual_cnn(device), residual_batch(device)
    reference = captum.attr.IntegratedGradients(model).attribute(
        inputs.clone().requires_grad_(), target=target, **captum_kwargs
    )
    check_parity(IntegratedGradients, kwargs, reference, model, inputs, target)


def test_integrated_gradients_tensor_baseline_matches_captum(device: torch.device) -> None:
    model, (inputs, target) = primed_residual_cnn(device), residual_batch(device)
    baseline = torch.linspace(-1, 1, 8).view(1, 1, 1, 8)  # broadcast over batch, channels and rows
    reference = captum.attr.IntegratedGradients(model).attribute(
        inputs.clone().requires_grad_(), baselines=baseline.to(device).expand_as(inputs), target=target, n_steps=5
    )
    explainer = IntegratedGradients(n_steps=5, baseline=baseline, channel_reduction=None)
    torch.testing.assert_close(explainer(model, inputs, target), reference)


def test_smoothgrad_matches_seeded_noise_tunnel(device: torch.device) -> None:
    model, (inputs, target) = primed_residual_cnn(device), residual_batch(device)
    torch.manual_seed(3)
    if device.type == "cuda":
        torch.cuda.manual_seed(3)
    reference = captum.attr.NoiseTunnel(captum.attr.Saliency(model)).attribute(
        inputs.clone().requires_grad_(), nt_type="smoothgrad", nt_samples=5, stdevs=0.2, target=target, abs=False
    )
    check_parity(SmoothGrad, {"n_samples": 5, "stdev": 0.2, "seed": 3}, reference, model, inputs, target)
    # internal_batch_size=6 on 3 images: 2 noisy copies per chunk, Captum's nt_samples_batch_size=2.
    torch.manual_seed(3)
    if device.type == "cuda":
        torch.cuda.manual_seed(3)
    reference = captum.attr.NoiseTunnel(captum.attr.Saliency(model)).attribute(
        inputs.clone().requires_grad_(),
        nt_type="smoothgrad",
        nt_samples=5,
        nt_samples_batch_size=2,
        stdevs=0.2,
        target=target,
        abs=False,
    )
    chunked = SmoothGrad(n_samples=5, stdev=0.2, seed=3, internal_batch_size=6, channel_reduction=None)
    torch.testing.assert_close(chunked(model, inputs, target), reference)


def test_smoothgrad_input_x_gradient_base_matches_captum(device: torch.device) -> None:
    model, (inputs, target) = primed_residual_cnn(device), residual_batch(device)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.manual_seed(0)
    reference = captum.attr.NoiseTunnel(captum.attr.InputXGradient(model)).attribute(
        inputs.clone().requires_grad_(), nt_type="smoothgrad", nt_samples=3, stdevs=0.1, target=target
    )
    explainer = SmoothGrad(n_samples=3, stdev=0.1, base="InputXGradient", channel_reduction=None)
    torch.testing.assert_close(explainer(model, inputs, target), reference)


def test_smoothgrad_integrated_gradients_base_on_linear_model() -> None:
    """Linear model, IG base with baseline 0: each noisy copy gives (x + n) * w, so the mean is (x + mean n) * w."""
    model = LinearModel(shape=(2, 5, 5), num_classes=3)
    inputs, target = torch.randn(2, 2, 5, 5), torch.tensor([1, 2])
    weights = torch.stack([model.weight_map(int(t)) for t in target])
    maps = SmoothGrad(n_samples=2, stdev=1e-3, base="IntegratedGradients", channel_reduction=None)(
        model, inputs, target
    )
    torch.testing.assert_close(maps, inputs * weights, atol=1e-2, rtol=0)


def test_smoothgrad_is_seeded() -> None:
    model, (inputs, target) = primed_residual_cnn(torch.device("cpu")), residual_batch(torch.device("cpu"))
    first = SmoothGrad(n_samples=4, stdev=0.3, seed=5)(model, inputs, target)
    torch.rand(3)  # moving the global stream must not matter
    assert torch.equal(first, SmoothGrad(n_samples=4, stdev=0.3, seed=5)(model, inputs, target))
    assert not torch.allclose(first, SmoothGrad(n_samples=4, stdev=0.3, seed=6)(model, inputs, target))


# ----------------------------------------------------------------------------------- known answers on a linear model
def test_linear_model_known_answers(device: torch.device) -> None:
    model = LinearModel(shape=(2, 5, 5), num_classes=3).to(device)
    inputs = torch.randn(3, 2, 5, 5, device=device)
    target = torch.tensor([2, 0, 1], device=device)
    weights = torch.stack([model.weight_map(int(t)) for t in target])  # (B, C, H, W)

    torch.testing.assert_close(Saliency(channel_reduction=None)(model, inputs, target), weights.abs())
    torch.testing.assert_close(
        Saliency(channel_reduction="max_abs")(model, inputs, target), weights.abs().amax(1, True)
    )
    torch.testing.assert_close(InputXGradient(channel_reduction=None)(model, inputs, target), inputs * weights)
    # For a linear model the path integral is exact: IG = (x - x') * w, whatever the number of steps.
    integrated = IntegratedGradients(n_steps=3, baseline=0.5, channel_reduction=None)(model, inputs, target)
    torch.testing.assert_close(integrated, (inputs - 0.5) * weights)
    # The gradient of a linear model is the same at every noisy copy: SmoothGrad averages w itself.
    smooth = SmoothGrad(n_samples=4, stdev=1.0, channel_reduction=None)(model, inputs, target)
    torch.testing.assert_close(smooth, weights)


def test_integrated_gradients_completeness() -> None:
    model, (inputs, target) = primed_residual_cnn(torch.device("cpu")), residual_batch(torch.device("cpu"))
    maps = IntegratedGradients(n_steps=64, channel_reduction="sum")(model, inputs, target)
    with torch.no_grad():
        gap = model(inputs).gather(1, target[:, None]) - model(torch.zeros_like(inputs)).gather(1, target[:, None])
    torch.testing.assert_close(maps.sum(dim=(1, 2, 3)), gap.squeeze(1), atol=2e-3, rtol=2e-2)


# --------------------------------------------------------------------------------------------- callable target
def cosine_target(reference: Tensor):
    def score(embeddings: Tensor) -> Tensor:
        return F.cosine_similarity(embeddings, reference[None], dim=1)

    return score


def test_callable_target_embedding_similarity(device: torch.device) -> None:
    """An embedding model explained by its cosine similarity to a fixed reference vector."""
    model, (inputs, _) = primed_residual_cnn(device), residual_batch(device)
    reference_vector = torch.tensor([1.0, -0.5, 0.25, 2.0], device=device)
    target = cosine_target(reference_vector)

    leaf = inputs.clone().requires_grad_().requires_grad_(True)
    (gradient,) = torch.autograd.grad(target(model(leaf)).sum(), leaf)
    torch.testing.assert_close(Saliency(channel_reduction=None)(model, inputs, target), gradient.abs())
    torch.testing.assert_close(InputXGradient(channel_reduction=None)(model, inputs, target), inputs * gradient)

    def similarity(images: Tensor) -> Tensor:
        return target(model(images))

    expected = captum.attr.IntegratedGradients(similarity).attribute(
        inputs.clone().requires_grad_(), n_steps=6, internal_batch_size=5
    )
    explainer = IntegratedGradients(n_steps=6, internal_batch_size=5, channel_reduction=None)
    torch.testing.assert_close(explainer(model, inputs, target), expected)


# ------------------------------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: Saliency(channel_reduction="mean"), ValueError, "channel_reduction"),
        (lambda: InputXGradient(channel_reduction="abs"), ValueError, "channel_reduction"),
        (lambda: IntegratedGradients(n_steps=0), ValueError, "n_steps"),
        (lambda: IntegratedGradients(n_steps=2.5), TypeError, "n_steps"),
        (lambda: IntegratedGradients(internal_batch_size=0), ValueError, "internal_batch_size"),
        (lambda: IntegratedGradients(method="simpson"), ValueError, "method"),
        (lambda: IntegratedGradients(baseline=float("nan")), ValueError, "baseline"),
        (lambda: IntegratedGradients(baseline="black"), TypeError, "baseline"),
        (lambda: IntegratedGradients(baseline=torch.tensor([float("inf")])), ValueError, "baseline"),
        (lambda: SmoothGrad(n_samples=0), ValueError, "n_samples"),
        (lambda: SmoothGrad(stdev=0.0), ValueError, "stdev"),
        (lambda: SmoothGrad(base="GuidedBackprop"), ValueError, "base"),
        (lambda: SmoothGrad(seed=-1), ValueError, "seed"),
        (lambda: SmoothGrad(channel_reduction="l2"), ValueError, "channel_reduction"),
    ],
)
def test_bad_arguments_are_named(build, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        build()


def test_baseline_that_does_not_broadcast() -> None:
    model, (inputs, target) = primed_residual_cnn(torch.device("cpu")), residual_batch(torch.device("cpu"))
    with pytest.raises(ValueError, match="baseline"):
        IntegratedGradients(n_steps=2, baseline=torch.zeros(5, 5))(model, inputs, target)


def test_repr_shows_configuration() -> None:
    assert repr(SmoothGrad(n_samples=3)) == (
        "SmoothGrad(channel_reduction='abs_sum', n_samples=3, stdev=0.15, base='Saliency', internal_batch_size=None, "
        "seed=0)"
    )
