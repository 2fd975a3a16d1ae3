"""The functional metrics without a spatio-temporal meaning refuse clips ``(B, C, T, H, W)``, naming themselves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lightning_xai import functional as XF

CLIPS = torch.rand(2, 1, 3, 4, 4)
MAPS = torch.rand(2, 1, 3, 4, 4)
TARGET = torch.tensor([0, 1])
MODEL = nn.Sequential(nn.Flatten(), nn.Linear(48, 2))


def _explainer(model: nn.Module, inputs: Tensor, target: Any) -> Tensor:
    return inputs.abs()


CASES: dict[str, Callable[[], Any]] = {
    "road_curves": lambda: XF.road_curves(MODEL, CLIPS, MAPS, TARGET),
    "mif_lif_curves": lambda: XF.mif_lif_curves(MODEL, CLIPS, MAPS, TARGET),
    "infidelity": lambda: XF.infidelity(MODEL, CLIPS, MAPS, TARGET),
    "mufidelity": lambda: XF.mufidelity(MODEL, CLIPS, MAPS, TARGET),
    "model_randomisation": lambda: XF.model_randomisation(_explainer, MODEL, CLIPS, TARGET),
    "random_logit": lambda: XF.random_logit(_explainer, MODEL, CLIPS, TARGET),
    "max_sensitivity": lambda: XF.max_sensitivity(_explainer, MODEL, CLIPS, TARGET),
    "this robustness metric": lambda: XF.average_sensitivity(_explainer, MODEL, CLIPS, TARGET),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_clip_is_refused_by_name(name: str) -> None:
    expected = rf"clip batch \(B, C, T, H, W\) of shape \(2, 1, 3, 4, 4\), but {name} has no"
    with pytest.raises(ValueError, match=expected):
        CASES[name]()


def test_the_voxel_metrics_accept_the_same_clip() -> None:
    assert XF.deletion_auc(MODEL, CLIPS, MAPS, TARGET, steps=3).shape == (2,)
