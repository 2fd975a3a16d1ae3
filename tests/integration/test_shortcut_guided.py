"""examples/shortcut_digits.py --guided: Right for the Right Reasons on the watermark; the gate passes the run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from examples import shortcut_digits
from examples.digits import DigitsDataModule, load_digits_tensors
from examples.shortcut_digits import held_out_digits, shortcut_test_sets, stamp_watermark, watermark_region


def test_shortcut_test_sets_move_the_watermark() -> None:
    images, labels = load_digits_tensors(16)
    sets = shortcut_test_sets(images[:200], labels[:200], watermarked_class=3)
    region = watermark_region().bool()
    corner = {name: (x[:, 0][:, region] == images.max()).all(dim=1) for name, (x, _) in sets.items()}
    marked = labels[:200] == 3
    assert torch.equal(corner["watermarked"], marked) and torch.equal(corner["swapped"], ~marked)
    assert not corner["clean"].any()
    outside = ~region
    for x, _ in sets.values():  # only the corner differs
        assert torch.equal(x[:, 0][:, outside], images[:200, 0][:, outside])
    assert torch.equal(stamp_watermark(images[:4], torch.zeros(4, dtype=torch.bool), 1.0), images[:4])
    held_images, held_labels = held_out_digits(DigitsDataModule(transform=shortcut_digits.Watermark()))
    assert held_images.shape == (360, 1, 16, 16) and held_labels.shape == (360,)
    assert not (held_images[:, 0][:, region] == images.max()).all(dim=1).any()  # no watermark: the clean split


@pytest.mark.slow
def test_guided_example_passes_the_gate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(sys, "argv", ["shortcut_digits.py", "--guided", "--epochs", "3", "--logdir", str(tmp_path)])
    assert shortcut_digits.main() == 0
    out = capsys.readouterr().out
    assert "The gate passed." in out
    accuracies = eval(out.split("clean / swapped): ")[1].splitlines()[0])
    assert accuracies["swapped"] > 0.65 and accuracies["clean"] - accuracies["swapped"] < 0.12, accuracies
