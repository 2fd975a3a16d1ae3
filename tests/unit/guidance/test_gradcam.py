from __future__ import annotations

import captum.attr
import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from lightning_xai.guidance import GradCAMGuidance
from tests.helpers.models import ResidualCNN, primed_residual_cnn, region_mask, residual_batch, strided_cnn
from tests.unit.guidance._models import flags_of, hooks_of, random_mask, smooth_cnn


def captum_share(model: nn.Module, layer: nn.Module, inputs: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """The share of Captum's upsampled LayerGradCam map inside ``mask``, per sample: the independent reference."""
    maps = captum.attr.LayerGradCam(model, layer).attribute(inputs, target=target, relu_attributions=True)
    maps = captum.attr.LayerAttribution.interpolate(maps.detach(), tuple(inputs.shape[-2:]), "bilinear")
    mask = mask.expand_as(maps)
    total = maps.flatten(1).sum(1)
    return torch.where(total > 0, (mask * maps).flatten(1).sum(1) / total, torch.zeros_like(total))


@pytest.mark.parametrize(
    ("layer", "attribute"), [("head_conv", "head_conv"), ("block.0", "block"), (None, "head_conv")]
)
def test_value_matches_captum_layer_gradcam(layer: str | None, attribute: str) -> None:
    model = primed_residual_cnn()
    inputs, target = residual_batch()
    module = getattr(model, attribute)
    module = module[0] if layer == "block.0" else module
    mask = region_mask(8, 8, 0, 0, 4)
    penalty = GradCAMGuidance(layer=layer, weight=2.0)(model, inputs, mask, target)
    expected = 2.0 * captum_share(model, module, inputs, target, mask).mean()
    torch.testing.assert_close(penalty, expected, rtol=1e-5, atol=1e-7)
    assert 0 < penalty < 2.0


def test_upsampled_layer_and_per_sample_masks_match_captum() -> None:
    model = strided_cnn()
    inputs, target = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    masks = torch.rand(4, 1, 8, 8)
    penalty = GradCAMGuidance(layer="2")(model, inputs, masks, target)
    torch.testing.assert_close(
        penalty, captum_share(model, model[2], inputs, target, masks).mean(), rtol=1e-5, atol=1e-7
    )


def test_target_none_explains_the_predicted_class_and_allowed_is_the_complement() -> None:
    model = primed_residual_cnn()
    inputs, _ = residual_batch()
    mask = region_mask(8, 8, 2, 2, 4)
    predicted = model(inputs).argmax(1)
    guidance = GradCAMGuidance()
    torch.testing.assert_close(guidance(model, inputs, mask), guidance(model, inputs, mask, predicted))
    torch.testing.assert_close(
        GradCAMGuidance(region="allowed")(model, inputs, 1 - mask), guidance(model, inputs, mask, predicted)
    )
    assert guidance(model, inputs, torch.zeros(8, 8)).item() == 0.0


def test_parameter_gradient_matches_finite_differences() -> None:
    model = smooth_cnn()
    inputs, mask = torch.randn(3, 2, 5, 5, dtype=torch.float64), random_mask((5, 5)).clamp(max=1)
    names = [name for name, _ in model.named_parameters()]
    guidance = GradCAMGuidance(layer="inner.0", weight=3.0)

    class Functional(nn.Module):
        def __init__(self, parameters: tuple[Tensor, ...]) -> None:
            super().__init__()
            self.inner = model
            self.parameters_ = parameters

        def forward(self, x: Tensor) -> Tensor:
            return functional_call(self.inner, dict(zip(names, self.parameters_, strict=True)), (x,))

    def penalty_of(*parameters: Tensor) -> Tensor:
        return guidance(Functional(parameters), inputs, mask, torch.tensor([0, 2, 1]))

    parameters = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())
    assert penalty_of(*parameters) > 0
    assert torch.autograd.gradcheck(penalty_of, parameters, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_no_grad_on_inputs_no_flags_changed_no_hooks_left() -> None:
    model = ResidualCNN(in_channels=3, num_classes=4).train()
    before, hooks = flags_of(model), hooks_of(model)
    inputs = torch.randn(3, 3, 8, 8)
    penalty = GradCAMGuidance()(model, inputs, region_mask(8, 8, 0, 0, 4), torch.tensor([0, 1, 2]))
    assert all(p.grad is None for p in model.parameters())
    penalty.backward()
    assert inputs.grad is None and flags_of(model) == before and hooks_of(model) == hooks
    assert model.stem[0].weight.grad is not None and model.fc.weight.grad is not None  # before and after the layer


def test_hook_removed_when_the_layer_runs_twice() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(self.conv(self.conv(x)).mean(dim=(2, 3)))

    model = Twice()
    with pytest.raises(ValueError, match=r"GradCAMGuidance: `layer` .conv. \(Conv2d\) ran 2 times in one forward pass"):
        GradCAMGuidance()(model, torch.randn(2, 3, 6, 6), torch.ones(6, 6))
    assert hooks_of(model) == 0


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_under_no_grad_the_value_is_returned_detached(context) -> None:
    model = primed_residual_cnn()
    inputs, target = residual_batch()
    mask = region_mask(8, 8, 0, 0, 4)
    expected = GradCAMGuidance()(model, inputs, mask, target).detach()
    with context():
        value = GradCAMGuidance()(model, inputs.clone(), mask, target)
    assert not value.requires_grad
    torch.testing.assert_close(value, expected)


def test_bad_inputs_get_clear_errors() -> None:
    model = primed_residual_cnn()
    inputs, target = residual_batch()
    guidance = GradCAMGuidance()
    with pytest.raises(ValueError, match=r"`mask` must have shape \(H, W\), \(B, 1, H, W\) matching"):
        guidance(model, inputs, torch.ones(3, 3, 8, 8), target)
    with pytest.raises(ValueError, match=r"`mask` must hold values in \[0, 1\].*got maximum 2"):
        guidance(model, inputs, 2 * torch.ones(8, 8), target)
    with pytest.raises(ValueError, match="`region` must be one of"):
        GradCAMGuidance(region="inside")
    with pytest.raises(ValueError, match="`weight` must be a finite real number >= 0"):
        GradCAMGuidance(weight=float("inf"))
    with pytest.raises(TypeError, match="`layer` must be a dotted module name"):
        GradCAMGuidance(layer=3)
    with pytest.raises(ValueError, match="not a module of the model"):
        GradCAMGuidance(layer="head_cov")(model, inputs, torch.ones(8, 8), target)
    with pytest.raises(ValueError, match=r"needs a `layer` with a spatial output"):
        GradCAMGuidance(layer="fc")(model, inputs, torch.ones(8, 8), target)
    with pytest.raises(ValueError, match=r"class index 7"):
        guidance(model, inputs, torch.ones(8, 8), torch.tensor([0, 7, 1]))


def test_torchvision_resnet_matches_captum_and_leaves_it_as_found() -> None:
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    before, hooks = flags_of(model), hooks_of(model)
    inputs, target = torch.randn(2, 3, 64, 64), torch.tensor([0, 2])
    mask = region_mask(64, 64, 0, 0, 32)
    penalty = GradCAMGuidance(layer="layer4")(model, inputs, mask, target)
    torch.testing.assert_close(
        penalty, captum_share(model, model.layer4, inputs, target, mask).mean(), rtol=1e-4, atol=1e-6
    )
    penalty.backward()
    assert model.conv1.weight.grad is not None and model.fc.weight.grad is not None
    assert flags_of(model) == before and hooks_of(model) == hooks and inputs.grad is None
