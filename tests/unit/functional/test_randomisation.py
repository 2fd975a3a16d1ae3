"""MPRT and RandomLogit against Quantus 0.6, skimage's SSIM and known answers."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from skimage.metrics import structural_similarity
from torch import Tensor, nn

from lightning_xai._typing import TargetType
from lightning_xai.explainers import Explainer, Saliency
from lightning_xai.functional.randomisation import (
    map_similarity,
    model_randomisation,
    random_logit,
    randomisation_steps,
)
from tests.helpers.models import LinearModel, primed_residual_cnn, residual_batch

quantus = pytest.importorskip("quantus")


class EdgeDetector(Explainer):
    """|image gradient| of the input, summed over channels: ignores the model entirely."""

    needs_grad = False

    def attribute(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        dy = torch.zeros_like(inputs)
        dx = torch.zeros_like(inputs)
        dy[..., 1:, :] = inputs[..., 1:, :] - inputs[..., :-1, :]
        dx[..., :, 1:] = inputs[..., :, 1:] - inputs[..., :, :-1]
        return (dx.square() + dy.square()).sqrt().sum(1, keepdim=True)


def _numpy_explainer(explainer: Callable) -> Callable:
    def explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **kwargs: Any) -> np.ndarray:
        return explainer(model, torch.as_tensor(inputs).float(), torch.as_tensor(targets).long()).numpy()

    return explain


def skimage_ssim(shape: tuple[int, ...]) -> Callable:
    """A Quantus ``similarity_func``: skimage's 2-D Gaussian SSIM of maps of ``shape`` (independent of torchmetrics)."""

    def similarity(a: np.ndarray, b: np.ndarray, batched: bool = False, **kwargs: Any) -> np.ndarray:
        values = []
        for aa, bb in zip(a, b, strict=True):
            data_range = float(np.concatenate([aa, bb]).max() - np.concatenate([aa, bb]).min())
            values.append(
                structural_similarity(
                    aa.reshape(shape).astype(np.float64),
                    bb.reshape(shape).astype(np.float64),
                    gaussian_weights=True,
                    sigma=1.5,
                    use_sample_covariance=False,
                    data_range=data_range,
                    channel_axis=0,
                )
            )
        return np.array(values)

    return similarity


def _quiet(call: Callable[[], Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call()


@pytest.mark.parametrize(("order", "quantus_order"), [("cascading", "top_down"), ("independent", "independent")])
def test_mprt_matches_quantus(order: str, quantus_order: str) -> None:
    model = primed_residual_cnn()
    inputs, target = residual_batch(size=12)
    explainer = Saliency()
    attributions = explainer(model, inputs, target)
    ours, steps = model_randomisation(explainer, model, inputs, target, order=order, seed=4, batch_size=2)  # type: ignore[arg-type]
    metric = quantus.MPRT(layer_order=quantus_order, seed=3, abs=True, normalise=False, disable_warnings=True)
    scores = _quiet(
        lambda: metric(
            model=model,
            x_batch=inputs.numpy(),
            y_batch=target.numpy(),
            a_batch=attributions.numpy(),
            explain_func=_numpy_explainer(explainer),
            device="cpu",
        )
    )
    scores.pop("original")
    assert list(scores) == steps
    expected = np.array([scores[name] for name in steps]).T
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-8)
    assert float(ours[:, -1].mean()) < 0.9, "randomising every layer should change Saliency"


def test_mprt_ssim_matches_quantus_with_skimage_ssim() -> None:
    model = primed_residual_cnn()
    inputs, target = residual_batch(size=16)
    explainer = Saliency()
    attributions = explainer(model, inputs, target)
    ours, steps = model_randomisation(explainer, model, inputs, target, similarity="ssim", seed=1)
    metric = quantus.MPRT(
        similarity_func=skimage_ssim((1, 16, 16)), seed=0, abs=True, normalise=False, disable_warnings=True
    )
    scores = _quiet(
        lambda: metric(
            model=model,
            x_batch=inputs.numpy(),
            y_batch=target.numpy(),
            a_batch=attributions.numpy(),
            explain_func=_numpy_explainer(explainer),
            device="cpu",
        )
    )
    expected = np.array([scores[name] for name in steps]).T
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-6)


def test_random_logit_matches_quantus_on_its_seeded_classes() -> None:
    model = primed_residual_cnn()
    inputs, target = residual_batch(size=16)
    explainer = Saliency()
    attributions = explainer(model, inputs, target)
    np.random.seed(42)  # Quantus draws np.random.randint(0, num_classes - 1, B) after np.random.seed(seed)
    draws = torch.as_tensor(np.random.randint(0, 3, inputs.shape[0]))
    off_target = draws + (draws >= target).long()
    for similarity, reference in (("spearman", quantus.similarity_func.correlation_spearman), ("ssim", None)):
        ours = random_logit(explainer, model, inputs, target, similarity=similarity, off_target=off_target)  # type: ignore[arg-type]
        metric = quantus.RandomLogit(
            num_classes=4,
            seed=42,
            similarity_func=reference or skimage_ssim((1, 16, 16)),
            normalise=False,
            abs=False,
            disable_warnings=True,
        )
        expected = _quiet(
            lambda metric=metric: metric(
                model=model,
                x_batch=inputs.numpy(),
                y_batch=target.numpy(),
                a_batch=attributions.numpy(),
                explain_func=_numpy_explainer(explainer),
                device="cpu",
            )
        )
        np.testing.assert_allclose(ours.double().numpy(), np.asarray(expected, dtype=np.float64), atol=1e-6)


def test_ssim_matches_skimage_including_small_maps() -> None:
    generator = torch.Generator().manual_seed(0)
    for size in (16, 7):
        a = torch.rand(2, 1, size, size, generator=generator)
        b = a + 0.5 * torch.rand(2, 1, size, size, generator=generator)
        ours = map_similarity(a, b, "ssim")
        sigma = 1.5 if size >= 11 else (3 + 0.4) / 3.5
        for i in range(2):
            pair = torch.cat([a[i], b[i]])
            expected = structural_similarity(
                a[i, 0].double().numpy(),
                b[i, 0].double().numpy(),
                gaussian_weights=True,
                sigma=sigma,
                use_sample_covariance=False,
                data_range=float(pair.max() - pair.min()),
            )
            assert abs(float(ours[i]) - expected) < 1e-8, size


def test_an_explainer_that_ignores_the_model_fails_mprt() -> None:
    model = primed_residual_cnn()
    inputs, target = residual_batch(size=12)
    for similarity in ("spearman", "ssim"):
        for order in ("cascading", "independent"):
            scores, steps = model_randomisation(
                EdgeDetector(), model, inputs, target, order=order, similarity=similarity
            )  # type: ignore[arg-type]
            assert scores.shape == (3, len(steps)) and torch.equal(scores, torch.ones_like(scores)), (similarity, order)

    def constant(model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        return torch.ones(inputs.shape[0], 1, *inputs.shape[2:])

    scores, _ = model_randomisation(constant, model, inputs, target)
    assert torch.equal(scores, torch.ones_like(scores))  # identical constant maps: 1, not scipy's NaN


def test_saliency_of_a_linear_model_depends_on_the_weights() -> None:
    """Saliency of a linear model is |W[target]|: randomising the one layer replaces it by |W'[target]|."""
    model = LinearModel(shape=(1, 6, 6), num_classes=3)
    inputs, target = torch.rand(2, 1, 6, 6), torch.tensor([0, 2])
    scores, steps = model_randomisation(Saliency(), model, inputs, target, seed=5)
    assert steps == ["linear"]
    torch.manual_seed(5)
    fresh = nn.Linear(36, 3)  # the same re-initialisation: reset_parameters after manual_seed(5)
    expected = map_similarity(
        model.linear.weight[target].detach().abs().view(2, 1, 6, 6),
        fresh.weight[target].detach().abs().view(2, 1, 6, 6),
    )
    assert torch.allclose(scores[:, 0], expected, atol=1e-10)


def test_the_trained_model_and_the_global_rng_are_untouched() -> None:
    model = primed_residual_cnn().train()
    inputs, target = residual_batch(size=12)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    flags = [module.training for module in model.modules()]
    rng = torch.get_rng_state()
    model_randomisation(Saliency(), model, inputs, target, order="independent")
    model_randomisation(Saliency(), model, inputs, target)
    random_logit(Saliency(), model, inputs, target)
    assert torch.equal(torch.get_rng_state(), rng)
    assert [module.training for module in model.modules()] == flags
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(parameter.grad is None for parameter in model.parameters())


def test_resnet18_steps_follow_quantus_and_blocks_can_be_named() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    wrapped = quantus.helpers.model.pytorch_model.PyTorchModel(model, channel_first=True, device="cpu")
    quantus_names = [name for name, _ in wrapped.get_random_layer_generator(order="top_down", seed=0)]
    assert [name for name, _ in randomisation_steps(model)][::-1] == quantus_names
    blocks = ["layer2", "fc", "conv1", "layer4"]
    inputs = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    scores, steps = model_randomisation(Saliency(), model, inputs, torch.tensor([1, 3]), layers=blocks)
    assert steps == ["fc", "layer4", "layer2", "conv1"]  # cascading: from the output down
    assert scores.shape == (2, 4) and bool((scores <= 1).all())


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda m, x, t: model_randomisation(Saliency(), m, x, t, layers=["stem.9"]), ValueError, "stem.9"),
        (lambda m, x, t: model_randomisation(Saliency(), m, x, t, layers=["relu"]), ValueError, "relu"),
        (lambda m, x, t: model_randomisation(Saliency(), m, x, t, similarity="pearson"), ValueError, "similarity"),
        (lambda m, x, t: model_randomisation(Saliency(), m, x, t, order="bottom_up"), ValueError, "order"),
        (lambda m, x, t: model_randomisation(Saliency(), nn.Flatten(), x, t), ValueError, "no layer with parameters"),
        (lambda m, x, t: random_logit(Saliency(), m, x, lambda out: out[:, 0]), TypeError, "target"),
        (lambda m, x, t: random_logit(Saliency(), m, x, t, similarity="l2"), ValueError, "similarity"),
    ],
)
def test_bad_input_gets_a_clear_error(call: Callable, error: type, match: str) -> None:
    model = primed_residual_cnn()
    inputs, target = residual_batch(size=12)
    with pytest.raises(error, match=match):
        call(model, inputs, target)


def test_random_logit_needs_two_classes() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 1))
    with pytest.raises(ValueError, match="num_classes >= 2"):
        random_logit(Saliency(), model, torch.rand(2, 1, 4, 4), torch.tensor([0, 0]))


def test_binary_head_and_forward_wrapper() -> None:
    """A single-logit head is explained as class 0; a ForwardWrapper's steps are named inside the wrapped module."""
    from lightning_xai.callbacks._batches import ForwardWrapper

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 36, 1)).eval()
    inputs, target = torch.rand(3, 1, 6, 6), torch.zeros(3, dtype=torch.long)
    scores, steps = model_randomisation(Saliency(), model, inputs, target, similarity="ssim")
    assert steps == ["3", "0"] and scores.shape == (3, 2) and bool((scores < 1).all())
    wrapped = ForwardWrapper(model, lambda module, x: module(x))
    wrapped_scores, wrapped_steps = model_randomisation(Saliency(), wrapped, inputs, target, similarity="ssim")
    assert wrapped_steps == steps and torch.allclose(wrapped_scores, scores)
