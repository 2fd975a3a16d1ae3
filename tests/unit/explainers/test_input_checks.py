"""(B, H, W) and uint8 batches get a clear error before the model is called (issue 15), for explainers and metrics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_xai.explainers import RISE, GradCAM, Saliency
from lightning_xai.metrics import DeletionAUC


class Recorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(self.conv(x).mean(dim=(2, 3)))


@pytest.mark.parametrize(
    ("inputs", "error", "message"),
    [
        (
            torch.rand(2, 8, 8),
            ValueError,
            # the clip-capable ones (supports_video) name the clip shape too
            r"`inputs` must have shape \(B, C, H, W\)( or \(B, C, T, H, W\))? \(4( or 5)? dimensions\), got shape "
            r"\(2, 8, 8\)",
        ),
        (
            torch.randint(0, 255, (2, 1, 8, 8), dtype=torch.uint8),
            TypeError,
            "floating-point tensor, got dtype torch.uint8",
        ),
    ],
)
@pytest.mark.parametrize("call", ["Saliency", "GradCAM", "RISE", "DeletionAUC"])
def test_bad_batches_are_refused_before_the_model_runs(inputs, error, message, call) -> None:
    model, target = Recorder(), torch.tensor([0, 1])
    with pytest.raises(error, match=message):
        if call == "DeletionAUC":
            DeletionAUC().update(model, inputs, torch.rand(2, 1, 8, 8), target)
        else:
            {"Saliency": Saliency(), "GradCAM": GradCAM(), "RISE": RISE(n_masks=4, grid_size=2)}[call](
                model, inputs, target
            )
    assert model.calls == 0
