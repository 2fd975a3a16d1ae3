"""channels_last models and inputs, and torch.compile'd models: the explainer and metric contracts still hold.

References: the same explainer on the eager, contiguous model (the maps must agree), and Captum's Saliency on the
original module.
"""

from __future__ import annotations

import warnings

import captum.attr
import pytest
import torch
from torch import nn

from lightning_xai.explainers import RISE, GradCAM, Saliency
from lightning_xai.metrics import DeletionAUC

torchvision = pytest.importorskip("torchvision")


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    with torch.no_grad():
        model.train()(torch.rand(4, 3, 32, 32))  # BatchNorm statistics away from their defaults
    return model.eval()


@pytest.mark.parametrize("explainer", [Saliency(), GradCAM(), RISE(n_masks=16, grid_size=4)], ids=type)
def test_channels_last_model_and_inputs_give_the_contiguous_maps(explainer) -> None:
    model, inputs, target = _resnet(), torch.rand(2, 3, 32, 32), torch.tensor([0, 2])
    expected = explainer(model, inputs, target)
    model_cl = model.to(memory_format=torch.channels_last)
    inputs_cl = inputs.contiguous(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in model_cl.state_dict().items()}
    maps = explainer(model_cl, inputs_cl, target)
    assert maps.shape == (2, 1, 32, 32)
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=1e-4)
    assert all(torch.equal(v, model_cl.state_dict()[k]) for k, v in before.items())
    metric = DeletionAUC(steps=4)
    metric.update(model_cl, inputs_cl, maps, target)
    assert bool(torch.isfinite(metric.compute()))


def test_compiled_model_is_explained_through_its_original_module() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    with torch.no_grad():
        model.train()(torch.rand(8, 3, 8, 8) * 3 + 1)
    model.eval()
    compiled = torch.compile(model, backend="eager")
    inputs, target = torch.rand(2, 3, 8, 8), torch.tensor([0, 2])
    expected = captum.attr.Saliency(model).attribute(inputs.clone().requires_grad_(), target=target).abs().sum(1, True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a compiled top-level model needs no warning
        maps = Saliency()(compiled, inputs, target)
        gradcam = GradCAM(layer="2")(compiled, inputs, target)  # layer names are the original module's
    torch.testing.assert_close(maps, expected)
    torch.testing.assert_close(gradcam, GradCAM(layer="2")(model, inputs, target))
    assert all(p.grad is None for p in model.parameters())


def test_compiled_submodule_warns() -> None:
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    model = nn.Sequential(
        torch.compile(backbone, backend="eager"), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    with pytest.warns(UserWarning, match=r"torch.compile'd submodules \['0'\].*compiled BatchNorm"):
        Saliency()(model.eval(), torch.rand(2, 3, 8, 8), torch.tensor([0, 1]))
