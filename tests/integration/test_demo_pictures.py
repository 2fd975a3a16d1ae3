"""The README demo, run as a user runs it, writes the pictures the README shows (slow: a full digits epoch)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from examples import digits


@pytest.mark.slow
def test_demo_writes_labelled_pictures_and_an_aligned_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pictures = tmp_path / "pictures"
    argv = ["digits.py", "--epochs", "1", "--logdir", str(tmp_path), "--global-maps", "--save-pictures", str(pictures)]
    monkeypatch.setattr(sys, "argv", argv)
    digits.main()
    for explainer in ("GradCAM", "Saliency", "IntegratedGradients"):
        for name in ("heatmaps", "global_per_label", "global_std", "global_overall", "deletion_auc_curve"):
            image = np.asarray(Image.open(pictures / f"{explainer}_{name}.png").convert("RGB"))
            assert image.shape[0] >= 100 and image.std() > 10, (explainer, name)
    heatmaps = np.asarray(Image.open(pictures / "GradCAM_heatmaps.png"))
    per_label = np.asarray(Image.open(pictures / "GradCAM_global_per_label.png"))
    assert heatmaps.shape[1] > 800 and per_label.shape[0] > 2 * 96  # 4 pairs a row; 10 labels in two rows
    rows = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("  xai/") or line.startswith("  val/")
    ]
    assert rows
    columns = {len(line) - len(line.rstrip().split(" ")[-1]) for line in rows}
    assert len(columns) == 1, "the values of the final table do not start in one column"
