"""Sobol: the Jansen estimator on functions whose total indices are known, and the explainer against a numpy loop
following the reference code (scipy's Sobol sequence, cv2 blur and bicubic resize)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import qmc
from torch import nn

from lightning_xai.explainers.sobol import Sobol, jansen_total_indices, sobol_design
from tests.helpers.models import ResidualCNN


def _scipy_design(grid_size: int, n_design: int) -> np.ndarray:
    """``ScipySobolSequence`` of the reference code: [A; B; C_1; ...; C_d]."""
    dims = grid_size**2
    points = qmc.Sobol(2 * dims, scramble=False).random(n_design).astype(np.float32)
    a, b = points[:, :dims], points[:, dims:]
    c = np.array([a.copy() for _ in range(dims)])
    for i in range(dims):
        c[i, :, i] = b[:, i]
    return np.concatenate([a, b, c.reshape(-1, dims)], axis=0)


def _reference_jansen(outputs: np.ndarray, n_design: int, dims: int) -> np.ndarray:
    a = outputs[:n_design]
    c = [outputs[2 * n_design + n_design * i : 2 * n_design + n_design * (i + 1)] for i in range(dims)]
    f0 = np.mean(a)
    var = np.sum([(v - f0) ** 2 for v in a]) / (len(a) - 1)
    return np.array([np.sum((a - c[i]) ** 2.0) / (2 * n_design * var) for i in range(dims)])


def _reference_sobol(model, inputs, target, grid_size, n_design, perturbation, score) -> torch.Tensor:
    """One image at a time, one mask at a time, in numpy where the reference uses numpy or OpenCV."""
    design = _scipy_design(grid_size, n_design)
    height, width = inputs.shape[-2:]
    rows = np.floor(np.arange(height) * grid_size / height).astype(int)  # F.interpolate "nearest"
    columns = np.floor(np.arange(width) * grid_size / width).astype(int)
    maps = []
    for image, label in zip(inputs.numpy(), target.tolist(), strict=True):
        blurred = cv2.blur(image.transpose(1, 2, 0), (10, 10)).reshape(height, width, -1).transpose(2, 0, 1)
        outputs = []
        for mask in design.reshape(-1, grid_size, grid_size):
            upsampled = mask[rows][:, columns][None]
            if perturbation == "inpainting":
                perturbed = image * upsampled
            elif perturbation == "blurring":
                perturbed = image * upsampled + (1.0 - upsampled) * blurred
            else:
                perturbed = image * (upsampled - 0.5)
            with torch.no_grad():
                logits = model(torch.from_numpy(perturbed[None]).float())
            scores = torch.softmax(logits, 1) if score == "probability" else logits
            outputs.append(scores[0, label].item())
        indices = _reference_jansen(np.array(outputs), n_design, grid_size**2).astype(np.float32)
        maps.append(cv2.resize(indices.reshape(grid_size, grid_size), (width, height), interpolation=cv2.INTER_CUBIC))
    return torch.from_numpy(np.stack(maps))[:, None]


class CellSumModel(nn.Module):
    """Class 0: ``f(x) = sum_i c_i * mean of channel 0 over grid cell i`` (additive in the cells)."""

    def __init__(self, coefficients: torch.Tensor, cell: int) -> None:
        super().__init__()
        self.register_buffer("coefficients", coefficients)
        self.cell = cell

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cells = F.avg_pool2d(x[:, :1], self.cell).flatten(1)
        return torch.stack([cells @ self.coefficients, torch.zeros(len(x))], dim=1)


def test_design_matches_scipy_unscrambled_sobol() -> None:
    np.testing.assert_array_equal(sobol_design(3, 16).numpy(), _scipy_design(3, 16))


@pytest.mark.parametrize("n_design", [64, 256])
def test_jansen_recovers_total_indices_of_an_additive_function(n_design) -> None:
    # f = sum_i c_i u_i with independent uniform u_i: ST_i = c_i^2 var(U) / sum_j c_j^2 var(U) = c_i^2 / sum c^2.
    coefficients = torch.tensor([3.0, 1.0, 0.0, 2.0, 0.5], dtype=torch.float64)
    design = torch.quasirandom.SobolEngine(10, scramble=False).draw(n_design, dtype=torch.float64)
    a, b = design[:, :5], design[:, 5:]
    c = a.repeat(5, 1, 1)
    for i in range(5):
        c[i, :, i] = b[:, i]
    scores = torch.cat([a, b, c.flatten(0, 1)]) @ coefficients
    expected = coefficients**2 / (coefficients**2).sum()
    torch.testing.assert_close(jansen_total_indices(scores, n_design), expected, atol=0.1 * expected.max(), rtol=0.1)


def test_jansen_matches_the_reference_estimator_on_a_batch() -> None:
    scores = torch.rand(3, 8 * 11, dtype=torch.float64)
    expected = torch.stack([torch.from_numpy(_reference_jansen(s.numpy(), 8, 9)) for s in scores])
    torch.testing.assert_close(jansen_total_indices(scores, 8), expected)


def test_jansen_gives_zero_for_a_constant_output() -> None:
    assert torch.equal(jansen_total_indices(torch.full((2, 4 * 6), 3.0), 4), torch.zeros(2, 4))


def test_sobol_recovers_the_known_indices_of_a_cell_additive_model() -> None:
    coefficients = torch.tensor([0.0, 1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 0.0, 1.0])
    model = CellSumModel(coefficients, cell=4)
    inputs = torch.ones(1, 1, 12, 12)  # inpainting: the perturbed image is the mask, cell i holds u_i
    maps = Sobol(grid_size=3, n_design=256, batch_size=512)(model, inputs, torch.tensor([0]))
    truth = (coefficients**2 / (coefficients**2).sum()).view(1, 1, 3, 3)
    expected = F.interpolate(truth, size=(12, 12), mode="bicubic", align_corners=False)
    torch.testing.assert_close(maps, expected, atol=0.03, rtol=0)


@pytest.mark.parametrize(
    ("perturbation", "score", "grid_size", "size"),
    [("inpainting", "logit", 2, (8, 8)), ("blurring", "probability", 3, (11, 12)), ("amplitude", "logit", 2, (9, 9))],
)
def test_sobol_matches_the_reference_loop(perturbation, score, grid_size, size) -> None:
    torch.manual_seed(0)
    model = ResidualCNN(in_channels=2, num_classes=3).eval()
    inputs = torch.randn(2, 2, *size)
    target = torch.tensor([2, 0])
    explainer = Sobol(grid_size=grid_size, n_design=16, perturbation=perturbation, batch_size=20, score=score)
    expected = _reference_sobol(model, inputs, target, grid_size, 16, perturbation, score)
    torch.testing.assert_close(explainer(model, inputs, target), expected, atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"grid_size": 0}, ValueError, "grid_size"),
        ({"grid_size": 103}, ValueError, r"`grid_size` must lie in \[1, 102\]"),
        ({"n_design": 1}, ValueError, "n_design"),
        ({"n_design": 24}, ValueError, "power of two"),
        ({"perturbation": "noise"}, ValueError, r"`perturbation` must be one of \('inpainting', 'blurring', 'amp"),
        ({"score": "log_probability"}, ValueError, "score"),
        ({"batch_size": 0}, ValueError, "batch_size"),
    ],
)
def test_sobol_rejects_bad_arguments(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        Sobol(**kwargs)


def test_sobol_rejects_a_grid_larger_than_the_image() -> None:
    model = ResidualCNN(in_channels=1)
    with pytest.raises(ValueError, match="grid_size"):
        Sobol(grid_size=5, n_design=32)(model, torch.randn(1, 1, 4, 9), torch.tensor([0]))


def test_sobol_warns_when_the_design_leaves_cells_without_variation() -> None:
    with pytest.warns(UserWarning, match="n_design"):
        Sobol(grid_size=8, n_design=8)
