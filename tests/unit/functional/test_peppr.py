from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from lightning_xai.functional.peppr import global_map_ranks, peppr
from tests.helpers.models import RegionModel, ResidualCNN, region_mask


def _reference_curves(
    model: nn.Module, inputs: Tensor, labels: Tensor, order_of: list[list[int]], steps: int, baseline: Tensor
) -> dict[str, np.ndarray]:
    """Plain loops: for every image and step, erase (or restore) pixel by pixel, score the image alone."""
    _, _, height, width = inputs.shape
    num_pixels = height * width
    curves: dict[str, list[list[float]]] = {
        name: [] for name in ("erasing", "restoration", "erasing_acc", "restoration_acc")
    }
    model.eval()
    with torch.no_grad():
        for index in range(inputs.shape[0]):
            label = int(labels[index])
            order = order_of[label] if len(order_of) > 1 else order_of[0]
            rows: dict[str, list[float]] = {name: [] for name in curves}
            for step in range(steps + 1):
                count = step * num_pixels // steps
                erased = inputs[index].clone()
                restored = baseline.expand_as(inputs[index]).clone()
                for pixel in order[:count]:
                    row, col = divmod(pixel, width)
                    erased[:, row, col] = baseline.expand_as(inputs[index])[:, row, col]
                    restored[:, row, col] = inputs[index][:, row, col]
                for name, image in (("erasing", erased), ("restoration", restored)):
                    logits = model(image[None])[0]
                    rows[name].append(float(torch.softmax(logits, dim=0)[label]))
                    rows[f"{name}_acc"].append(float(int(logits.argmax()) == label))
            for name in curves:
                curves[name].append(rows[name])
    return {name: np.mean(np.array(values), axis=0) for name, values in curves.items()}


def small_classifier(in_features: int, num_classes: int, seed: int = 0) -> nn.Module:
    """A nonlinear MLP: cheap on a loaded CPU, with probabilities and argmax that move as pixels are erased."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, 16), nn.Tanh(), nn.Linear(16, num_classes))


def _descending_order(values: Tensor) -> list[int]:
    flat = values.flatten().tolist()
    return sorted(range(len(flat)), key=lambda pixel: -flat[pixel])  # stable: ties keep raster order


@pytest.mark.parametrize("per_label", [False, True])
def test_curves_match_per_image_per_step_loop(per_label: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    model = small_classifier(2 * 6 * 6, 3)
    inputs = torch.randn(5, 2, 6, 6, generator=generator)
    labels = torch.tensor([0, 2, 1, 2, 0])
    if per_label:
        global_map = torch.rand(3, 1, 6, 6, generator=generator)
        global_map[0, 0, 0, :3] = global_map[0, 0, 1, :3] = 0.5  # ties
        orders = [_descending_order(global_map[label]) for label in range(3)]
    else:
        global_map = torch.rand(6, 6, generator=generator).round(decimals=1)  # many ties
        orders = [_descending_order(global_map)]
    baseline = torch.tensor([0.5, -1.0]).view(2, 1, 1)
    steps = 4
    result = peppr(model, inputs, labels, global_map, steps=steps, baseline=baseline, batch_size=7, seed=3)
    reference = _reference_curves(model, inputs, labels, orders, steps, baseline)
    random_order = torch.randperm(36, generator=torch.Generator().manual_seed(3)).tolist()
    random_reference = _reference_curves(model, inputs, labels, [random_order], steps, baseline)
    fractions = np.arange(steps + 1) * 36 // steps / 36
    np.testing.assert_allclose(result["fractions"].numpy(), fractions, rtol=1e-6)
    for prefix, expected in (("", reference), ("random_", random_reference)):
        for direction in ("erasing", "restoration"):
            np.testing.assert_allclose(result[f"{prefix}{direction}_curve"].numpy(), expected[direction], atol=1e-5)
            np.testing.assert_allclose(
                result[f"{prefix}{direction}_accuracy_curve"].numpy(), expected[f"{direction}_acc"], atol=1e-6
            )
            np.testing.assert_allclose(
                result[f"{prefix}{direction}_auc"].item(), np.trapezoid(expected[direction], fractions), atol=1e-5
            )
        np.testing.assert_allclose(
            result[f"{prefix}peppr"].item(),
            np.trapezoid(expected["restoration"] - expected["erasing"], fractions),
            atol=1e-5,
        )


def test_chunk_size_does_not_change_the_result() -> None:
    model = small_classifier(25, 2)
    inputs, labels, global_map = torch.randn(4, 1, 5, 5), torch.tensor([0, 1, 1, 0]), torch.rand(5, 5)
    small = peppr(model, inputs, labels, global_map, steps=5, batch_size=1)
    large = peppr(model, inputs, labels, global_map, steps=5, batch_size=1000)
    for key in small:
        torch.testing.assert_close(small[key], large[key])


def test_true_region_map_beats_a_random_ranking() -> None:
    """RegionModel reads only its region: erasing the region first kills the evidence, restoring it recovers it."""
    generator = torch.Generator().manual_seed(1)
    model = RegionModel(num_classes=3)
    inputs = 4 * torch.randn(24, 1, 16, 16, generator=generator)  # confident predictions
    labels = model(inputs).argmax(dim=1)
    result = peppr(model, inputs, labels, region_mask(), steps=16, batch_size=128, seed=0)
    assert result["erasing_auc"] < result["random_erasing_auc"] - 0.15
    assert result["restoration_auc"] > result["random_restoration_auc"] + 0.15
    assert result["erasing_accuracy_auc"] < result["random_erasing_accuracy_auc"]
    assert result["peppr"] > result["random_peppr"] + 0.3
    # once the 16 region pixels (1/16 of the image) are erased, every class is equally likely
    torch.testing.assert_close(result["erasing_curve"][1:], torch.full((16,), 1 / 3))


def test_ranks() -> None:
    assert global_map_ranks(torch.tensor([[[0.1, 0.9, 0.5]]])).tolist() == [[2, 0, 1]]
    assert global_map_ranks(torch.tensor([[[[0.0, 1.0]]], [[[1.0, 0.0]]]])).tolist() == [[1, 0], [0, 1]]
    assert global_map_ranks(torch.zeros(1, 3)).tolist() == [[0, 1, 2]]  # ties in raster order


def test_model_is_left_as_found() -> None:
    model = ResidualCNN(in_channels=1, num_classes=2, width=4).train()
    inputs, global_map = torch.randn(2, 1, 4, 4), torch.rand(4, 4)
    before = torch.get_rng_state()
    peppr(model, inputs, torch.tensor([0, 1]), global_map, steps=2)
    assert model.training and all(parameter.requires_grad for parameter in model.parameters())
    assert all(parameter.grad is None for parameter in model.parameters())
    assert torch.equal(before, torch.get_rng_state())


def test_errors() -> None:
    model = ResidualCNN(in_channels=1, num_classes=3, width=4)
    inputs, labels = torch.randn(2, 1, 4, 4), torch.tensor([0, 2])
    with pytest.raises(ValueError, match=r"`global_map` must have shape .* got \(2, 4, 4\)"):
        peppr(model, inputs, labels, torch.rand(2, 4, 4))
    with pytest.raises(ValueError, match=r"spatial size \(5, 4\)"):
        peppr(model, inputs, labels, torch.rand(5, 4))
    with pytest.raises(ValueError, match=r"per-label global map has 2 labels"):
        peppr(model, inputs, labels, torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"`labels` holds class index 5"):
        peppr(model, inputs, torch.tensor([0, 5]), torch.rand(4, 4))
    with pytest.raises(ValueError, match="`steps`"):
        peppr(model, inputs, labels, torch.rand(4, 4), steps=0)
    with pytest.raises(ValueError, match=r"`baseline`.*broadcast"):
        peppr(model, inputs, labels, torch.rand(4, 4), baseline=torch.zeros(3, 1, 1))
    with pytest.raises(ValueError, match="`score`"):
        peppr(model, inputs, labels, torch.rand(4, 4), score="softplus")
