"""The explainer contract for every explainer: bad input gets a clear error, the model and RNG are left as found."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.nn.modules import module as module_globals

from lightning_xai.explainers import (
    LRP,
    Captum,
    ConceptRelevance,
    Explainer,
    GradCAM,
    GradCAMPlusPlus,
    InputXGradient,
    IntegratedGradients,
    Occlusion,
    Saliency,
    SmoothGrad,
)
from tests.helpers.models import ResidualCNN

EXPLAINERS: dict[str, Callable[[], Explainer]] = {
    "Saliency": Saliency,
    "InputXGradient": InputXGradient,
    "IntegratedGradients": lambda: IntegratedGradients(n_steps=4, internal_batch_size=5),
    "SmoothGrad": lambda: SmoothGrad(n_samples=3, stdev=0.2),
    "GradCAM": GradCAM,
    "GradCAMPlusPlus": lambda: GradCAMPlusPlus(layer="relu"),
    "Occlusion": lambda: Occlusion(window=4, stride=4),
    "Captum-GuidedBackprop": lambda: Captum("GuidedBackprop"),
    "Captum-GradientShap": lambda: Captum("GradientShap", baselines=torch.zeros(2, 3, 8, 8), n_samples=2),
    "Captum-LayerGradCam": lambda: Captum("LayerGradCam", layer="stem.1"),
    "Captum-Lime": lambda: Captum(
        "Lime", n_samples=2, feature_mask=torch.arange(4).view(1, 1, 2, 2).repeat(1, 1, 4, 4)
    ),
    "LRP": LRP,
    "ConceptRelevance": lambda: ConceptRelevance(layer="head_conv", top_k=2),
}
LAYER_EXPLAINERS: dict[str, Callable[[str], Explainer]] = {
    "GradCAM": lambda layer: GradCAM(layer=layer),
    "GradCAMPlusPlus": lambda layer: GradCAMPlusPlus(layer=layer),
    "Captum-LayerGradCam": lambda layer: Captum("LayerGradCam", layer=layer),
    "ConceptRelevance": lambda layer: ConceptRelevance(layer=layer),
}


def assert_no_hooks(model: nn.Module) -> None:
    for name, module in model.named_modules():
        for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            assert not getattr(module, kind), f"{kind} left on {name or 'the model'}"
    for kind in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"):
        assert not getattr(module_globals, kind), kind


def random_draws() -> tuple[Tensor, np.ndarray, float]:
    return torch.rand(4), np.random.rand(4), random.random()


@pytest.mark.parametrize("caller", ["plain", "no_grad", "inference_mode"])
@pytest.mark.parametrize("name", list(EXPLAINERS))
def test_leaves_model_and_random_streams_as_found(name: str, caller: str) -> None:
    """Train mode with one block in eval, frozen stem, inputs created in inference mode, called under no_grad
    and inference_mode: the maps follow the contract and nothing the training computes is changed."""
    model = ResidualCNN()
    model.train()
    model.block.eval()
    for parameter in model.stem.parameters():
        parameter.requires_grad_(False)
    training = [module.training for module in model.modules()]
    requires_grad = [parameter.requires_grad for parameter in model.parameters()]
    state = {key: value.clone() for key, value in model.state_dict().items()}
    with torch.inference_mode():
        inputs = torch.randn(2, 3, 8, 8)
        target = torch.tensor([1, 3])
    explainer = EXPLAINERS[name]()
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()

    context = {"plain": contextlib.nullcontext(), "no_grad": torch.no_grad(), "inference_mode": torch.inference_mode()}
    with context[caller]:
        maps = explainer(model, inputs, target)

    after = random_draws()
    torch.set_rng_state(states[0])
    np.random.set_state(states[1])
    random.setstate(states[2])
    untouched = random_draws()
    assert torch.equal(after[0], untouched[0]) and np.array_equal(after[1], untouched[1]) and after[2] == untouched[2]

    assert maps.shape == (2, 1, 8, 8) and maps.dtype == torch.float32 and maps.device == inputs.device
    assert bool(torch.isfinite(maps).all()) and not maps.requires_grad
    assert all(parameter.grad is None for parameter in model.parameters())
    assert [module.training for module in model.modules()] == training
    assert [parameter.requires_grad for parameter in model.parameters()] == requires_grad
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key  # weights and BatchNorm running statistics
    assert not inputs.requires_grad
    assert_no_hooks(model)


@pytest.mark.parametrize("name", list(EXPLAINERS))
def test_repeatable(name: str) -> None:
    model, inputs, target = ResidualCNN(), torch.randn(2, 3, 8, 8), torch.tensor([0, 2])
    explainer = EXPLAINERS[name]()
    assert torch.equal(explainer(model, inputs, target), explainer(model, inputs, target))


class NaNModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3))) * float("nan")


@pytest.mark.parametrize("name", list(EXPLAINERS))
def test_nan_attributions_raise(name: str) -> None:
    explainer = EXPLAINERS[name]()
    if name == "GradCAMPlusPlus":
        explainer = GradCAMPlusPlus()
    elif name == "Captum-LayerGradCam":
        explainer = Captum("LayerGradCam")
    elif name == "ConceptRelevance":
        explainer = ConceptRelevance(layer="conv")
    model = NaNModel()
    message = r"non-finite attributions \(NaN or inf\) for samples \[0, 1\]"
    if name == "Captum-Lime":
        message = "contains NaN"  # scikit-learn refuses NaN scores when Lime fits its surrogate, before our check
    with pytest.raises(ValueError, match=message):
        explainer(model, torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))
    assert_no_hooks(model)


BAD_INPUTS = [
    (torch.randn(3, 8, 8), torch.tensor([0, 1, 2]), ValueError, r"`inputs` must have shape \(B, C, H, W\)"),
    (torch.zeros(2, 3, 8, 8, dtype=torch.long), torch.tensor([0, 1]), TypeError, "`inputs` must be a floating"),
    ([[0.0]], torch.tensor([0]), TypeError, "`inputs` must be a torch.Tensor"),
    (torch.randn(2, 3, 8, 8), torch.tensor([0, 4]), ValueError, r"class index 4.*outputs 4 classes"),
    (torch.randn(2, 3, 8, 8), torch.tensor([[0], [1]]), ValueError, r"`target` must have shape \(B,\) = \(2,\)"),
    (torch.randn(2, 3, 8, 8), torch.tensor([0.0, 1.0]), TypeError, "`target` must hold integer class indices"),
    (torch.randn(2, 3, 8, 8), [0, 1], TypeError, "`target` must be a LongTensor"),
    (torch.randn(2, 3, 8, 8), torch.tensor([0, -1]), ValueError, "`target` must hold class indices >= 0"),
    (torch.randn(2, 3, 8, 8), lambda outputs: outputs, ValueError, r"callable `target` must return one score"),
]


@pytest.mark.parametrize(("inputs", "target", "error", "match"), BAD_INPUTS)
@pytest.mark.parametrize("name", list(EXPLAINERS))
def test_bad_inputs_are_named(name: str, inputs, target, error: type[Exception], match: str) -> None:
    model = ResidualCNN()
    with pytest.raises(error, match=match):
        EXPLAINERS[name]()(model, inputs, target)
    assert_no_hooks(model)
    assert all(parameter.requires_grad for parameter in model.parameters())


@pytest.mark.parametrize("name", list(LAYER_EXPLAINERS))
def test_unknown_layer_lists_close_candidates(name: str) -> None:
    model = ResidualCNN()
    with pytest.raises(ValueError, match=r"`layer` 'blok' is not a module of the model\. Close candidates: \['block'"):
        LAYER_EXPLAINERS[name]("blok")(model, torch.randn(1, 3, 8, 8), torch.tensor([0]))


@pytest.mark.parametrize("build", [Saliency, InputXGradient, IntegratedGradients, SmoothGrad, Captum])
def test_bad_channel_reduction(build: Callable[..., Explainer]) -> None:
    args = ("Saliency",) if build is Captum else ()
    with pytest.raises(ValueError, match=r"`channel_reduction` must be one of \('sum', 'abs_sum', 'max_abs', None\)"):
        build(*args, channel_reduction="mean")


def test_explainer_base_class() -> None:
    with pytest.raises(TypeError):
        Explainer()  # type: ignore[abstract]

    class Infinite(Explainer):
        needs_grad = False

        def attribute(self, model: nn.Module, inputs: Tensor, target) -> Tensor:
            assert not torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
            maps = torch.zeros_like(inputs[:, :1])
            maps[1] = float("inf")
            return maps

    explainer = Infinite()
    assert explainer.name == "Infinite" and repr(explainer) == "Infinite()"
    with torch.inference_mode(), pytest.raises(ValueError, match=r"Infinite produced non-finite .* samples \[1\]"):
        explainer(ResidualCNN(), torch.randn(3, 3, 4, 4), torch.tensor([0, 1, 2]))


@pytest.mark.parametrize(
    "config",
    [
        {"class_path": "lightning_xai.Saliency", "init_args": {"channel_reduction": "max_abs"}},
        {"class_path": "lightning_xai.InputXGradient"},
        {"class_path": "lightning_xai.IntegratedGradients", "init_args": {"n_steps": 4, "baseline": 0.5}},
        {"class_path": "lightning_xai.SmoothGrad", "init_args": {"n_samples": 2, "base": "InputXGradient"}},
        {"class_path": "lightning_xai.GradCAM", "init_args": {"layer": "block.0"}},
        {"class_path": "lightning_xai.GradCAMPlusPlus", "init_args": {"layer": "relu"}},
        {"class_path": "lightning_xai.Occlusion", "init_args": {"window": [4, 2], "stride": 2}},
        {
            "class_path": "lightning_xai.Captum",
            "init_args": {
                "method": "Occlusion",
                "attribute_kwargs": {"sliding_window_shapes": [3, 4, 4], "strides": [3, 4, 4]},
            },
        },
        {
            "class_path": "lightning_xai.Captum",
            "init_args": {"method": "LayerGradCam", "layer": "relu", "attribute_kwargs": {"relu_attributions": True}},
        },
    ],
)
def test_built_from_a_cli_config(config: dict) -> None:
    """Plain arguments: jsonargparse (what LightningCLI uses) builds every explainer from a YAML/JSON config."""
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--explainer", type=Explainer)
    explainer = parser.instantiate(parser.parse_object({"explainer": config})).explainer
    assert type(explainer).__name__ == config["class_path"].rsplit(".", 1)[1]
    maps = explainer(ResidualCNN(), torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))
    assert maps.shape == (2, 1, 8, 8)
