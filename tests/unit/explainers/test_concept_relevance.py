"""ConceptRelevance against zennit-crp's CondAttribution, a model whose concept we built, errors, model as found."""

from __future__ import annotations

import copy

import pytest
import torch
from crp.attribution import CondAttribution
from crp.concepts import ChannelConcept
from torch import Tensor, nn
from zennit.composites import EpsilonPlusFlat
from zennit.torchvision import ResNetCanonizer

from lightning_xai.explainers import LRP, ConceptRelevance
from tests.unit.explainers.test_base import assert_no_hooks
from tests.unit.explainers.test_lrp import assert_as_found, bias_free_model, epsilon_everywhere, resnet18, snapshot


def crp_reference(model: nn.Module, inputs: Tensor, target: Tensor, layer: str, ids: Tensor) -> tuple[Tensor, Tensor]:
    """zennit-crp used as its README shows, one sample at a time: channel relevances (B, C) and the conditional
    heatmaps of ``ids`` (B, k, H, W), on a copy of the model."""
    attribution = CondAttribution(copy.deepcopy(model))
    composite = EpsilonPlusFlat(canonizers=[ResNetCanonizer()])
    relevances, heatmaps = [], []
    for i in range(inputs.shape[0]):
        data = inputs[i : i + 1].clone().requires_grad_(True)
        full = attribution(data, [{"y": [int(target[i])]}], composite, record_layer=[layer])
        relevances.append(ChannelConcept().attribute(full.relevances[layer], abs_norm=False)[0])
        conditions = [{"y": [int(target[i])], layer: [int(c)]} for c in ids[i]]
        heatmaps.append(attribution(data, conditions, composite).heatmap)
    return torch.stack(relevances), torch.stack(heatmaps)


@pytest.mark.parametrize("layer", ["layer3", "layer2.0.conv2"])
def test_resnet18_matches_zennit_crp(layer: str) -> None:
    model = resnet18()
    inputs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    target = torch.tensor([3, 0])
    before = snapshot(model)
    explainer = ConceptRelevance(layer, top_k=3, chunk_size=4)  # 6 heatmaps in chunks of 4: batching is checked
    result = explainer.concepts(model, inputs, target)
    assert_as_found(model, before)
    assert result.ids.shape == (2, 3) and result.ids.dtype == torch.long
    assert result.relevances.shape == (2, 3) and result.heatmaps.shape == (2, 3, 32, 32)
    reference_relevance, reference_heatmaps = crp_reference(model, inputs, target, layer, result.ids)
    # the ids are the top 3 of zennit-crp's channel relevances, in order, with their values
    torch.testing.assert_close(result.ids, reference_relevance.topk(3, dim=1).indices)
    torch.testing.assert_close(result.relevances, reference_relevance.topk(3, dim=1).values)
    torch.testing.assert_close(explainer.channel_relevance(model, inputs, target), reference_relevance)
    torch.testing.assert_close(result.heatmaps, reference_heatmaps, rtol=1e-5, atol=1e-8)
    # the full map is LRP's (Zennit's Gradient attributor with the same composite)
    torch.testing.assert_close(explainer(model, inputs, target), LRP()(model, inputs, target), rtol=1e-5, atol=1e-8)
    assert_as_found(model, before)


def test_concept_heatmaps_conserve_their_relevance_on_a_bias_free_model() -> None:
    """Known answer: with the epsilon rule and no bias, each conditional heatmap sums to its channel's relevance,
    and the channels' relevances sum to the target logit."""
    model = bias_free_model()
    inputs = torch.rand(3, 2, 8, 8, generator=torch.Generator().manual_seed(10))
    target = torch.tensor([2, 0, 1])
    explainer = ConceptRelevance("2", top_k=4, composite=epsilon_everywhere(), canonizers=None)
    result = explainer.concepts(model, inputs, target)
    torch.testing.assert_close(result.heatmaps.flatten(2).sum(-1), result.relevances, rtol=1e-4, atol=1e-6)
    logits = model(inputs).gather(1, target.view(-1, 1)).squeeze(1).detach()
    torch.testing.assert_close(explainer.channel_relevance(model, inputs, target).sum(1), logits, rtol=1e-4, atol=1e-6)
    # a binary head's negative class through a callable: the channel relevances change sign
    binary = nn.Sequential(model, nn.Linear(3, 1, bias=False)).eval()
    explainer = ConceptRelevance("0.2", top_k=2, composite=epsilon_everywhere(), canonizers=None)
    positive = explainer.channel_relevance(binary, inputs, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(explainer.channel_relevance(binary, inputs, lambda o: -o[:, 0]), -positive)


class PatchDetector(nn.Module):
    """Channel 2 of ``features`` fires only on a bright 4x4 patch and is what decides class 1.

    The 3x3 all-ones filter with bias -6 stays below zero on background noise in [-0.3, 0.3] (a 3x3 sum is at most
    2.7) and reaches 3 inside a patch of ones. Channels 0, 1 and 3 fire everywhere (they see the pixel plus 0.5) but
    weigh 0.005 on every class; channel 2 weighs 2 on class 1 and nothing on the others.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.weight[:, 0, 1, 1] = 1.0
            self.features.weight[2] = 1.0
            self.features.bias.copy_(torch.tensor([0.5, 0.5, -6.0, 0.5]))
            self.fc.weight.fill_(0.005)
            self.fc.weight[:, 2] = torch.tensor([0.0, 2.0, 0.0])
            self.fc.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.relu(self.features(x))).flatten(1))


def patch_images(count: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Noise images, each with a patch of ones at a random place; the patch mask of each image."""
    generator = torch.Generator().manual_seed(seed)
    images = (torch.rand(count, 1, 16, 16, generator=generator) - 0.5) * 0.6
    masks = torch.zeros(count, 16, 16)
    for i in range(count):
        top, left = torch.randint(1, 11, (2,), generator=generator).tolist()
        images[i, 0, top : top + 4, left : left + 4] = 1.0
        masks[i, top - 1 : top + 5, left - 1 : left + 5] = 1.0  # the patch and the filter's reach around it
    return images, masks


def test_the_channel_that_decides_a_class_ranks_first_and_points_at_the_patch() -> None:
    model = PatchDetector().eval()
    images, masks = patch_images(6)
    assert bool((model(images).argmax(1) == 1).all())  # the patch decides class 1
    result = ConceptRelevance("features", top_k=2).concepts(model, images, torch.ones(6, dtype=torch.long))
    assert result.ids[:, 0].tolist() == [2] * 6
    assert bool((result.relevances[:, 0] > 10 * result.relevances[:, 1].abs()).all())
    # its conditional heatmap lies on the patch: at least 95 % of its absolute mass
    heat = result.heatmaps[:, 0].abs()
    assert bool(((heat * masks).flatten(1).sum(1) >= 0.95 * heat.flatten(1).sum(1)).all())
    # on noise without a patch the channel carries no relevance
    noise = (torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(1)) - 0.5) * 0.6
    relevance = ConceptRelevance("features").channel_relevance(model, noise, torch.ones(4, dtype=torch.long))
    assert relevance[:, 2].abs().max() == 0


class TupleLayer(nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, x


class VectorLayer(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.sum(dim=(1, 2, 3))


class OddLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pair = TupleLayer()
        self.vector = VectorLayer()
        self.unused = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.pair(self.conv(x))[0]
        return self.fc(h.mean(dim=(2, 3))) + 0 * self.vector(h)[:, None]


def test_bad_arguments_are_named() -> None:
    model, inputs, target = OddLayers().eval(), torch.rand(2, 3, 6, 6), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"`layer` 'cnv' is not a module of the model\. Close candidates: \['conv'"):
        ConceptRelevance("cnv").concepts(model, inputs, target)
    with pytest.raises(ValueError, match=r"`top_k` must be at most the 4 channels of layer 'conv', got 6"):
        ConceptRelevance("conv", top_k=6).concepts(model, inputs, target)
    with pytest.raises(ValueError, match=r"`layer` 'pair' must output one tensor with channels"):
        ConceptRelevance("pair").concepts(model, inputs, target)
    assert_no_hooks(model)  # zennit-crp alone leaves its recording hook on 'pair' when it fails
    with pytest.raises(ValueError, match=r"`layer` 'vector' must output channels \(B, C, \.\.\.\), got .* \(2,\)"):
        ConceptRelevance("vector").concepts(model, inputs, target)
    with pytest.raises(ValueError, match="`layer` 'unused' was not called in the model's forward pass"):
        ConceptRelevance("unused").channel_relevance(model, inputs, target)
    with pytest.raises(TypeError, match="`layer` must be a dotted module name"):
        ConceptRelevance(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`top_k` must be an int >= 1, got 0"):
        ConceptRelevance("conv", top_k=0)
    with pytest.raises(ValueError, match=r"`composite` must be one of .* got 'zplus'"):
        ConceptRelevance("conv", composite="zplus")
    with pytest.raises(ValueError, match=r"`ids` must be integer channel indices of shape \(B, k\)"):
        ConceptRelevance("conv").conditional_heatmaps(model, inputs, target, torch.zeros(3, 1, dtype=torch.long))
    assert_no_hooks(model)
    assert all(p.requires_grad for p in model.parameters())
    # the module itself is accepted as the layer, and the explicit-ids path matches concepts()
    explainer = ConceptRelevance(model.conv, top_k=2, canonizers=None)
    result = explainer.concepts(model, inputs, target)
    torch.testing.assert_close(explainer.conditional_heatmaps(model, inputs, target, result.ids), result.heatmaps)


def test_layer_names_stay_relative_to_the_users_module_under_forward_fn() -> None:
    """The monitor's ``forward_fn`` wraps the module (ForwardWrapper); ``layer`` names the user's module's layer."""
    from lightning_xai.callbacks._batches import ForwardWrapper

    model = PatchDetector().eval()
    images, _ = patch_images(2)
    target = torch.ones(2, dtype=torch.long)
    wrapped = ForwardWrapper(model, lambda module, x: module(x))
    explainer = ConceptRelevance("features", top_k=2)
    torch.testing.assert_close(
        explainer.channel_relevance(wrapped, images, target), explainer.channel_relevance(model, images, target)
    )
    assert explainer.concepts(wrapped, images, target).ids[:, 0].tolist() == [2, 2]
