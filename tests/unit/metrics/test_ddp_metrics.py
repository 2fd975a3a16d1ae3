"""Sharded updates in two gloo processes give the same compute(), summary(), curves() and bands as one process."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.helpers.ddp import run_distributed
from tests.unit.metrics.test_fidelity_contract import METRICS, GradientTimesInput, region_batch

#: Uneven shards: rank 0 sees 3 batches (5 samples), rank 1 one batch (3 samples).
BATCHES = [(0, 2), (2, 5), (5, 6), (6, 8)]
OWNER = [0, 1, 0, 0]


def _evaluate(rank: int, world_size: int) -> dict[str, dict[str, Any]]:
    model, inputs, target = region_batch(count=8, seed=0)
    explainer = GradientTimesInput()
    maps = explainer(model, inputs, target)
    results = {}
    for name, factory in METRICS.items():
        metric = factory(explainer)
        for (start, stop), owner in zip(BATCHES, OWNER, strict=True):
            if world_size == 1 or owner == rank:
                metric.update(model, inputs[start:stop], maps[start:stop], target[start:stop])
        results[name] = {
            "compute": metric.compute(),
            "summary": metric.summary(),
            "curves": metric.curves(),
            "interval": metric.confidence_interval(),
            "bands": metric.curve_bands(),  # from the per-sample curves, a "cat" state
        }
    return results


@pytest.mark.ddp
def test_sharded_updates_match_one_process() -> None:
    single = _evaluate(0, 1)
    for rank_results in run_distributed(_evaluate):
        for name, expected in single.items():
            got = rank_results[name]
            assert torch.allclose(got["compute"], expected["compute"], atol=1e-6), name
            assert set(got["summary"]) == set(expected["summary"]), name
            for key, value in expected["summary"].items():
                assert torch.allclose(got["summary"][key].float(), value.float(), atol=1e-6), (name, key)
            for label, (x, y) in expected["curves"].items():
                assert torch.allclose(got["curves"][label][0], x), (name, label)
                assert torch.allclose(got["curves"][label][1], y, atol=1e-6), (name, label)
            for ours, reference in zip(got["interval"], expected["interval"], strict=True):
                assert torch.allclose(ours, reference, atol=1e-6), name
            assert set(got["bands"]) == set(expected["bands"]), name
            for label, (low, high) in expected["bands"].items():
                assert torch.allclose(got["bands"][label][0], low, atol=1e-5), (name, label)
                assert torch.allclose(got["bands"][label][1], high, atol=1e-5), (name, label)
