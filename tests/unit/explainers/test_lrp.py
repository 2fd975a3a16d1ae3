"""LRP against Zennit's own attributor, conservation known answers, heads, the model left bitwise as found."""

from __future__ import annotations

import contextlib
import copy
import sys

import pytest
import torch
import torchvision
from torch import Tensor, nn
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlusFlat, LayerMapComposite
from zennit.rules import Epsilon, Pass
from zennit.torchvision import ResNetCanonizer, VGGCanonizer
from zennit.types import Activation, Convolution

from lightning_xai.explainers import LRP
from lightning_xai.explainers.lrp import auto_canonizers
from tests.helpers.models import primed_residual_cnn, residual_batch
from tests.unit.explainers.test_base import assert_no_hooks


def prime_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so that merging them changes the weights."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                module.weight.copy_(1 + 0.3 * torch.randn(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
                module.num_batches_tracked.fill_(7)
    return model


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return prime_batchnorm(torchvision.models.resnet18(weights=None, num_classes=5)).eval()


class VGGStyle(nn.Module):
    """torchvision's VGG layout (features / avgpool / classifier) at a size the default suite can afford."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(nn.Linear(128, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 4))
        prime_batchnorm(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def zennit_reference(model: nn.Module, composite: object, inputs: Tensor, target: Tensor, classes: int) -> Tensor:
    """Zennit used directly, on a copy of the model: output relevance = one-hot x logit, channels summed."""
    with Gradient(copy.deepcopy(model), composite) as attributor:
        _, relevance = attributor(inputs, lambda out: torch.eye(classes)[target] * out)
    return relevance.sum(dim=1, keepdim=True)


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {key: value.clone() for key, value in model.state_dict().items()},
        "parameters": [(name, id(p), p.data_ptr()) for name, p in model.named_parameters()],
        "modules": [(name, id(m)) for name, m in model.named_modules()],
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "instance_attributes": [sorted(k for k in vars(m) if not k.startswith("_")) for m in model.modules()],
    }


def assert_as_found(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before["state"][key]), key  # weights, BatchNorm statistics, num_batches_tracked
        assert value.dtype == before["state"][key].dtype
    for key in ("parameters", "modules", "training", "requires_grad", "instance_attributes"):
        assert after[key] == before[key], key  # same objects, same storage, canonizer attributes removed
    assert all(p.grad is None for p in model.parameters())
    assert all("forward" not in vars(m) for m in model.modules())  # ResNet canonizer's bound forward removed
    assert_no_hooks(model)


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_alpha2_beta1", "epsilon_gamma_box"])
def test_resnet18_matches_zennit_with_resnet_canonizer(composite: str) -> None:
    model = resnet18()
    inputs, target = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)), torch.tensor([1, 4])
    low, high = torch.full((1, 3, 32, 32), -3.0), torch.full((1, 3, 32, 32), 3.0)
    references = {
        "epsilon_plus_flat": EpsilonPlusFlat(canonizers=[ResNetCanonizer()]),
        "epsilon_alpha2_beta1": EpsilonAlpha2Beta1(canonizers=[ResNetCanonizer()]),
        "epsilon_gamma_box": EpsilonGammaBox(low=low, high=high, canonizers=[ResNetCanonizer()]),
    }
    kwargs = {"low": low, "high": high} if composite == "epsilon_gamma_box" else None
    ours = LRP(composite=composite, composite_kwargs=kwargs)(model, inputs, target)
    reference = zennit_reference(model, references[composite], inputs, target, classes=5)
    assert ours.shape == (2, 1, 32, 32) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-7)
    assert float(ours.abs().max()) > 0
    # the canonizer matters: without it the residual sums and BatchNorm are propagated differently
    plain = LRP(composite=composite, canonizers=None, composite_kwargs=kwargs)(model, inputs, target)
    assert not torch.allclose(plain, ours, rtol=1e-3, atol=1e-6)


def test_vgg_style_matches_zennit_with_vgg_canonizer() -> None:
    model = VGGStyle().eval()
    inputs, target = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(4)), torch.tensor([0, 3, 2])
    assert [type(c) for c in auto_canonizers(model)] == [SequentialMergeBatchNorm]
    ours = LRP()(model, inputs, target)
    torch.testing.assert_close(
        ours, zennit_reference(model, EpsilonPlusFlat(canonizers=[VGGCanonizer()]), inputs, target, 4)
    )


def test_explicit_canonizers_and_composite_instances_match_zennit() -> None:
    model, (inputs, target) = primed_residual_cnn(), residual_batch()
    reference = zennit_reference(model, EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()]), inputs, target, 4)
    torch.testing.assert_close(LRP(canonizers=[SequentialMergeBatchNorm()])(model, inputs, target), reference)
    torch.testing.assert_close(LRP()(model, inputs, target), reference)  # "auto" picks the same
    instance = EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
    torch.testing.assert_close(LRP(composite=instance)(model, inputs, target), reference)
    torch.testing.assert_close(LRP(composite=instance)(model, inputs, target), reference)  # reusable


@pytest.mark.parametrize("caller", ["plain", "no_grad", "inference_mode"])
def test_resnet18_left_bitwise_as_found(caller: str) -> None:
    """Canonizers merge BatchNorm into the convolutions (adding a bias to bias-free ones) and rebind the blocks'
    forward; afterwards every parameter and buffer is bitwise the same, in the same objects, with no hook, no added
    module or attribute, training and requires_grad flags restored, no .grad written."""
    model = resnet18()
    model.train()
    model.layer1.eval()
    for parameter in model.conv1.parameters():
        parameter.requires_grad_(False)
    before = snapshot(model)
    with torch.inference_mode():
        inputs = torch.randn(2, 3, 32, 32)
    context = {"plain": contextlib.nullcontext(), "no_grad": torch.no_grad(), "inference_mode": torch.inference_mode()}
    with context[caller]:
        maps = LRP()(model, inputs, torch.tensor([0, 2]))
    assert maps.shape == (2, 1, 32, 32) and not maps.requires_grad
    assert_as_found(model, before)


def bias_free_model() -> nn.Module:
    """Conv-ReLU-Conv-ReLU-Linear without bias; weights scaled by 3 so that logits are of order 1."""
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(6, 4, 3, stride=2, padding=1, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3, bias=False),
    ).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(3.0)
    return model


def epsilon_everywhere(epsilon: float = 1e-6) -> LayerMapComposite:
    return LayerMapComposite([(Activation, Pass()), (Convolution, Epsilon(epsilon)), (nn.Linear, Epsilon(epsilon))])


def test_epsilon_rule_conserves_the_target_logit_on_a_bias_free_model() -> None:
    """Known answer: with the epsilon rule on every layer and no bias, the input relevance sums to the target
    logit up to what epsilon absorbs, about epsilon / |z| of each neuron's relevance (1e-6 here): rtol 1e-4."""
    model = bias_free_model()
    inputs = torch.rand(4, 2, 8, 8, generator=torch.Generator().manual_seed(6))
    target = torch.tensor([0, 1, 2, 1])
    maps = LRP(composite=epsilon_everywhere(), canonizers=None)(model, inputs, target)
    logits = model(inputs).gather(1, target.view(-1, 1)).squeeze(1).detach()
    assert bool((logits.abs() > 0.03).all())  # logits of order 1: the relative tolerance is the test
    torch.testing.assert_close(maps.flatten(1).sum(1), logits, rtol=1e-4, atol=0.0)
    # a large epsilon absorbs relevance: the sum is then measurably below the logit, so the check above can fail
    absorbed = LRP(composite=epsilon_everywhere(10.0), canonizers=None)(model, inputs, target).flatten(1).sum(1)
    assert bool(((absorbed - logits).abs() > 1e-2 * logits.abs()).all())


def test_binary_and_multi_label_heads() -> None:
    """A single-logit head: index 0 sums to the logit, the callable -o[:, 0] gives the negated map. A multi-label
    head: LRP is linear in the output relevance, so a callable summing two labels equals the sum of their maps."""
    model = bias_free_model()
    inputs = torch.rand(2, 2, 8, 8, generator=torch.Generator().manual_seed(7))
    lrp = LRP(composite=epsilon_everywhere(), canonizers=None)
    binary = nn.Sequential(model, nn.Linear(3, 1, bias=False)).eval()
    positive = lrp(binary, inputs, torch.tensor([0, 0]))
    torch.testing.assert_close(positive.flatten(1).sum(1), binary(inputs)[:, 0].detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(lrp(binary, inputs, lambda o: -o[:, 0]), -positive)
    labels_02 = lrp(model, inputs, lambda o: o[:, 0] + o[:, 2])
    separate = lrp(model, inputs, torch.tensor([0, 0])) + lrp(model, inputs, torch.tensor([2, 2]))
    torch.testing.assert_close(labels_02, separate, rtol=1e-5, atol=1e-7)


def test_channel_reduction() -> None:
    model, (inputs, target) = primed_residual_cnn(), residual_batch()
    full = LRP(channel_reduction=None)(model, inputs, target)
    assert full.shape == (3, 3, 8, 8)
    torch.testing.assert_close(LRP()(model, inputs, target), full.sum(1, keepdim=True))
    torch.testing.assert_close(LRP(channel_reduction="abs_sum")(model, inputs, target), full.abs().sum(1, keepdim=True))


class NormalizedInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(3)  # a BatchNorm with no layer before it to merge into
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(self.norm(x)).mean(dim=(2, 3)))


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match=r"`composite` must be one of \('epsilon_plus_flat'.*got 'epsilon_plux'"):
        LRP(composite="epsilon_plux")
    with pytest.raises(TypeError, match=r"`composite` must be a composite name .* got int"):
        LRP(composite=3)
    with pytest.raises(ValueError, match="`canonizers` must be 'auto', None or a list of zennit Canonizers"):
        LRP(canonizers="resnet")
    with pytest.raises(TypeError, match=r"`canonizers\[0\]` must be a zennit.canonizers.Canonizer, got str"):
        LRP(canonizers=["resnet"])
    with pytest.raises(ValueError, match="`canonizers` applies to composite names only"):
        LRP(composite=EpsilonPlusFlat(), canonizers=[ResNetCanonizer()])
    with pytest.raises(ValueError, match="`channel_reduction` must be one of"):
        LRP(channel_reduction="mean")
    model = NormalizedInput()
    with pytest.raises(ValueError, match=r"cannot merge BatchNorm module\(s\) \['norm'\]"):
        LRP()(model, torch.rand(1, 3, 6, 6), torch.tensor([0]))
    assert_no_hooks(model)
    assert all(p.requires_grad for p in model.parameters())
    assert LRP(canonizers=None)(model, torch.rand(1, 3, 6, 6), torch.tensor([0])).shape == (1, 1, 6, 6)
    with pytest.raises(ValueError, match=r"class index 2.*outputs 2 classes"):
        LRP(canonizers=None)(model, torch.rand(1, 3, 6, 6), torch.tensor([2]))


@pytest.mark.slow
@pytest.mark.parametrize("build", [torchvision.models.vgg11, torchvision.models.vgg11_bn])
def test_torchvision_vgg11_matches_zennit_and_is_left_as_found(build) -> None:
    torch.manual_seed(0)
    model = prime_batchnorm(build(weights=None, num_classes=4)).eval()
    inputs, target = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(8)), torch.tensor([2])
    before = snapshot(model)
    ours = LRP()(model, inputs, target)
    assert_as_found(model, before)
    reference = zennit_reference(model, EpsilonPlusFlat(canonizers=[VGGCanonizer()]), inputs, target, 4)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-7)


def test_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Zennit or zennit-crp, importing the package still works; using LRP or CRP names the extra."""
    import lightning_xai
    from lightning_xai.explainers import ConceptRelevance

    assert lightning_xai.LRP is LRP
    for module in ("zennit", "zennit.attribution", "zennit.canonizers", "zennit.composites", "zennit.core"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=r'pip install "lightning-xai\[concepts\]"'):
        LRP(composite=EpsilonPlusFlat())
    with pytest.raises(ImportError, match=r"LRP and concept relevance need Zennit \(LGPL-3.0\)"):
        LRP()(nn.Linear(2, 2), torch.rand(1, 1, 1, 2), torch.tensor([0]))
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "crp.attribution", None)
    with pytest.raises(ImportError, match=r"zennit-crp .*pip install \"lightning-xai\[concepts\]\""):
        ConceptRelevance("layer")
