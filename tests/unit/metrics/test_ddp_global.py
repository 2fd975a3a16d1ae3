"""Two gloo processes, each with an uneven share of the data, give the single-process results."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from lightning_xai.metrics.global_attribution import GlobalAttribution
from lightning_xai.metrics.peppr import PEPPR
from lightning_xai.metrics.relevance_mass import RelevanceMass
from tests.helpers.ddp import run_distributed
from tests.helpers.models import LinearModel, region_mask

pytestmark = pytest.mark.ddp

SPLITS = ((0, 7), (7, 11))  # rank 0 gets 7 samples, rank 1 gets 4


def _data() -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1, 0, 1, 0, 0, 1, 2, 2, 1, 0])  # label 2 only on rank 1, label 3 nowhere
    return {
        "inputs": torch.randn(11, 1, 8, 8, generator=generator),
        "attributions": torch.randn(11, 2, 8, 8, generator=generator),
        "labels": labels,
        "multi_labels": (torch.rand(11, 4, generator=generator) > 0.5).long(),
        "global_map": torch.rand(4, 1, 8, 8, generator=generator),
        "masks": torch.rand(11, 8, 8, generator=generator) > 0.5,
    }


def _results(data: dict[str, Tensor], start: int, stop: int) -> dict[str, Any]:
    part = {key: value[start:stop] if key != "global_map" else value for key, value in data.items()}
    model = LinearModel(shape=(1, 8, 8), num_classes=4, seed=0)
    single = GlobalAttribution(num_labels=4)
    multi = GlobalAttribution(num_labels=4, normalize="max")
    peppr = PEPPR(part["global_map"], steps=4, batch_size=9)
    mass = RelevanceMass(region_mask(8, 8, 2, 2, 4))
    mass_with_masks = RelevanceMass()
    for offset in range(0, stop - start, 3):  # several updates per rank
        batch = {key: value[offset : offset + 3] if key != "global_map" else value for key, value in part.items()}
        single.update(batch["attributions"], batch["labels"])
        multi.update(batch["attributions"], batch["multi_labels"])
        peppr.update(model, batch["inputs"], batch["labels"])
        mass.update(batch["attributions"])
        mass_with_masks.update(batch["attributions"], masks=batch["masks"])
    return {
        "single": single.compute(),
        "multi": multi.compute(),
        "peppr": peppr.compute(),
        "mass": mass.summary(),
        "mass_per_sample": mass.per_sample(),
        "mass_with_masks": mass_with_masks.summary(),
    }


def _worker(rank: int, world_size: int) -> dict[str, Any]:
    start, stop = SPLITS[rank]
    return _results(_data(), start, stop)


@pytest.fixture(scope="module")
def outcomes() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return _results(_data(), 0, 11), run_distributed(_worker, world_size=2)


def _assert_same(expected: dict[str, Tensor], actual: dict[str, Tensor]) -> None:
    assert set(expected) == set(actual)
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, atol=1e-6, rtol=1e-5, msg=lambda text, key=key: f"{key}: {text}")


def test_global_attribution_is_the_single_process_result(outcomes: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    expected, ranks = outcomes
    for result in ranks:
        _assert_same(expected["single"], result["single"])
        _assert_same(expected["multi"], result["multi"])
    assert expected["single"]["count"].tolist() == [5, 4, 2, 0]


def test_peppr_is_the_single_process_result(outcomes: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    expected, ranks = outcomes
    for result in ranks:
        _assert_same(expected["peppr"], result["peppr"])


def test_relevance_mass_is_the_single_process_result(outcomes: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    expected, ranks = outcomes
    for result in ranks:
        _assert_same(expected["mass"], result["mass"])
        _assert_same(expected["mass_with_masks"], result["mass_with_masks"])
        assert result["mass_per_sample"].shape == (11,)
