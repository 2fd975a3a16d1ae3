"""RISE against a plain per-mask loop of the paper's formula, with masks built as the official code (skimage)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.transform import resize

from lightning_xai.explainers.rise import RISE, rise_mask_parameters, rise_masks
from tests.helpers.models import ResidualCNN


def _official_masks(grids: torch.Tensor, shifts: torch.Tensor, height: int, width: int) -> np.ndarray:
    """``eclique/RISE`` ``generate_masks``: skimage bilinear resize to (s + 1) * cell, crop at the shift."""
    grid_size = grids.shape[-1]
    cell = np.ceil(np.array([height, width]) / grid_size)
    up_size = ((grid_size + 1) * cell).astype(int)
    masks = np.empty((grids.shape[0], height, width))
    for i, (grid, (x, y)) in enumerate(zip(grids.numpy(), shifts.tolist(), strict=True)):
        upsampled = resize(grid.astype("float32"), up_size, order=1, mode="reflect", anti_aliasing=False)
        masks[i] = upsampled[x : x + height, y : y + width]
    return masks


def _reference_rise(model, inputs, target, grids, shifts, p, score="probability"):
    """sal = sum_i f(I * M_i) M_i / (N p), one image and one mask at a time."""
    height, width = inputs.shape[-2:]
    masks = torch.from_numpy(_official_masks(grids, shifts, height, width)).float()
    maps = torch.zeros(inputs.shape[0], height, width)
    with torch.no_grad():
        for b in range(inputs.shape[0]):
            for mask in masks:
                outputs = model(inputs[b : b + 1] * mask)
                scores = torch.softmax(outputs, dim=1) if score == "probability" else outputs
                maps[b] += scores[0, target[b]] * mask
    return (maps / (len(masks) * p))[:, None]


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return ResidualCNN(in_channels=3, num_classes=4).eval()


@pytest.mark.parametrize(
    ("grid_size", "p", "size", "score"), [(3, 0.5, (12, 12), "probability"), (4, 0.3, (10, 13), "logit")]
)
def test_rise_matches_per_mask_loop(model, grid_size, p, size, score) -> None:
    inputs = torch.randn(3, 3, *size)
    target = torch.tensor([0, 3, 1])
    explainer = RISE(n_masks=30, grid_size=grid_size, p=p, seed=7, batch_size=7, score=score)
    grids, shifts = rise_mask_parameters(30, grid_size, p, *size, seed=7)
    expected = _reference_rise(model, inputs, target, grids, shifts, p, score)
    torch.testing.assert_close(explainer(model, inputs, target), expected, atol=1e-5, rtol=1e-4)


def test_rise_mask_parameters_follow_the_official_ranges() -> None:
    grids, shifts = rise_mask_parameters(4000, 7, 0.3, 224, 200, seed=0)
    assert set(grids.unique().tolist()) == {0.0, 1.0}
    assert abs(grids.mean().item() - 0.3) < 0.01
    assert shifts[:, 0].min() == 0 and shifts[:, 0].max() == math.ceil(224 / 7) - 1
    assert shifts[:, 1].min() == 0 and shifts[:, 1].max() == math.ceil(200 / 7) - 1


def test_rise_masks_match_skimage() -> None:
    grids, shifts = rise_mask_parameters(5, 4, 0.5, 11, 9, seed=3)
    expected = torch.from_numpy(_official_masks(grids, shifts, 11, 9)).float()[:, None]
    torch.testing.assert_close(rise_masks(grids, shifts, 11, 9), expected, atol=1e-6, rtol=0)


def test_rise_callable_target_acts_on_perturbed_outputs(model) -> None:
    inputs = torch.randn(2, 3, 8, 8)
    explainer = RISE(n_masks=20, grid_size=2, batch_size=5, score="logit")
    by_index = explainer(model, inputs, torch.tensor([2, 2]))
    by_callable = explainer(model, inputs, lambda outputs: outputs[:, 2])
    torch.testing.assert_close(by_callable, by_index)


def test_rise_map_of_one_image_does_not_depend_on_the_rest_of_the_batch(model) -> None:
    inputs = torch.randn(3, 3, 8, 8)
    target = torch.tensor([0, 1, 2])
    explainer = RISE(n_masks=25, grid_size=3, batch_size=16)
    together = explainer(model, inputs, target)
    alone = explainer(model, inputs[1:2], target[1:2])
    torch.testing.assert_close(together[1:2], alone, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_masks": 0}, ValueError, "n_masks"),
        ({"n_masks": 2.5}, TypeError, "n_masks"),
        ({"p": 0.0}, ValueError, r"`p` must lie in \(0.0, 1.0\)"),
        ({"p": 1.0}, ValueError, "`p`"),
        ({"grid_size": 0}, ValueError, "grid_size"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"seed": -1}, ValueError, "seed"),
        ({"score": "log_probability"}, ValueError, "score"),
    ],
)
def test_rise_rejects_bad_arguments(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        RISE(**kwargs)


def test_rise_rejects_a_grid_larger_than_the_image(model) -> None:
    with pytest.raises(ValueError, match=r"`grid_size` must lie in \[1, min\(H, W\)\] = \[1, 6\].*got 7"):
        RISE(n_masks=2, grid_size=7)(model, torch.randn(1, 3, 6, 8), torch.tensor([0]))
