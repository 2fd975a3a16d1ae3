"""The robustness and randomisation metrics keep the FaithfulnessMetric contract; two gloo shards give one process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lightning_xai import ExplanationMonitor
from lightning_xai.explainers import Saliency
from lightning_xai.functional.randomisation import model_randomisation, random_logit
from lightning_xai.functional.robustness import average_sensitivity
from lightning_xai.metrics import (
    AvgSensitivity,
    FaithfulnessMetric,
    LocalLipschitzEstimate,
    ModelRandomisation,
    RandomLogit,
    RelativeInputStability,
    RelativeOutputStability,
    RelativeRepresentationStability,
)
from tests.helpers.ddp import run_distributed
from tests.helpers.models import primed_residual_cnn

#: Small settings, built fresh (name -> factory taking the explainer to re-run).
METRICS: dict[str, Callable[[Any], FaithfulnessMetric]] = {
    "avg_sensitivity": lambda explainer: AvgSensitivity(explainer, n_samples=3),
    "local_lipschitz": lambda explainer: LocalLipschitzEstimate(explainer, n_samples=3),
    "ris": lambda explainer: RelativeInputStability(explainer, n_samples=3),
    "ros": lambda explainer: RelativeOutputStability(explainer, n_samples=3),
    "rrs": lambda explainer: RelativeRepresentationStability(explainer, layers=["block.0"], n_samples=3),
    "mprt": lambda explainer: ModelRandomisation(explainer, layers=["fc", "head_conv", "block", "stem"]),
    "mprt_independent_ssim": lambda explainer: ModelRandomisation(explainer, order="independent", similarity="ssim"),
    "random_logit": lambda explainer: RandomLogit(explainer, similarity="spearman"),
}

#: Uneven shards: rank 0 sees batches 0, 2 and 3 (5 samples), rank 1 batch 1 (3 samples).
BATCHES = [(0, 2), (2, 5), (5, 6), (6, 8)]
OWNER = [0, 1, 0, 0]


def _batch(count: int = 8) -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)  # the same weights in every process
    model = primed_residual_cnn()
    inputs = torch.randn(count, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        target = model(inputs).argmax(1)
    return model, inputs, target


@pytest.mark.parametrize("name", list(METRICS))
def test_metric_is_its_functional_core_and_accumulates(name: str) -> None:
    model, inputs, target = _batch(6)
    explainer = Saliency()
    maps = explainer(model, inputs, target)
    whole, halves, chunked = METRICS[name](explainer), METRICS[name](explainer), METRICS[name](explainer)
    chunked.batch_size = 2
    whole.update(model, inputs, maps, target)
    chunked.update(model, inputs, maps, target)
    halves.update(model, inputs[:2], maps[:2], target[:2])
    halves.update(model, inputs[2:], maps[2:], target[2:])
    assert whole.higher_is_better is False
    assert torch.allclose(whole.per_sample(), chunked.per_sample(), atol=1e-5, equal_nan=True)
    summary = whole.summary()
    assert {whole.name, f"{whole.name}_stderr"} <= set(summary)
    if name != "random_logit":  # RandomLogit draws the other class by position in the batch: splits move samples
        assert torch.allclose(whole.compute(), halves.compute(), atol=1e-6)
        for key, value in summary.items():
            assert torch.allclose(value, halves.summary()[key], atol=1e-6), key
    whole.reset()
    with pytest.raises(RuntimeError, match="before any update"), pytest.warns(UserWarning, match="before the"):
        whole.compute()


def test_metrics_equal_the_functional_cores() -> None:
    model, inputs, target = _batch(4)
    explainer = Saliency()
    maps = explainer(model, inputs, target)
    metric = AvgSensitivity(explainer, n_samples=3, seed=2)
    metric.update(model, inputs, maps, target)
    expected = average_sensitivity(explainer, model, inputs, target, n_samples=3, seed=2)
    assert torch.equal(metric.per_sample(), expected)
    mprt = ModelRandomisation(explainer, seed=1)
    mprt.update(model, inputs, maps, target)
    similarities, steps = model_randomisation(explainer, model, inputs, target, seed=1)
    assert mprt.steps == steps
    assert torch.allclose(mprt.per_sample(), similarities.mean(1).float())
    x, y = mprt.curves()["spearman (cascading)"]
    assert torch.allclose(y, similarities.mean(0).float()) and x[-1] == 1.0 and x.shape == (len(steps),)
    assert torch.allclose(mprt.summary()["mprt_spearman_last"], similarities[:, -1].mean().float())
    logit = RandomLogit(explainer, seed=3)
    logit.update(model, inputs, maps, target)
    assert torch.equal(logit.per_sample(), random_logit(explainer, model, inputs, target, seed=3))


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_stabilities_leave_undefined_samples_out_of_the_mean() -> None:
    metric = RelativeInputStability(Saliency())
    metric.scores.append(torch.tensor([1.0, float("nan"), 3.0]))
    assert metric.compute().item() == 2.0
    assert torch.allclose(metric.standard_error(), torch.tensor([1.0, 3.0]).std() / 2**0.5)


def test_the_monitor_binds_explainer_less_copies() -> None:
    explainer = Saliency()
    for template in (AvgSensitivity(), ModelRandomisation(), RandomLogit(), RelativeRepresentationStability()):
        bound = ExplanationMonitor._metric_for(template, explainer)
        assert bound.explainer is explainer and template.explainer is None
    with pytest.raises(ValueError, match="explainer"):
        ModelRandomisation().update(*_update_arguments())


def _update_arguments() -> tuple[nn.Module, Tensor, Tensor, Tensor]:
    model, inputs, target = _batch(2)
    return model, inputs, torch.zeros(2, 1, 12, 12), target


@pytest.mark.parametrize(
    ("factory", "error", "match"),
    [
        (lambda: AvgSensitivity(n_samples=0), ValueError, "n_samples"),
        (lambda: LocalLipschitzEstimate(noise="cauchy"), ValueError, "noise"),
        (lambda: RelativeInputStability(keep_prediction="yes"), TypeError, "keep_prediction"),
        (lambda: RelativeRepresentationStability(layers=[]), TypeError, "layers"),
        (lambda: ModelRandomisation(similarity="pearson"), ValueError, "similarity"),
        (lambda: ModelRandomisation(order="bottom_up"), ValueError, "order"),
        (lambda: ModelRandomisation(layers="fc"), TypeError, "layers"),
        (lambda: RandomLogit(similarity="mse"), ValueError, "similarity"),
        (lambda: RandomLogit(explainer=3), TypeError, "explainer"),
    ],
)
def test_bad_arguments_are_named(factory: Callable, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        factory()


def test_unknown_layer_and_parameterless_model_are_named_at_update() -> None:
    model, inputs, maps, target = _update_arguments()
    with pytest.raises(ValueError, match="nope"):
        ModelRandomisation(Saliency(), layers=["nope"]).update(model, inputs, maps, target)

    class Parameterless(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x.mean(dim=(2, 3))

    with pytest.raises(ValueError, match="no layer with parameters"):
        ModelRandomisation(Saliency()).update(Parameterless(), inputs, maps, target)


def test_two_shards_merged_match_one_metric() -> None:
    """The torchmetrics-level two-shard check (the gloo test below runs the real thing, marked slow)."""
    model, inputs, target = _batch(8)
    explainer = Saliency()
    maps = explainer(model, inputs, target)
    for name, factory in METRICS.items():
        single, shards = factory(explainer), [factory(explainer), factory(explainer)]
        for (start, stop), owner in zip(BATCHES, OWNER, strict=True):
            single.update(model, inputs[start:stop], maps[start:stop], target[start:stop])
            shards[owner].update(model, inputs[start:stop], maps[start:stop], target[start:stop])
        shards[0].merge_state(shards[1])
        assert torch.allclose(shards[0].compute(), single.compute(), atol=1e-6), name
        for label, (_, y) in single.curves().items():
            assert torch.allclose(shards[0].curves()[label][1], y, atol=1e-6), (name, label)


def _evaluate(rank: int, world_size: int) -> dict[str, dict[str, Any]]:
    model, inputs, target = _batch(8)
    explainer = Saliency()
    maps = explainer(model, inputs, target)
    results = {}
    for name, factory in METRICS.items():
        metric = factory(explainer)
        for (start, stop), owner in zip(BATCHES, OWNER, strict=True):
            if world_size == 1 or owner == rank:
                metric.update(model, inputs[start:stop], maps[start:stop], target[start:stop])
        results[name] = {"summary": metric.summary(), "curves": metric.curves(), "compute": metric.compute()}
    return results


@pytest.mark.ddp
@pytest.mark.slow
def test_two_gloo_processes_match_one() -> None:
    single = _evaluate(0, 1)
    for rank_results in run_distributed(_evaluate):
        for name, expected in single.items():
            got = rank_results[name]
            assert torch.allclose(got["compute"], expected["compute"], atol=1e-6), name
            for key, value in expected["summary"].items():
                assert torch.allclose(got["summary"][key], value, atol=1e-6), (name, key)
            for label, (x, y) in expected["curves"].items():
                assert torch.equal(got["curves"][label][0], x), (name, label)
                assert torch.allclose(got["curves"][label][1], y, atol=1e-6), (name, label)


@pytest.mark.parametrize("name", list(METRICS))
def test_known_answers_on_the_device(name: str, device: torch.device) -> None:
    """Built on the inputs' device: a constant map scores 0 for robustness and fails the sanity checks with 1."""
    model, inputs, target = _batch(3)
    model, inputs, target = model.to(device), inputs.to(device), target.to(device)

    def constant(model: nn.Module, inputs: Tensor, target: Any) -> Tensor:
        return torch.ones(inputs.shape[0], 1, *inputs.shape[2:], device=inputs.device)

    metric = METRICS[name](constant).to(device)
    metric.update(model, inputs, constant(model, inputs, target), target)
    expected = 1.0 if name.startswith(("mprt", "random_logit")) else 0.0
    assert metric.per_sample().device.type == device.type
    assert torch.equal(metric.per_sample(), torch.full((3,), expected, device=device)), name
    saliency = METRICS[name](Saliency()).to(device)
    saliency.update(model, inputs, Saliency()(model, inputs, target), target)
    assert bool(torch.isfinite(saliency.compute())), name


@pytest.mark.parametrize("name", list(METRICS))
def test_the_default_auto_chunk_gives_the_values_of_the_old_default_64(name: str) -> None:
    model, inputs, target = _batch(6)
    explainer = Saliency()
    maps = explainer(model, inputs, target)
    auto, sixty_four = METRICS[name](explainer), METRICS[name](explainer)
    assert auto.batch_size == "auto"
    sixty_four.batch_size = 64
    auto.update(model, inputs, maps, target)
    sixty_four.update(model, inputs, maps, target)
    torch.testing.assert_close(auto.per_sample(), sixty_four.per_sample(), atol=1e-6, rtol=0, equal_nan=True)
