"""The contract every faithfulness metric keeps: separation on a model whose truth we built, stability, errors."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from lightning_xai._typing import TargetType
from lightning_xai.explainers.base import Explainer
from lightning_xai.metrics import (
    ROAD,
    DeletionAUC,
    FaithfulnessMetric,
    Infidelity,
    InsertionAUC,
    MaxSensitivity,
    MIFLIFFidelity,
    MuFidelity,
)
from tests.helpers.models import RegionModel


class GradientTimesInput(Explainer):
    """A tiny local explainer: x * d(target logit)/dx summed over channels."""

    def attribute(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        inputs = inputs.requires_grad_(True)
        outputs = model(inputs)
        scores = outputs.gather(1, target.view(-1, 1)).sum() if isinstance(target, Tensor) else target(outputs).sum()
        (gradient,) = torch.autograd.grad(scores, inputs)
        return (gradient * inputs).sum(1, keepdim=True).detach()


class RandomExplainer(Explainer):
    """A fresh uniform random map at every call (its own seeded generator)."""

    needs_grad = False

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def attribute(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        return torch.rand(inputs.shape[0], 1, *inputs.shape[2:], generator=self.generator)


#: Small settings of every metric, built fresh by each test (name -> factory taking the explainer to re-run).
METRICS: dict[str, Callable[[Explainer], FaithfulnessMetric]] = {
    "deletion": lambda explainer: DeletionAUC(steps=16),
    "insertion": lambda explainer: InsertionAUC(steps=16),
    "mif_lif": lambda explainer: MIFLIFFidelity(steps=16),
    "road": lambda explainer: ROAD(percentages=[0.1, 0.3, 0.5, 0.7, 0.9]),
    "mufidelity": lambda explainer: MuFidelity(grid_size=8, n_samples=32),
    "infidelity": lambda explainer: Infidelity(n_samples=16),
    "max_sensitivity": lambda explainer: MaxSensitivity(explainer, n_samples=4),
}


def region_batch(count: int = 8, seed: int = 0) -> tuple[RegionModel, Tensor, Tensor]:
    """RegionModel reads only a 4 x 4 square; its evidence there is positive, the background is zero-mean noise."""
    generator = torch.Generator().manual_seed(seed)
    model = RegionModel(num_classes=3, height=16, width=16, top=4, left=4, size=4)
    inputs = 0.5 * torch.randn(count, 1, 16, 16, generator=generator)
    inputs[..., 4:8, 4:8] = 0.5 + torch.rand(count, 1, 4, 4, generator=generator)
    with torch.no_grad():
        target = model(inputs).argmax(dim=1)
    return model, inputs, target


def score_of(metric_name: str, explainer: Explainer, **overrides: object) -> FaithfulnessMetric:
    model, inputs, target = region_batch()
    metric = METRICS[metric_name](explainer)
    for key, value in overrides.items():
        setattr(metric, key, value)
    metric.update(model, inputs, explainer(model, inputs, target), target)
    return metric


@pytest.mark.parametrize("metric_name", list(METRICS))
def test_gradient_times_input_beats_a_random_map(metric_name: str) -> None:
    good = score_of(metric_name, GradientTimesInput())
    random = score_of(metric_name, RandomExplainer())
    good_value, random_value = good.compute().item(), random.compute().item()
    assert good.higher_is_better is not None
    # "Clearly": the gap is at least 3 standard errors of the two means and at least 5 % of their scale.
    gap = good_value - random_value if good.higher_is_better else random_value - good_value
    noise = 3 * float(torch.hypot(good.standard_error(), random.standard_error()))
    scale = max(abs(good_value), abs(random_value))
    assert gap > max(noise, 0.05 * scale), (metric_name, good_value, random_value, noise)


@pytest.mark.parametrize("metric_name", list(METRICS))
def test_results_do_not_depend_on_the_chunk_size_and_are_deterministic(metric_name: str) -> None:
    model, inputs, target = region_batch(count=5, seed=1)
    explainer = GradientTimesInput()
    maps = explainer(model, inputs, target)
    values = []
    for batch_size in (3, 64, 64):
        metric = METRICS[metric_name](explainer)
        metric.batch_size = batch_size
        metric.update(model, inputs, maps, target)
        values.append(metric.per_sample())
    assert torch.allclose(values[0], values[1], atol=1e-5), metric_name
    assert torch.equal(values[1], values[2]), metric_name


@pytest.mark.parametrize("metric_name", ["road", "mufidelity", "infidelity", "max_sensitivity"])
def test_the_seed_drives_the_random_draws(metric_name: str) -> None:
    model, inputs, target = region_batch(count=4, seed=2)
    maps = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    results = []
    for seed in (0, 0, 1):
        metric = METRICS[metric_name](GradientTimesInput())
        metric.seed = seed
        metric.update(model, inputs, maps, target)
        results.append(metric.per_sample())
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], results[2])


@pytest.mark.parametrize("metric_name", list(METRICS))
def test_a_sample_score_does_not_depend_on_the_rest_of_the_batch(metric_name: str) -> None:
    model, inputs, target = region_batch(count=5, seed=6)
    explainer = GradientTimesInput()
    maps = explainer(model, inputs, target)
    whole, reordered = METRICS[metric_name](explainer), METRICS[metric_name](explainer)
    whole.update(model, inputs, maps, target)
    order = torch.tensor([3, 0, 4])
    reordered.update(model, inputs[order], maps[order], target[order])
    assert torch.allclose(reordered.per_sample(), whole.per_sample()[order], atol=1e-5)


@pytest.mark.parametrize("metric_name", list(METRICS))
def test_updates_accumulate_and_reset(metric_name: str) -> None:
    model, inputs, target = region_batch(count=6, seed=3)
    explainer = GradientTimesInput()
    maps = explainer(model, inputs, target)
    whole, halves = METRICS[metric_name](explainer), METRICS[metric_name](explainer)
    whole.update(model, inputs, maps, target)
    halves.update(model, inputs[:2], maps[:2], target[:2])
    halves.update(model, inputs[2:], maps[2:], target[2:])
    assert torch.allclose(whole.compute(), halves.compute(), atol=1e-6)
    for key, value in whole.summary().items():
        assert torch.allclose(value.float(), halves.summary()[key].float(), atol=1e-6), key
    assert set(whole.summary()) >= {whole.name, f"{whole.name}_stderr"}
    for label, (x, y) in whole.curves().items():
        assert x.shape == y.shape and float(x.min()) >= 0 and float(x.max()) <= 1, label
    halves.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns about compute() before update()
        with pytest.raises(RuntimeError, match="before any update"):
            halves.compute()


@pytest.mark.parametrize("metric_name", list(METRICS))
@pytest.mark.parametrize(
    ("case", "match"),
    [("shape", "attributions"), ("nan", "non-finite"), ("target", "class index 3"), ("target_shape", "target")],
)
def test_bad_input_gets_a_clear_error(metric_name: str, case: str, match: str) -> None:
    model, inputs, target = region_batch(count=3, seed=4)
    maps = torch.rand(3, 1, 16, 16)
    if case == "shape":
        maps = torch.rand(3, 1, 8, 8)
    elif case == "nan":
        maps[1, 0, 2, 2] = float("nan")
    elif case == "target":
        target = torch.tensor([0, 3, 1])
    else:
        target = torch.tensor([0, 1])
    metric = METRICS[metric_name](GradientTimesInput())
    with pytest.raises(ValueError, match=match):
        metric.update(model, inputs, maps, target)


@pytest.mark.parametrize("factory", [DeletionAUC, InsertionAUC, MIFLIFFidelity])
def test_steps_below_one_are_refused(factory: Callable[..., FaithfulnessMetric]) -> None:
    with pytest.raises(ValueError, match="`steps` must be an int >= 1, got 0"):
        factory(steps=0)


@pytest.mark.parametrize(
    ("factory", "arguments", "match"),
    [
        (DeletionAUC, {"baseline": "zeros"}, "baseline"),
        (InsertionAUC, {"score": "softplus"}, "score"),
        (ROAD, {"percentages": [0.5, 1.0]}, "percentages"),
        (MuFidelity, {"correlation": "kendall"}, "correlation"),
        (Infidelity, {"noise_scale": -1.0}, "noise_scale"),
        (MaxSensitivity, {"radius": 0.0}, "radius"),
        (DeletionAUC, {"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_settings_are_refused(factory: Callable[..., FaithfulnessMetric], arguments: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory(**arguments)


def test_max_sensitivity_without_an_explainer_says_so() -> None:
    model, inputs, target = region_batch(count=2)
    with pytest.raises(ValueError, match="needs an `explainer`"):
        MaxSensitivity().update(model, inputs, torch.rand(2, 1, 16, 16), target)


@pytest.mark.parametrize("metric_name", list(METRICS))
def test_update_works_under_inference_mode_and_leaves_the_model_as_found(metric_name: str) -> None:
    model, inputs, target = region_batch(count=3, seed=7)
    explainer = GradientTimesInput()
    maps = explainer(model, inputs, target)
    metric = METRICS[metric_name](explainer)
    model.train()
    with torch.inference_mode():  # as in trainer.validate() / trainer.test()
        frozen_inputs, frozen_maps, frozen_target = inputs.clone(), maps.clone(), target.clone()
        metric.update(model, frozen_inputs, frozen_maps, frozen_target)
    assert model.training
    assert all(parameter.requires_grad for parameter in model.parameters())
    assert torch.isfinite(metric.compute())
