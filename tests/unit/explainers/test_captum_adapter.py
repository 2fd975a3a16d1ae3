"""The Captum adapter against the same captum.attr classes called directly."""

from __future__ import annotations

import random

import captum.attr
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_xai.explainers import Captum
from lightning_xai.explainers.captum_adapter import resolve_captum_method, seeded_rng
from tests.helpers.models import ResidualCNN


def setup() -> tuple[nn.Module, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(3)
    model = ResidualCNN().eval()
    return model, torch.randn(3, 3, 8, 8, generator=generator), torch.tensor([0, 3, 1])


@pytest.mark.parametrize("method", ["GuidedBackprop", "Deconvolution", "DeepLift", captum.attr.InputXGradient])
def test_primary_methods_match_captum(method: str | type) -> None:
    """Hook-based methods too (GuidedBackprop, DeepLift) on ResidualCNN's in-place ReLUs."""
    model, inputs, target = setup()
    cls = getattr(captum.attr, method) if isinstance(method, str) else method
    reference = cls(model).attribute(inputs.clone().requires_grad_(), target=target)
    raw = Captum(method, channel_reduction=None)(model, inputs, target)
    torch.testing.assert_close(raw, reference)
    torch.testing.assert_close(Captum(method)(model, inputs, target), reference.sum(1, keepdim=True))
    torch.testing.assert_close(
        Captum(method, channel_reduction="max_abs")(model, inputs, target), reference.abs().amax(1, keepdim=True)
    )


def test_attribute_kwargs_and_yaml_lists() -> None:
    model, inputs, target = setup()
    reference = captum.attr.Occlusion(model).attribute(
        inputs.clone(), sliding_window_shapes=(3, 2, 2), strides=(3, 2, 2), target=target
    )
    explainer = Captum("Occlusion", channel_reduction=None, sliding_window_shapes=[3, 2, 2], strides=[3, 2, 2])
    assert explainer.needs_grad is False
    torch.testing.assert_close(explainer(model, inputs, target), reference)


def test_init_kwargs_are_passed() -> None:
    model, inputs, target = setup()
    reference = captum.attr.IntegratedGradients(model, multiply_by_inputs=False).attribute(
        inputs.clone().requires_grad_(), target=target, n_steps=4
    )
    explainer = Captum(
        captum.attr.IntegratedGradients, channel_reduction=None, init_kwargs={"multiply_by_inputs": False}, n_steps=4
    )
    torch.testing.assert_close(explainer(model, inputs, target), reference)


def test_layer_gradcam_is_upsampled() -> None:
    model, inputs, target = setup()
    layer_maps = captum.attr.LayerGradCam(model, model.stem[2]).attribute(inputs, target=target, relu_attributions=True)
    reference = captum.attr.LayerAttribution.interpolate(layer_maps, (8, 8), interpolate_mode="bilinear")
    explainer = Captum("LayerGradCam", layer="stem.2", relu_attributions=True)
    assert explainer.name == "LayerGradCam"
    torch.testing.assert_close(explainer(model, inputs, target), reference)


def test_layer_method_default_layer_and_channel_reduction() -> None:
    """LayerActivation takes no target; its K channels are reduced, then upsampled; default layer = last conv."""
    model, inputs, target = setup()
    activation = captum.attr.LayerActivation(model, model.head_conv).attribute(inputs)
    expected = F.interpolate(activation.abs().sum(1, keepdim=True), size=(8, 8), mode="bilinear")
    torch.testing.assert_close(Captum("LayerActivation", channel_reduction="abs_sum")(model, inputs, target), expected)
    assert Captum("LayerActivation", channel_reduction=None)(model, inputs, target).shape == (3, 8, 8, 8)


def test_layer_deeplift_works_with_frozen_parameters() -> None:
    """Inside the explainer the parameters do not require grad; LayerDeepLift then needs inputs that do."""
    model, inputs, target = setup()
    reference = captum.attr.LayerDeepLift(model, model.head_conv).attribute(
        inputs.clone().requires_grad_(), target=target
    )
    expected = F.interpolate(reference.sum(1, keepdim=True), size=(8, 8), mode="bilinear")
    torch.testing.assert_close(Captum("LayerDeepLift", layer="head_conv")(model, inputs, target), expected)


def test_layer_integrated_gradients_and_in_place_relu() -> None:
    """Captum 0.9 limitation (documented in Captum's docstring): LayerIntegratedGradients cannot take a layer
    whose output is modified in place afterwards (stem.1, a BatchNorm before ReLU(inplace=True)); the module
    that applies the in-place op (stem.2) works."""
    model, inputs, target = setup()
    with pytest.raises(RuntimeError, match="in-place"):
        Captum("LayerIntegratedGradients", layer="stem.1", n_steps=2)(model, inputs, target)
    maps = Captum("LayerIntegratedGradients", layer="stem.2", n_steps=2)(model, inputs, target)
    assert maps.shape == (3, 1, 8, 8)


def test_stochastic_methods_are_seeded_like_captum() -> None:
    model, inputs, target = setup()
    baselines = torch.zeros(2, 3, 8, 8)
    torch.manual_seed(4)
    np.random.seed(4)  # GradientShap draws its path points from NumPy
    reference = captum.attr.GradientShap(model).attribute(
        inputs.clone().requires_grad_(), baselines=baselines, n_samples=3, target=target
    )
    explainer = Captum("GradientShap", channel_reduction=None, seed=4, baselines=baselines, n_samples=3)
    torch.testing.assert_close(explainer(model, inputs, target), reference)
    torch.testing.assert_close(explainer(model, inputs, target), reference)


def test_callable_target_with_a_model_method() -> None:
    """Methods that need an nn.Module (GuidedBackprop) get one whose forward returns the callable's scores."""
    model, inputs, _ = setup()
    reference_vector = torch.tensor([1.0, 0.0, -1.0, 0.5])

    def target(outputs: Tensor) -> Tensor:
        return F.cosine_similarity(outputs, reference_vector[None], dim=1)

    class Similarity(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: Tensor) -> Tensor:
            return target(self.model(x))

    reference = captum.attr.GuidedBackprop(Similarity()).attribute(inputs.clone().requires_grad_())
    torch.testing.assert_close(Captum("GuidedBackprop", channel_reduction=None)(model, inputs, target), reference)


def test_seeded_rng_leaves_global_streams() -> None:
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    with seeded_rng(7, torch.device("cpu")):
        drawn = torch.rand(3), np.random.rand(3), random.random()
    after = torch.rand(3), np.random.rand(3), random.random()
    torch.set_rng_state(states[0])
    np.random.set_state(states[1])
    random.setstate(states[2])
    assert torch.equal(after[0], torch.rand(3))
    assert np.array_equal(after[1], np.random.rand(3))
    assert after[2] == random.random()
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    assert torch.equal(drawn[0], torch.rand(3))
    assert np.array_equal(drawn[1], np.random.rand(3))
    assert drawn[2] == random.random()


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: Captum("GuidedBackprob"), ValueError, r"Close candidates.*GuidedBackprop"),
        (lambda: Captum("NeuronGradient"), ValueError, "neuron"),
        (lambda: Captum("NoiseTunnel"), ValueError, "SmoothGrad"),
        (lambda: Captum(nn.Linear), ValueError, "not supported"),
        (lambda: Captum(3), TypeError, "method"),
        (lambda: Captum("Saliency", layer="stem"), ValueError, "layer"),
        (lambda: Captum("LayerGradCam", layer=2), TypeError, "layer"),
        (lambda: Captum("Saliency", channel_reduction="mean"), ValueError, "channel_reduction"),
        (lambda: Captum("Saliency", target=torch.tensor([0])), ValueError, "target"),
        (lambda: Captum("Saliency", n_steps=3), ValueError, r"n_steps.*accepted: \['target', 'abs'"),
        (lambda: Captum("DeepLift", init_kwargs={"epsilon": 1}), ValueError, r"init_kwargs.*multiply_by_inputs"),
        (lambda: Captum("Saliency", seed=-2), ValueError, "seed"),
    ],
)
def test_bad_arguments_are_named(build, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        build()


def test_resolve_accepts_class_or_name() -> None:
    assert resolve_captum_method("LayerGradCam") is captum.attr.LayerGradCam
    assert resolve_captum_method(captum.attr.Lime) is captum.attr.Lime


def test_non_spatial_layer_is_refused() -> None:
    model, inputs, target = setup()
    with pytest.raises(ValueError, match=r"shape \(3, 1\)"):
        Captum("LayerGradCam", layer="fc")(model, inputs, target)
