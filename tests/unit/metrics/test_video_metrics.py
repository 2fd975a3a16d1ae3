"""DeletionAUC and InsertionAUC on clips: the functional values, voxel axes, DDP sharding; the rest refuse clips."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lightning_xai.explainers import Saliency
from lightning_xai.functional import deletion_auc, insertion_auc
from lightning_xai.metrics import (
    ROAD,
    DeletionAUC,
    Infidelity,
    InsertionAUC,
    MaxSensitivity,
    MIFLIFFidelity,
    MuFidelity,
)
from tests.helpers.ddp import run_distributed
from tests.helpers.models import TinyClipNet


def _batch(count: int = 6) -> tuple[TinyClipNet, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = TinyClipNet().eval()
    inputs = torch.rand(count, 3, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    target = torch.arange(count) % 3
    return model, inputs, Saliency()(model, inputs, target), target


def test_clip_metrics_average_the_functional_aucs_and_label_voxels() -> None:
    model, inputs, maps, target = _batch()
    deletion, insertion = DeletionAUC(steps=6, batch_size=7), InsertionAUC(steps=6)
    for start in (0, 4):  # two updates
        deletion.update(model, inputs[start : start + 4], maps[start : start + 4], target[start : start + 4])
        insertion.update(model, inputs[start : start + 4], maps[start : start + 4], target[start : start + 4])
    expected = torch.cat(
        [
            deletion_auc(model, inputs[:4], maps[:4], target[:4], steps=6),
            deletion_auc(model, inputs[4:], maps[4:], target[4:], steps=6),
        ]
    )
    torch.testing.assert_close(deletion.compute(), expected.mean())
    torch.testing.assert_close(
        insertion.per_sample(),
        torch.cat(
            [insertion_auc(model, inputs[s : s + 4], maps[s : s + 4], target[s : s + 4], steps=6) for s in (0, 4)]
        ),
    )
    assert deletion.curve_axes()[0] == "fraction of voxels deleted"
    assert insertion.curve_axes()[0] == "fraction of voxels inserted"
    assert deletion.curves()["deletion"][1].shape == (7,)


@pytest.mark.parametrize(
    "metric",
    [MIFLIFFidelity(steps=4), ROAD(), Infidelity(), MuFidelity(), MaxSensitivity(explainer=Saliency())],
    ids=lambda metric: type(metric).__name__,
)
def test_metrics_without_a_video_meaning_refuse_clips_by_name(metric) -> None:
    model, inputs, maps, target = _batch(2)
    name = type(metric).__name__
    with pytest.raises(ValueError, match=rf"clip batch \(B, C, T, H, W\).*but {name} has no spatio-temporal meaning"):
        metric.update(model, inputs, maps, target)


def _sharded(rank: int, world_size: int) -> dict[str, Any]:
    model, inputs, maps, target = _batch(7)
    metric = DeletionAUC(steps=5)
    shards = [(0, 3), (3, 4), (4, 7)]  # uneven: rank 0 gets 4 clips, rank 1 three
    for index, (start, stop) in enumerate(shards):
        if world_size == 1 or index % 2 == rank:
            metric.update(model, inputs[start:stop], maps[start:stop], target[start:stop])
    return {"summary": metric.summary(), "curves": metric.curves(), "bands": metric.curve_bands()}


@pytest.mark.ddp
def test_clip_deletion_auc_sharded_over_two_processes_matches_one_process() -> None:
    single = _sharded(0, 1)
    for result in run_distributed(_sharded):
        for key, value in single["summary"].items():
            torch.testing.assert_close(result["summary"][key], value, atol=1e-6, rtol=0)
        torch.testing.assert_close(result["curves"]["deletion"][1], single["curves"]["deletion"][1], atol=1e-6, rtol=0)
        for ours, reference in zip(result["bands"]["deletion"], single["bands"]["deletion"], strict=True):
            torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
