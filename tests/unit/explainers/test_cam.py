"""Grad-CAM against Captum and a hand-split forward; Grad-CAM++ against the paper's formula computed independently."""

from __future__ import annotations

import itertools

import captum.attr
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_xai.explainers import SIDU, GradCAM, GradCAMPlusPlus, ScoreCAM
from tests.helpers.models import RegionModel, ResidualCNN, primed_residual_cnn, region_mask, residual_batch


def split_forward(model: ResidualCNN, inputs: Tensor, layer: str) -> tuple[Tensor, Tensor]:
    """ResidualCNN's forward written out by hand, with ``layer``'s output as a leaf: ``(activation, logits)``.

    No hooks and no in-place operations: an independent path to the layer gradients.
    """
    with torch.no_grad():
        stem_bn = model.stem[1](model.stem[0](inputs))
        if layer == "relu":
            stem = torch.relu(stem_bn)
            activation = torch.relu(stem + model.block(stem))
        elif layer == "stem.1":
            activation = stem_bn
        elif layer == "head_conv":
            stem = torch.relu(stem_bn)
            activation = model.head_conv(torch.relu(stem + model.block(stem)))
        else:
            raise AssertionError(layer)
    activation = activation.clone().requires_grad_(True)
    if layer == "stem.1":
        stem = torch.relu(activation)
        hidden = model.head_conv(torch.relu(stem + model.block(stem)))
    elif layer == "relu":
        hidden = model.head_conv(activation)
    else:
        hidden = activation
    logits = model.fc(model.pool(torch.relu(hidden)).flatten(1))
    return activation, logits


def hand_gradcam(activation: Tensor, gradients: Tensor, size: tuple[int, int]) -> Tensor:
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return F.interpolate(torch.relu((weights * activation).sum(1, keepdim=True)), size=size, mode="bilinear")


# ----------------------------------------------------------------------------------------------------- Grad-CAM
@pytest.mark.parametrize("layer", ["head_conv", "relu", "stem.1"])
def test_gradcam_matches_captum(device: torch.device, layer: str) -> None:
    """On the last conv, on the in-place ReLU after the residual, and on a BatchNorm followed by an in-place ReLU."""
    model, (inputs, target) = primed_residual_cnn(device), residual_batch(device)
    module = dict(model.named_modules())[layer]
    layer_maps = captum.attr.LayerGradCam(model, module).attribute(inputs, target=target, relu_attributions=True)
    reference = captum.attr.LayerAttribution.interpolate(layer_maps, (8, 8), interpolate_mode="bilinear")
    maps = GradCAM(layer=layer)(model, inputs, target)
    assert maps.shape == (3, 1, 8, 8) and maps.dtype == torch.float32 and maps.device == inputs.device
    torch.testing.assert_close(maps, reference)


@pytest.mark.parametrize("layer", ["head_conv", "relu", "stem.1"])
def test_gradcam_matches_hand_split_forward(layer: str) -> None:
    """Captum's hooks agree with a hook-free computation even where in-place ReLUs follow the layer."""
    model, (inputs, target) = primed_residual_cnn(torch.device("cpu")), residual_batch(torch.device("cpu"))
    activation, logits = split_forward(model, inputs, layer)
    (gradients,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), activation)
    expected = hand_gradcam(activation.detach(), gradients, (8, 8))
    assert expected.abs().sum() > 0
    torch.testing.assert_close(GradCAM(layer=layer)(model, inputs, target), expected)


def test_gradcam_default_layer_is_last_conv() -> None:
    model, (inputs, target) = primed_residual_cnn(torch.device("cpu")), residual_batch(torch.device("cpu"))
    default = GradCAM()(model, inputs, target)
    torch.testing.assert_close(default, GradCAM(layer="head_conv")(model, inputs, target))
    torch.testing.assert_close(default, GradCAM(layer=model.head_conv)(model, inputs, target))
    assert not torch.allclose(default, GradCAM(layer="stem.0")(model, inputs, target))


def test_gradcam_without_relu_keeps_negative_evidence() -> None:
    model, (inputs, target) = primed_residual_cnn(torch.device("cpu")), residual_batch(torch.device("cpu"))
    signed = GradCAM(relu=False)(model, inputs, target)
    assert (signed < 0).any()
    torch.testing.assert_close(GradCAM()(model, inputs, target), torch.relu(signed))


def test_gradcam_region_model_known_answer(device: torch.device) -> None:
    """RegionModel: dS_k/dA is slope_k / |region| in the region, 0 outside; Grad-CAM = ReLU(slope_k / (H W) * x_0).

    With the background negative and class 2's positive slope, the map is positive in the region and zero
    outside it.
    """
    model = RegionModel(num_classes=3).to(device)
    mask = region_mask().to(device).bool()
    generator = torch.Generator().manual_seed(0)
    magnitude = (torch.rand(2, 1, 16, 16, generator=generator) + 0.1).to(device)
    inputs = torch.where(mask, magnitude, -magnitude)
    target = torch.tensor([2, 2], device=device)
    maps = GradCAM()(model, inputs, target)
    torch.testing.assert_close(maps, torch.relu(model.slopes[2] / 256 * inputs))
    assert bool((maps[:, 0][:, mask] > 0).all()) and bool((maps[:, 0][:, ~mask] == 0).all())


def test_gradcam_plusplus_region_model_known_answer() -> None:
    """RegionModel, positive images: g = c = slope / 16 on the 16 region pixels, 0 elsewhere, so
    alpha = c^2 / (2 c^2 + sum(A) c^3) there and w = 16 c alpha = 16 c / (2 + sum(A) c); the map is w * x_0.

    (With negative activations sum(A) can turn alpha negative: Grad-CAM++ assumes post-ReLU activations.)
    """
    model = RegionModel(num_classes=3)
    inputs = torch.rand(2, 1, 16, 16) + 0.1
    c = float(model.slopes[2]) / 16
    total = inputs.sum(dim=(1, 2, 3)).view(2, 1, 1, 1)
    expected = (16 * c / (2 + total * c + 1e-6 / c**2)) * inputs
    torch.testing.assert_close(GradCAMPlusPlus()(model, inputs, torch.tensor([2, 2])), expected)


def test_gradcam_needs_spatial_layer() -> None:
    model, (inputs, target) = primed_residual_cnn(torch.device("cpu")), residual_batch(torch.device("cpu"))
    for explainer in (GradCAM(layer="fc"), GradCAMPlusPlus(layer="fc")):
        with pytest.raises(ValueError, match="spatial"):
            explainer(model, inputs, target)


@pytest.mark.parametrize("explainer_cls", [GradCAM, GradCAMPlusPlus])
def test_unknown_layer_lists_candidates(explainer_cls: type) -> None:
    model, (inputs, target) = primed_residual_cnn(torch.device("cpu")), residual_batch(torch.device("cpu"))
    with pytest.raises(ValueError, match=r"'head_cnv'.*Close candidates.*head_conv"):
        explainer_cls(layer="head_cnv")(model, inputs, target)
    with pytest.raises(TypeError, match="layer"):
        explainer_cls(layer=3)


# --------------------------------------------------------------------------------------------------- Grad-CAM++
class TinyCNN(nn.Module):
    """conv -> ReLU -> conv (the explained layer) -> ReLU -> average pool -> linear: S is piecewise linear in A."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(4)
        self.features = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1))
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def gradcam_plusplus_by_loops(activation: Tensor, gradient: Tensor) -> Tensor:
    """The formula of METHODS.md s. 8 for one sample ``(K, h, w)``, one location at a time."""
    channels, height, width = activation.shape
    cam = torch.zeros(height, width, dtype=torch.float64)
    for k in range(channels):
        total = sum(float(activation[k, a, b]) for a, b in itertools.product(range(height), range(width)))
        weight = 0.0
        for i, j in itertools.product(range(height), range(width)):
            g = float(gradient[k, i, j].detach())
            alpha = 0.0 if g == 0 else g**2 / (2 * g**2 + total * g**3 + 1e-6)
            weight += alpha * max(g, 0.0)
        cam += weight * activation[k].double()
    return cam.clamp(min=0).float()


def test_gradcam_plusplus_matches_formula_by_loops() -> None:
    model = TinyCNN().eval()
    generator = torch.Generator().manual_seed(5)
    inputs, target = torch.randn(3, 2, 4, 4, generator=generator), torch.tensor([0, 1, 1])
    maps = GradCAMPlusPlus(layer="features.2")(model, inputs, target)
    assert maps.shape == (3, 1, 4, 4)
    for n in range(3):
        activation = model.features(inputs[n : n + 1]).detach()[0]
        gradient = torch.func.grad(lambda a, n=n: model.head(a[None])[0, target[n]])(activation)
        expected = gradcam_plusplus_by_loops(activation, gradient)
        assert expected.abs().sum() > 0
        torch.testing.assert_close(maps[n, 0], expected, rtol=1e-5, atol=1e-6)


def test_gradcam_plusplus_follows_the_papers_higher_derivatives() -> None:
    """alpha from the exact 2nd and 3rd derivatives of Y = exp(S) (paper Eq. 19), not from the closed form."""
    model = TinyCNN().eval()
    generator = torch.Generator().manual_seed(6)
    inputs, target = torch.randn(2, 2, 4, 4, generator=generator), torch.tensor([1, 0])
    maps = GradCAMPlusPlus(layer="features.2")(model, inputs, target)
    for n in range(2):
        activation = model.features(inputs[n : n + 1]).detach()[0]

        def exp_score(a: Tensor, n: int = n) -> Tensor:
            return torch.exp(model.head(a[None])[0, target[n]])

        directions = torch.eye(activation.numel()).view(-1, *activation.shape)

        def along(direction: Tensor, activation: Tensor = activation, exp_score=exp_score):
            def line(t: Tensor) -> Tensor:
                return exp_score(activation + t * direction)

            first = torch.func.grad(line)
            second = torch.func.grad(first)
            third = torch.func.grad(second)
            zero = torch.zeros(())
            return line(zero), first(zero), second(zero), third(zero)

        value, first, second, third = torch.func.vmap(along)(directions)
        first, second, third = (d.view(activation.shape) for d in (first, second, third))
        # The closed form's eps in units of Y: g^2 / (2 g^2 + sum A g^3 + eps) = Y g^2 / (... + Y eps).
        denominator = 2 * second + activation.sum(dim=(1, 2), keepdim=True) * third + value[0] * 1e-6
        alpha = torch.where(second != 0, second / torch.where(denominator != 0, denominator, 1), 0)
        weights = (alpha * torch.relu(first)).sum(dim=(1, 2), keepdim=True)  # the exp(S) factor only scales w
        expected = torch.relu((weights * activation).sum(0))
        expected = expected / expected.max()
        torch.testing.assert_close(maps[n, 0] / maps[n, 0].max(), expected, rtol=1e-4, atol=1e-5)


def test_gradcam_plusplus_uses_spatial_sum_not_mean() -> None:
    """The spatial-mean variant (Xplique's GradCAMPP) gives a different map, even after normalisation."""
    model = TinyCNN().eval()
    generator = torch.Generator().manual_seed(7)
    inputs, target = torch.randn(2, 2, 4, 4, generator=generator), torch.tensor([0, 1])
    maps = GradCAMPlusPlus(layer="features.2")(model, inputs, target)
    activation = model.features(inputs).detach().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model.head(activation).gather(1, target[:, None]).sum(), activation)
    squared, cubed = gradient**2, gradient**3
    alpha = squared / (2 * squared + activation.mean(dim=(2, 3), keepdim=True) * cubed + 1e-6)
    alpha = torch.where(gradient != 0, alpha, 0)
    weights = (alpha * torch.relu(gradient)).mean(dim=(2, 3), keepdim=True)
    mean_variant = torch.relu((weights * activation.detach()).sum(1, keepdim=True))

    def normalise(m: Tensor) -> Tensor:
        return m / m.amax(dim=(2, 3), keepdim=True)

    assert not torch.allclose(normalise(maps), normalise(mean_variant), atol=1e-2)


@pytest.mark.parametrize("layer", ["head_conv", "relu", "stem.1"])
def test_gradcam_plusplus_with_in_place_layers(layer: str) -> None:
    """The hook-captured activation and gradient equal the hook-free split forward's, ReLU(inplace) or not."""
    model, (inputs, target) = primed_residual_cnn(torch.device("cpu")), residual_batch(torch.device("cpu"))
    activation, logits = split_forward(model, inputs, layer)
    (gradient,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), activation)
    expected = torch.stack([gradcam_plusplus_by_loops(activation[n].detach(), gradient[n]) for n in range(3)])
    expected = F.interpolate(expected[:, None], size=(8, 8), mode="bilinear")
    torch.testing.assert_close(GradCAMPlusPlus(layer=layer)(model, inputs, target), expected, rtol=1e-4, atol=1e-6)


def test_gradcam_plusplus_callable_target() -> None:
    model, (inputs, _) = primed_residual_cnn(torch.device("cpu")), residual_batch(torch.device("cpu"))
    reference = torch.tensor([1.0, -1.0, 0.5, 0.0])

    def target(outputs: Tensor) -> Tensor:
        return F.cosine_similarity(outputs, reference[None], dim=1)

    activation, logits = split_forward(model, inputs, "head_conv")
    (gradient,) = torch.autograd.grad(target(logits).sum(), activation)
    expected = torch.stack([gradcam_plusplus_by_loops(activation[n].detach(), gradient[n]) for n in range(3)])
    expected = F.interpolate(expected[:, None], size=(8, 8), mode="bilinear")
    torch.testing.assert_close(GradCAMPlusPlus()(model, inputs, target), expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        GradCAM()(model, inputs, target), hand_gradcam(activation.detach(), gradient, (8, 8)), rtol=1e-4, atol=1e-6
    )


class TwiceModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)
        self.unused = nn.Conv2d(3, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("explainer_type", [GradCAM, GradCAMPlusPlus, ScoreCAM, SIDU])
def test_layer_errors_are_the_same_for_every_layer_explainer(explainer_type) -> None:
    # Issue 15: a module that runs twice per forward was refused by Grad-CAM++ only; Score-CAM and SIDU silently
    # took its last call, and a layer off the forward path gave Captum's bare AssertionError for Grad-CAM.
    model, inputs, target = TwiceModel(), torch.randn(2, 3, 6, 6), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"'conv' \(Conv2d\) ran 2 times in one forward pass"):
        explainer_type(layer="conv")(model, inputs, target)
    with pytest.raises(ValueError, match=r"'unused' \(Conv2d\) was not called during the model's forward pass"):
        explainer_type(layer="unused")(model, inputs, target)
    with pytest.raises(ValueError, match=r"'fc' \(Linear\) outputs shape \(2, 2\)"):
        explainer_type(layer="fc", reshape=None)(model, inputs, target)
    assert all(not m._forward_hooks for m in model.modules())
