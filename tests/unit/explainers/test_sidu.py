"""SIDU against a numpy / scipy per-channel loop following the reference code (satyamahesh84/SIDU_XAI_CODE)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from skimage.transform import resize
from torch import nn

from lightning_xai.explainers.sidu import SIDU
from tests.helpers.models import ResidualCNN, strided_cnn


def _reference_sidu(model, layer, inputs, target, threshold=0.5) -> torch.Tensor:
    """``generate_masks_conv_output`` + ``explain_SIDU`` of the reference, one image at a time, in numpy."""
    maps = []
    height, width = inputs.shape[-2:]
    for image, label in zip(inputs, target.tolist(), strict=True):
        captured = []
        handle = layer.register_forward_hook(
            lambda module, args, output, captured=captured: captured.append(output.clone())
        )
        with torch.no_grad():
            pred_org = torch.softmax(model(image[None]), dim=1).numpy()  # (1, classes)
        handle.remove()
        last_conv_output = captured[0][0].numpy().transpose(1, 2, 0)  # (h, w, K) as Keras
        channels = last_conv_output.shape[-1]
        masks = np.empty((channels, height, width))
        for i in range(channels):
            binary = (last_conv_output[:, :, i] > threshold).astype("float32")
            masks[i] = resize(binary, (height, width), order=1, mode="reflect", anti_aliasing=False)
        masked = image.numpy()[None] * masks[:, None]  # (K, C, H, W)
        with torch.no_grad():
            preds = torch.softmax(model(torch.from_numpy(masked).float()), dim=1).numpy().astype(np.float64)
        weights = np.sqrt(np.exp(-(np.abs(pred_org - preds) ** 2) / 0.25**2))  # (K, classes)
        uniqueness = cdist(preds, preds).sum(axis=1)
        uniqueness = (uniqueness - uniqueness.min()) / (uniqueness.max() - uniqueness.min() + 1e-13)
        weights = weights * uniqueness.reshape(-1, 1)
        saliency = weights.T.dot(masks.reshape(channels, -1)).reshape(-1, height, width) / channels / 0.5
        maps.append(saliency[label])
    return torch.from_numpy(np.stack(maps)).float()[:, None]


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return ResidualCNN(in_channels=3, num_classes=4, width=8).eval()


@pytest.mark.parametrize(
    ("layer", "threshold", "batch_size", "size"),
    [("stem", 0.5, 7, (8, 8)), ("head_conv", 0.1, 64, (9, 12)), ("1", 0.2, 4, (9, 12)), ("1", 0.5, 64, (8, 8))],
)
def test_sidu_matches_the_reference_loop(model, layer, threshold, batch_size, size) -> None:
    model = strided_cnn() if layer == "1" else model
    inputs = torch.randn(3, 3, *size)
    target = torch.tensor([1, 3, 0])
    expected = _reference_sidu(model, dict(model.named_modules())[layer], inputs, target, threshold)
    actual = SIDU(layer=layer, batch_size=batch_size, threshold=threshold)(model, inputs, target)
    assert expected.abs().max() > 0.05  # the comparison is not between two zero maps
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)


def test_sidu_callable_target_uses_its_score_for_the_similarity_difference(model) -> None:
    # With a callable returning the softmax probability, SD matches the class-index case; the uniqueness then uses
    # the raw outputs (logits) instead of the probabilities, so the maps differ but stay finite and non-zero.
    inputs = torch.randn(2, 3, 8, 8)
    maps = SIDU(layer="stem")(model, inputs, lambda out: torch.softmax(out, dim=1)[:, 1])
    assert maps.shape == (2, 1, 8, 8) and torch.isfinite(maps).all() and maps.abs().max() > 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"layer": 1.5}, TypeError, "`layer`"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"threshold": float("nan")}, ValueError, "threshold"),
        ({"threshold": "high"}, TypeError, "threshold"),
    ],
)
def test_sidu_rejects_bad_arguments(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        SIDU(**kwargs)


def test_sidu_default_threshold_is_the_reference_codes_current_one() -> None:
    assert SIDU().threshold == 0.1


def test_sidu_warns_and_falls_back_when_every_mask_is_empty() -> None:
    # Issue 15: no activation above the threshold gave an all-zero map with no notice.
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.Tanh(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    )
    inputs, target = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    with pytest.warns(UserWarning, match=r"no activation of `layer` '1' exceeds `threshold`=5.0 for images \[0, 1\]"):
        maps = SIDU(layer="1", threshold=5.0)(model, inputs, target)
    assert float(maps.flatten(1).amax(1).min()) > 0
    activations = torch.tanh(model[0](inputs))
    expected_masks = (activations > activations.mean(dim=(2, 3), keepdim=True)).float()
    from lightning_xai.explainers.sidu import sidu_binary_masks

    with pytest.warns(UserWarning):
        torch.testing.assert_close(sidu_binary_masks(activations, 5.0), expected_masks)
