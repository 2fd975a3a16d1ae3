from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from lightning_xai.metrics.drift import ExplanationDrift


def _epochs(count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    maps = [torch.rand(6, 1, 4, 4, generator=generator)]
    for _ in range(count - 1):
        maps.append(maps[-1] + 0.4 * torch.rand(6, 1, 4, 4, generator=generator))
    return maps


def _scipy_mean(current: torch.Tensor, previous: torch.Tensor) -> float:
    return float(
        np.mean([spearmanr(p.flatten(), c.flatten()).statistic for p, c in zip(previous, current, strict=True)])
    )


def test_first_epoch_gives_none_then_the_correlation_with_the_previous_epoch() -> None:
    epochs = _epochs(3)
    drift = ExplanationDrift()
    assert not drift.has_previous
    assert drift.update(epochs[0]) is None and drift.correlation is None
    assert drift.has_previous
    for previous, current in itertools.pairwise(epochs):
        value = drift.update(current)
        assert value is not None and value.item() == pytest.approx(_scipy_mean(current, previous), abs=1e-10)
        assert drift.per_sample is not None and drift.per_sample.shape == (6,)


def test_survives_a_checkpoint() -> None:
    epochs = _epochs(3)
    drift = ExplanationDrift()
    drift.update(epochs[0])
    drift.update(epochs[1])
    buffer = io.BytesIO()
    torch.save({"drift": drift.state_dict()}, buffer)
    buffer.seek(0)
    resumed = ExplanationDrift()
    resumed.load_state_dict(torch.load(buffer)["drift"])
    value = resumed.update(epochs[2])
    assert value is not None and value.item() == pytest.approx(_scipy_mean(epochs[2], epochs[1]), abs=1e-10)
    fresh = ExplanationDrift()
    fresh.load_state_dict(ExplanationDrift().state_dict())
    assert fresh.update(epochs[0]) is None
    fresh.load_state_dict({})  # missing key: nothing stored
    assert not fresh.has_previous


def test_compares_and_keeps_the_maps_on_their_device(device: torch.device) -> None:
    """No copy to the host: the value and the kept maps stay on the maps' device; the checkpoint holds CPU maps."""
    epochs = [maps.to(device) for maps in _epochs(3)]
    drift = ExplanationDrift()
    drift.update(epochs[0])
    assert drift.previous is not None and drift.previous.device.type == device.type
    value = drift.update(epochs[1])
    assert value is not None and value.device.type == device.type
    assert value.item() == pytest.approx(_scipy_mean(epochs[1].cpu(), epochs[0].cpu()), abs=1e-10)
    state = drift.state_dict()
    assert state["previous"].device.type == "cpu"
    resumed = ExplanationDrift()
    resumed.load_state_dict(state)
    again = resumed.update(epochs[2])
    assert again is not None and again.device.type == device.type
    assert again.item() == pytest.approx(_scipy_mean(epochs[2].cpu(), epochs[1].cpu()), abs=1e-10)


def test_global_maps_and_constant_maps() -> None:
    drift = ExplanationDrift()
    global_map = torch.rand(1, 8, 8)
    drift.update(global_map)
    assert drift.update(global_map * 2 + 1).item() == pytest.approx(1.0)
    probe = ExplanationDrift()
    maps = torch.rand(3, 1, 4, 4)
    maps[1] = 0  # an all-zero map has no ranking
    probe.update(maps)
    value = probe.update(maps + 0.01 * torch.rand(3, 1, 4, 4))
    assert probe.undefined == 1 and value is not None and not torch.isnan(value)
    with pytest.warns(UserWarning, match="all 3 maps .* constant"):
        assert probe.update(torch.zeros(3, 1, 4, 4)) is None
    assert probe.has_previous and probe.correlation is None


def test_errors_and_reset() -> None:
    drift = ExplanationDrift()
    drift.update(torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match="keep their shape"):
        drift.update(torch.rand(2, 1, 5, 5))
    with pytest.raises(ValueError, match="`maps` must be"):
        drift.update(torch.rand(5))
    with pytest.raises(TypeError, match="previous"):
        drift.load_state_dict({"previous": [1, 2]})
    drift.reset()
    assert not drift.has_previous
