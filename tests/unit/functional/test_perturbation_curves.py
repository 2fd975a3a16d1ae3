"""Deletion, insertion and MIF/LIF curves against a plain per-sample, per-step loop, and Quantus PixelFlipping."""

import math
import warnings

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from lightning_xai.functional.baselines import make_baseline
from lightning_xai.functional.deletion_insertion import deletion_auc, deletion_curve, insertion_auc, insertion_curve
from lightning_xai.functional.mif_lif import mif_lif_curves, mif_lif_fidelity, normalize_by_unperturbed
from lightning_xai.functional.perturbation_curves import pixel_ranks
from lightning_xai.metrics import DeletionAUC, InsertionAUC
from tests.helpers.models import LinearModel, ResidualCNN


def _reference_curve(
    model: nn.Module,
    image: Tensor,
    saliency: Tensor,
    target: int,
    steps: int,
    substrate: Tensor,
    *,
    insertion: bool = False,
    descending: bool = True,
    kind: str = "probability",
) -> list[float]:
    """One image, one step at a time: sort pixels (ties by index), copy pixels over, score."""
    _, height, width = image.shape
    values = saliency.sum(0).flatten().tolist()
    sign = -1.0 if descending else 1.0
    order = sorted(range(height * width), key=lambda i: (sign * values[i], i))
    curve = []
    for k in range(steps + 1):
        count = math.floor(k * height * width / steps + 0.5)
        perturbed, source = (substrate.clone(), image) if insertion else (image.clone(), substrate)
        for pixel in order[:count]:
            perturbed[:, pixel // width, pixel % width] = source[:, pixel // width, pixel % width]
        with torch.no_grad():
            logits = model(perturbed[None])[0]
        value = torch.softmax(logits, 0)[target] if kind == "probability" else logits[target]
        curve.append(float(value))
    return curve


def _rise_auc(curve: list[float]) -> float:
    return (sum(curve) - curve[0] / 2 - curve[-1] / 2) / (len(curve) - 1)


@pytest.fixture
def case() -> tuple[nn.Module, Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    model = ResidualCNN(in_channels=3, num_classes=4).eval()
    inputs = torch.randn(3, 3, 6, 7, generator=generator)
    maps = torch.randn(3, 3, 6, 7, generator=generator)
    maps[2] = 1.0  # a constant map: ties everywhere
    return model, inputs, maps, torch.tensor([0, 3, 1])


@pytest.mark.parametrize("baseline", [0.0, "mean", "noise"])
def test_deletion_matches_per_step_loop(case: tuple, baseline: object) -> None:
    model, inputs, maps, target = case
    steps = 5  # 42 pixels: the counts need rounding
    curves = deletion_curve(model, inputs, maps, target, steps=steps, baseline=baseline, batch_size=4, seed=7)
    substrate = make_baseline(inputs, baseline, seed=7)
    for b in range(3):
        expected = _reference_curve(model, inputs[b], maps[b], int(target[b]), steps, substrate[b])
        np.testing.assert_allclose(curves[b].numpy(), expected, rtol=1e-5, atol=1e-6)
        auc = deletion_auc(model, inputs, maps, target, steps=steps, baseline=baseline, seed=7)[b]
        assert auc.item() == pytest.approx(_rise_auc(expected), abs=1e-6)


def test_insertion_matches_per_step_loop_with_blur_and_logits(case: tuple) -> None:
    model, inputs, maps, target = case
    curves = insertion_curve(model, inputs, maps, target, steps=6, score="logit", batch_size=5)
    substrate = make_baseline(inputs, "blur")
    for b in range(3):
        expected = _reference_curve(
            model, inputs[b], maps[b], int(target[b]), 6, substrate[b], insertion=True, kind="logit"
        )
        np.testing.assert_allclose(curves[b].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(
        insertion_auc(model, inputs, maps, target, steps=6, score="logit"),
        torch.tensor([_rise_auc(c.tolist()) for c in curves]),
        atol=1e-6,
    )


def _scipy_rise_blur(inputs: Tensor) -> Tensor:
    """RISE's start image: conv2d with gkern(11, 5) (scipy's gaussian_filter of a delta), zero padding 5."""
    from scipy import ndimage

    delta = np.zeros((11, 11))
    delta[5, 5] = 1.0
    kernel = ndimage.gaussian_filter(delta, 5.0)
    planes = [[ndimage.convolve(c, kernel, mode="constant", cval=0.0) for c in b] for b in inputs.double().numpy()]
    return torch.from_numpy(np.array(planes)).to(inputs.dtype)


def test_rise_blur_insertion_matches_per_step_loop_on_scipys_rise_start(case: tuple) -> None:
    model, inputs, maps, target = case
    curves = insertion_curve(model, inputs, maps, target, steps=6, baseline="rise_blur", batch_size=5)
    substrate = _scipy_rise_blur(inputs)
    for b in range(3):
        expected = _reference_curve(model, inputs[b], maps[b], int(target[b]), 6, substrate[b], insertion=True)
        np.testing.assert_allclose(curves[b].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_rise_blur_gives_the_values_of_the_former_default() -> None:
    """Values pinned on main, whose default ``"blur"`` was RISE's kernel: only the default moved."""
    model = LinearModel(shape=(3, 12, 10), num_classes=4, seed=3)
    generator = torch.Generator().manual_seed(11)
    inputs = torch.randn(4, 3, 12, 10, generator=generator)
    maps = torch.randn(4, 1, 12, 10, generator=generator)
    target = torch.tensor([0, 1, 2, 3])
    insertion = InsertionAUC(steps=6, score="logit", baseline="rise_blur")
    insertion.update(model, inputs, maps, target)
    deletion = DeletionAUC(steps=6, score="logit", baseline="rise_blur")
    deletion.update(model, inputs, maps, target)
    curve = insertion_curve(model, inputs, maps, target, steps=6, score="logit", baseline="rise_blur")[0]
    np.testing.assert_allclose(insertion.per_sample().numpy(), [11.71539, -0.31773, 15.24812, 10.18719], atol=2e-5)
    np.testing.assert_allclose(deletion.per_sample().numpy(), [16.41797, -8.58596, 8.84259, 1.7839], atol=2e-5)
    np.testing.assert_allclose(
        curve.numpy(), [-0.58655, 4.03589, 3.23579, 16.85736, 17.08426, 15.01235, 28.71991], atol=2e-5
    )
    default = InsertionAUC(steps=6, score="logit")
    default.update(model, inputs, maps, target)
    assert not torch.allclose(default.per_sample(), insertion.per_sample(), atol=0.1)  # the default did move


def test_mif_lif_match_per_step_loop(case: tuple) -> None:
    model, inputs, maps, target = case
    steps = 4
    mif, lif = mif_lif_curves(model, inputs, maps, target, steps=steps, batch_size=3)
    fidelity, mif_auc, lif_auc = mif_lif_fidelity(model, inputs, maps, target, steps=steps)
    zeros = torch.zeros_like(inputs)
    x = np.linspace(0.0, 1.0, steps + 1)
    for b in range(3):
        expected_mif = np.array(_reference_curve(model, inputs[b], maps[b], int(target[b]), steps, zeros[b]))
        expected_lif = np.array(
            _reference_curve(model, inputs[b], maps[b], int(target[b]), steps, zeros[b], descending=False)
        )
        np.testing.assert_allclose(mif[b].numpy(), expected_mif, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(lif[b].numpy(), expected_lif, rtol=1e-5, atol=1e-6)
        area_mif = np.trapezoid(expected_mif / expected_mif[0], x)
        area_lif = np.trapezoid(expected_lif / expected_lif[0], x)
        assert mif_auc[b].item() == pytest.approx(area_mif, abs=1e-5)
        assert lif_auc[b].item() == pytest.approx(area_lif, abs=1e-5)
        assert fidelity[b].item() == pytest.approx(area_lif - area_mif, abs=1e-5)


def test_constant_map_ranks_pixels_in_reading_order() -> None:
    constant = torch.full((1, 1, 3, 4), 0.3)
    assert pixel_ranks(constant).tolist() == [list(range(12))]
    assert pixel_ranks(constant, descending=False).tolist() == [list(range(12))]
    ties = torch.tensor([[[[1.0, 2.0, 1.0, 2.0]]]])
    assert pixel_ranks(ties).tolist() == [[2, 0, 3, 1]]
    assert pixel_ranks(ties, descending=False).tolist() == [[0, 2, 1, 3]]


def test_normalisation_refuses_a_non_positive_unperturbed_score() -> None:
    with pytest.raises(ValueError, match=r"samples \[1\]"):
        normalize_by_unperturbed(torch.tensor([[0.5, 0.1], [0.0, 0.2]]))


def test_curves_do_not_depend_on_the_chunk_size(case: tuple) -> None:
    model, inputs, maps, target = case
    reference = deletion_curve(model, inputs, maps, target, steps=7, batch_size=1000)
    for batch_size in (1, 5, 8):
        assert torch.allclose(
            deletion_curve(model, inputs, maps, target, steps=7, batch_size=batch_size), reference, atol=1e-6
        )


def test_callable_target_is_applied_row_wise(case: tuple) -> None:
    model, inputs, maps, target = case
    by_index = deletion_curve(model, inputs[:1], maps[:1], target[:1], steps=3, score="logit")
    by_callable = deletion_curve(model, inputs[:1], maps[:1], lambda out: out[:, int(target[0])], steps=3)
    assert torch.allclose(by_index, by_callable)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"steps": 0}, ValueError, "steps"),
        ({"maps": torch.rand(3, 2, 6, 7)}, ValueError, "attributions"),
        ({"maps": torch.full((3, 1, 6, 7), float("nan"))}, ValueError, "non-finite"),
        ({"target": torch.tensor([0, 1, 9])}, ValueError, "class index 9"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"score": "softplus"}, ValueError, "score"),
    ],
)
def test_bad_arguments_are_rejected(case: tuple, change: dict, error: type, match: str) -> None:
    model, inputs, maps, target = case
    arguments = {"maps": maps, "target": target, "steps": 4, "batch_size": 8, "score": "probability"} | change
    with pytest.raises(error, match=match):
        deletion_curve(
            model,
            inputs,
            arguments["maps"],
            arguments["target"],
            steps=arguments["steps"],
            batch_size=arguments["batch_size"],
            score=arguments["score"],
        )


def test_deletion_matches_quantus_pixel_flipping() -> None:
    quantus = pytest.importorskip("quantus")
    if not hasattr(np, "trapz"):  # quantus 0.6 calls np.trapz, removed in NumPy 2.4
        np.trapz = np.trapezoid
    generator = torch.Generator().manual_seed(3)
    model = ResidualCNN(in_channels=1, num_classes=4).eval()
    inputs = torch.randn(4, 1, 8, 8, generator=generator)
    maps = torch.rand(4, 1, 8, 8, generator=generator)  # distinct values: Quantus' argsort is not stable
    target = torch.tensor([0, 1, 2, 3])
    steps = 8
    metric = quantus.PixelFlipping(
        features_in_step=64 // steps, perturb_baseline=0.0, normalise=False, abs=False, disable_warnings=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flipped = metric(
            model=model,
            x_batch=inputs.numpy(),
            y_batch=target.numpy(),
            a_batch=maps.numpy(),
            channel_first=True,
            softmax=True,
            device="cpu",
        )
    ours = deletion_curve(model, inputs, maps, target, steps=steps)
    # Quantus records the score after each step, without the unperturbed point.
    np.testing.assert_allclose(ours[:, 1:].numpy(), np.array(flipped), rtol=1e-5, atol=1e-6)
