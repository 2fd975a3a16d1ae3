"""batch_size="auto", the per-batch class-range check, shared end points and a cheaper explanation_mode.

References: a fixed chunk and batch-of-one forwards (every metric's values must not depend on the chunk), counted
forwards (how many images reach the model), and flags read back after the context.
"""

import pytest
import torch
from torch import Tensor, nn

import lightning_xai.functional._common as common
from lightning_xai import _scoring
from lightning_xai._model_state import explanation_mode
from lightning_xai._scoring import check_batch_size, clear_tuning, score_in_chunks, tuned_chunk, tuning_key
from lightning_xai.functional.deletion_insertion import deletion_curve, insertion_curve
from lightning_xai.functional.mif_lif import mif_lif_curves
from lightning_xai.functional.sensitivity import max_sensitivity
from lightning_xai.metrics import (
    ROAD,
    DeletionAUC,
    Infidelity,
    InsertionAUC,
    MaxSensitivity,
    MIFLIFFidelity,
    MuFidelity,
)
from tests.helpers.models import ResidualCNN


class Counting(nn.Module):
    """Wraps a model and counts the calls and the images it is given."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = 0
        self.images = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        self.images += x.shape[0]
        return self.model(x)


@pytest.fixture
def case() -> tuple[nn.Module, Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    model = ResidualCNN(in_channels=3, num_classes=4).eval()
    inputs = torch.randn(3, 3, 10, 10, generator=generator)
    maps = torch.rand(3, 1, 10, 10, generator=generator)
    return model, inputs, maps, torch.tensor([0, 3, 1])


def test_auto_scores_every_item_once_and_remembers_its_choice() -> None:
    clear_tuning()
    model = nn.Linear(4, 2)
    data = torch.randn(500, 4)
    sizes: list[int] = []

    def forward(chunk: Tensor, start: int, stop: int) -> Tensor:
        sizes.append(stop - start)
        return model(chunk)

    with torch.no_grad():
        expected = model(data)
    result = score_in_chunks(forward, lambda a, b: data[a:b], 500, "auto", model=model, like=data)
    torch.testing.assert_close(result, expected, atol=1e-6, rtol=0)
    assert sum(sizes) == 500
    key = tuning_key(model, data)
    chosen = tuned_chunk(key)
    assert chosen in _scoring.CANDIDATES["cpu"]
    sizes.clear()
    score_in_chunks(forward, lambda a, b: data[a:b], 100, "auto", model=model, like=data)
    assert set(sizes[:-1]) <= {chosen} and sum(sizes) == 100  # no probing the second time
    assert tuned_chunk(tuning_key(model, torch.zeros(1, 5))) is None  # another shape is another key
    sizes.clear()
    score_in_chunks(forward, lambda a, b: data[a:b], 100, 7, model=model)  # an explicit int wins
    assert sizes == [7] * 14 + [2]


def test_auto_counts_images_per_item() -> None:
    clear_tuning()
    data = torch.randn(40, 6, 2, 2)
    chunks: list[int] = []

    def forward(chunk: Tensor, start: int, stop: int) -> Tensor:
        chunks.append(chunk.shape[0])
        return chunk.view(-1, 6, 4).sum(dim=(1, 2))

    result = score_in_chunks(forward, lambda a, b: data[a:b].flatten(0, 1), 40, "auto", images_per_item=6, like=data[0])
    torch.testing.assert_close(result, data.sum(dim=(1, 2, 3)))
    assert max(chunks) <= max(_scoring.CANDIDATES["cpu"]) and chunks[0] == 6  # 4 images round up to one item


@pytest.mark.parametrize(
    ("whole_call_cost", "build_cost", "expected"), [(1.2, {}, 16), (0.5, {}, 56), (2.5, {16: 1.0}, 32)]
)
def test_auto_settles_on_calls_smaller_than_the_largest_candidate_and_times_what_each_chunk_costs(
    monkeypatch: pytest.MonkeyPatch, whole_call_cost: float, build_cost: dict[int, float], expected: int
) -> None:
    """ROAD's case: 56 images per call never fill a chunk of 64, and its first chunk's `prepare` imputes them all.

    A fake clock advances by a known cost per image for each chunk size, in the forward and in the building of the
    chunk (`make_inputs`, timed: a larger chunk builds into more memory), and by a large cost in `prepare` at the
    start of a call (not timed): the probe must settle within a few calls on the cheapest chunk, with 64 standing
    for the whole call (56).
    """
    clear_tuning()
    now = [0.0]
    monkeypatch.setattr(_scoring._Probe, "clock", lambda self: now[0])
    per_image = {4: 3.0, 8: 2.0, 16: 1.0, 32: 1.5, 56: whole_call_cost}
    data = torch.randn(56, 3)
    model = nn.Linear(3, 2)
    sizes: list[int] = []

    def prepare(start: int, stop: int) -> None:
        if start == 0:
            now[0] += 1000.0  # the whole call's imputation, solved when the first chunk is asked for

    def make_inputs(start: int, stop: int) -> Tensor:
        now[0] += build_cost.get(stop - start, 0.0) * (stop - start)
        return data[start:stop]

    def forward(chunk: Tensor, start: int, stop: int) -> Tensor:
        sizes.append(chunk.shape[0])
        now[0] += per_image.get(chunk.shape[0], 10.0) * chunk.shape[0]
        return model(chunk)

    key = tuning_key(model, data)
    with torch.no_grad():
        expected_scores = model(data)
    calls = 0
    while calls < 12 and tuned_chunk(key) is None:
        calls += 1
        scores = score_in_chunks(forward, make_inputs, 56, "auto", model=model, like=data, prepare=prepare)
        torch.testing.assert_close(scores, expected_scores)
    assert tuned_chunk(key) == expected and calls <= 10
    sizes.clear()
    score_in_chunks(forward, make_inputs, 56, "auto", model=model, like=data, prepare=prepare)
    assert sizes == {16: [16] * 3 + [8], 56: [56], 32: [32, 24]}[expected]


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), (2.5, TypeError), ("fast", TypeError), (True, TypeError)]
)
def test_bad_batch_size_is_refused(value: object, error: type) -> None:
    with pytest.raises(error, match="batch_size"):
        check_batch_size(value)
    with pytest.raises(error, match="batch_size"):
        DeletionAUC(batch_size=value)  # type: ignore[arg-type]


def _metrics(model: nn.Module, batch_size: object) -> list:
    def explainer(model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
        return inputs.abs().sum(1, keepdim=True) * (1 + target.view(-1, 1, 1, 1))

    return [
        DeletionAUC(steps=6, batch_size=batch_size),
        InsertionAUC(steps=6, batch_size=batch_size),
        MIFLIFFidelity(steps=6, batch_size=batch_size),
        ROAD(percentages=(0.2, 0.6), batch_size=batch_size),
        Infidelity(n_samples=5, batch_size=batch_size),
        MuFidelity(n_samples=5, batch_size=batch_size),
        MaxSensitivity(explainer, n_samples=3, batch_size=batch_size),
    ]


def test_every_metric_gives_the_same_values_with_any_chunk(case: tuple) -> None:
    model, inputs, maps, target = case
    explainer_maps = inputs.abs().sum(1, keepdim=True) * (1 + target.view(-1, 1, 1, 1))
    values = {}
    for batch_size in (1, 5, 64, "auto", "auto"):  # the second "auto" runs with the remembered chunk
        row: list = []
        for metric in _metrics(model, batch_size):
            given = explainer_maps if isinstance(metric, MaxSensitivity) else maps
            metric.update(model, inputs, given, target)
            row.append((type(metric).__name__, metric.per_sample()))
        values[len(values)] = row
    for row in values.values():
        for ours, expected in zip(row, values[0], strict=True):
            assert ours[0] == expected[0]
            # A correlation of 5 scores amplifies the 1e-7 rounding of a batched forward (any two fixed chunks
            # differ as much); every other metric is pinned to 1e-6.
            atol = 1e-5 if ours[0] == "MuFidelity" else 1e-6
            torch.testing.assert_close(ours[1], expected[1], atol=atol, rtol=0, msg=lambda m, n=ours[0]: f"{n}: {m}")


def test_constant_baseline_end_point_is_forwarded_once(case: tuple) -> None:
    model, inputs, maps, target = case
    counting = Counting(model)
    steps = 5
    curves = deletion_curve(counting, inputs, maps, target, steps=steps, baseline=0.0, batch_size=4)
    assert counting.images == 3 * steps + 1  # B * steps perturbed images and one all-baseline image
    with torch.no_grad():
        zeros = torch.softmax(model(torch.zeros_like(inputs)), 1)[torch.arange(3), target]
        clean = torch.softmax(model(inputs), 1)[torch.arange(3), target]
    torch.testing.assert_close(curves[:, -1], zeros, atol=1e-6, rtol=0)
    torch.testing.assert_close(curves[:, 0], clean, atol=1e-6, rtol=0)
    counting.images = 0
    insertion_curve(counting, inputs, maps, target, steps=steps, baseline=0.0, batch_size=4)
    assert counting.images == 3 * steps + 1
    counting.images = 0
    insertion_curve(counting, inputs, maps, target, steps=steps, baseline="blur", batch_size=4)
    assert counting.images == 3 * (steps + 1)  # a per-sample baseline: every point forwarded


def test_mif_and_lif_share_their_end_points(case: tuple) -> None:
    model, inputs, maps, target = case
    counting = Counting(model)
    steps = 4
    mif, lif = mif_lif_curves(counting, inputs, maps, target, steps=steps, batch_size=3)
    assert counting.images == (3 * steps + 1) + 3 * (steps - 1)  # was 2 * 3 * (steps + 1)
    assert torch.equal(mif[:, 0], lif[:, 0]) and torch.equal(mif[:, -1], lif[:, -1])


def test_class_range_is_checked_once_per_batch(case: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    model, inputs, maps, target = case
    calls = []
    original = common.check_class_range
    monkeypatch.setattr(common, "check_class_range", lambda *args: calls.append(1) or original(*args))
    deletion_curve(model, inputs, maps, target, steps=8, baseline="blur", batch_size=2)  # 14 chunks
    assert len(calls) == 1
    with pytest.raises(ValueError, match="class index 4"):
        deletion_curve(model, inputs, maps, torch.tensor([0, 4, 1]), steps=8, baseline="blur", batch_size=2)


def test_max_sensitivity_uses_the_given_maps(case: tuple) -> None:
    model, inputs, _, target = case
    counting = Counting(model)
    explained = []

    def explainer(model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
        explained.append(x.shape[0])
        return model(x).softmax(1)[:, :1, None, None].expand(-1, 1, 10, 10).detach()

    reference = explainer(model, inputs, target)
    explained.clear()
    metric = MaxSensitivity(explainer, n_samples=2, batch_size=64)
    metric.update(counting, inputs, reference, target)
    assert explained == [6]  # only the perturbed inputs are explained
    expected = max_sensitivity(explainer, model, inputs, target, n_samples=2)  # recomputes phi(x)
    torch.testing.assert_close(metric.per_sample(), expected.float(), atol=1e-6, rtol=0)


def test_explanation_mode_restores_flags_flipped_inside_and_is_cheap_when_nested() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Dropout())
    model.train()
    model[1].eval()
    model[0].bias.requires_grad_(False)
    with explanation_mode(model, grad=False):
        assert not any(module.training for module in model.modules())
        assert not any(parameter.requires_grad for parameter in model.parameters())
        with explanation_mode(model, grad=True):
            assert torch.is_grad_enabled()
            model.train()  # the explained code misbehaves
            model[0].bias.requires_grad_(True)
        assert not torch.is_grad_enabled()
    assert [m.training for m in model.modules()] == [True, True, False, True]
    assert [p.requires_grad for p in model.parameters()] == [True, False, True, True]
