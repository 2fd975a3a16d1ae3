"""Score-CAM against a plain per-image, per-channel loop following the official code (haofanwang/Score-CAM)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_xai.explainers.score_cam import ScoreCAM
from tests.helpers.models import ResidualCNN, strided_cnn


def _official_score_cam(model, layer, inputs, target, score="probability"):
    """``ScoreCAM.forward`` of the official code, one image at a time (its batch size is 1)."""
    maps = []
    for image, label in zip(inputs, target.tolist(), strict=True):
        image = image[None]
        _, _, h, w = image.shape
        captured = []
        handle = layer.register_forward_hook(lambda module, args, output, captured=captured: captured.append(output))
        with torch.no_grad():
            model(image)
        handle.remove()
        activations = captured[0]
        saliency = torch.zeros(1, 1, h, w)
        with torch.no_grad():
            for i in range(activations.shape[1]):
                channel = F.interpolate(activations[:, i : i + 1], size=(h, w), mode="bilinear", align_corners=False)
                if channel.max() == channel.min():
                    continue
                normalised = (channel - channel.min()) / (channel.max() - channel.min())
                output = model(image * normalised)
                output = F.softmax(output, dim=1) if score == "probability" else output
                saliency += output[0][label] * channel
        saliency = F.relu(saliency)
        low, high = saliency.min(), saliency.max()
        maps.append(torch.zeros_like(saliency) if low == high else (saliency - low) / (high - low))
    return torch.cat(maps)


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return ResidualCNN(in_channels=3, num_classes=4, width=6).eval()


@pytest.mark.parametrize(
    ("layer", "score", "batch_size"), [("head_conv", "probability", 5), ("stem", "logit", 64), ("2", "probability", 4)]
)
def test_score_cam_matches_the_official_loop(model, layer, score, batch_size) -> None:
    model = strided_cnn() if layer == "2" else model
    inputs = torch.randn(3, 3, 10, 11)
    target = torch.tensor([1, 3, 0])
    expected = _official_score_cam(model, dict(model.named_modules())[layer], inputs, target, score)
    actual = ScoreCAM(layer=layer, batch_size=batch_size, score=score)(model, inputs, target)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)


def test_score_cam_default_layer_is_the_last_conv2d(model) -> None:
    inputs = torch.randn(2, 3, 8, 8)
    target = torch.tensor([0, 1])
    torch.testing.assert_close(ScoreCAM()(model, inputs, target), ScoreCAM(layer="head_conv")(model, inputs, target))
    torch.testing.assert_close(
        ScoreCAM(layer=model.head_conv)(model, inputs, target), ScoreCAM(layer="head_conv")(model, inputs, target)
    )


class _ConstantChannels(nn.Module):
    """Layer ``features``: channel 0 reads the image, channel 1 is constant (skipped), channel 2 is all zero."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 3, kernel_size=1)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1, 1))
            self.features.bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def test_score_cam_skips_constant_channels() -> None:
    torch.manual_seed(0)
    model = _ConstantChannels().eval()
    inputs = torch.rand(2, 1, 6, 6)
    calls = []
    handle = model.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        maps = ScoreCAM(layer="features", batch_size=100)(model, inputs, torch.tensor([0, 1]))
    finally:
        handle.remove()
    assert calls == [2, 2]  # the clean forward, then one masked image per image (channel 0 only)
    torch.testing.assert_close(maps, _official_score_cam(model, model.features, inputs, torch.tensor([0, 1])))


def test_score_cam_of_constant_activations_is_zero() -> None:
    model = _ConstantChannels().eval()
    with torch.no_grad():
        model.features.weight.zero_()
    maps = ScoreCAM(layer="features")(model, torch.rand(2, 1, 6, 6), torch.tensor([0, 1]))
    assert torch.equal(maps, torch.zeros(2, 1, 6, 6))


def test_score_cam_callable_target(model) -> None:
    inputs = torch.randn(2, 3, 8, 8)
    explainer = ScoreCAM(score="logit", batch_size=3)
    torch.testing.assert_close(
        explainer(model, inputs, lambda out: out[:, 1]), explainer(model, inputs, torch.tensor([1, 1]))
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"layer": 3}, TypeError, "`layer` must be a dotted module name"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"score": "log_probability"}, ValueError, "score"),
    ],
)
def test_score_cam_rejects_bad_arguments(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        ScoreCAM(**kwargs)


def test_score_cam_rejects_an_unknown_layer_or_a_layer_without_feature_maps(model) -> None:
    inputs, target = torch.randn(1, 3, 8, 8), torch.tensor([0])
    with pytest.raises(ValueError, match="head_con"):
        ScoreCAM(layer="head_cnv")(model, inputs, target)
    with pytest.raises(ValueError, match=r"\(B, K, h, w\)"):
        ScoreCAM(layer="fc")(model, inputs, target)
