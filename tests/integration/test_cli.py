"""The callbacks can be configured from a LightningCLI YAML file."""

from __future__ import annotations

from pathlib import Path

import pytest

from examples.digits import DigitsClassifier, DigitsDataModule
from lightning_xai import ExplanationMonitor

pytest.importorskip("jsonargparse")
from lightning.pytorch.cli import LightningCLI

CONFIG = """
trainer:
  max_epochs: 1
  accelerator: cpu
  limit_train_batches: 2
  limit_val_batches: 1
  enable_progress_bar: false
  enable_checkpointing: false
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args:
      save_dir: {save_dir}
  callbacks:
    - class_path: lightning_xai.ExplanationMonitor
      init_args:
        explainer:
          GradCAM:
            class_path: lightning_xai.explainers.GradCAM
            init_args:
              layer: features.4
          IG:
            class_path: lightning_xai.explainers.IntegratedGradients
            init_args:
              n_steps: 4
        probe_size: 4
        every_n_epochs: 1
        target: label
        on_error: warn
model:
  width: 8
data:
  image_size: 8
"""


def test_monitor_from_yaml(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(save_dir=tmp_path))
    cli = LightningCLI(DigitsClassifier, DigitsDataModule, run=False, args=["--config", str(config)])
    monitors = [c for c in cli.trainer.callbacks if isinstance(c, ExplanationMonitor)]
    assert len(monitors) == 1
    monitor = monitors[0]
    assert sorted(monitor.explainers) == ["GradCAM", "IG"]
    assert monitor.explainers["IG"].n_steps == 4
    assert monitor.target == "label" and monitor.on_error == "warn" and monitor.probe_size == 4
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert monitor._probe_inputs is not None


REGIONS_CONFIG = """
trainer:
  max_epochs: 1
  accelerator: cpu
  limit_train_batches: 2
  limit_val_batches: 1
  enable_progress_bar: false
  enable_checkpointing: false
  logger: false
  default_root_dir: {root}/run
  callbacks:
    - class_path: lightning_xai.ExplanationMonitor
      init_args:
        explainer:
          class_path: lightning_xai.explainers.Saliency
        probe_size: 4
        regions:
          corner: {corner}
          stripe: {stripe}
          ring: {ring}
          diagonal: [[1, 0, 0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0, 0],
                     [0, 0, 0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1, 0, 0],
                     [0, 0, 0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0, 0, 1]]
model:
  width: 4
data:
  image_size: 8
"""


def test_regions_from_yaml_as_npy_png_pt_paths_and_a_nested_list(tmp_path: Path) -> None:
    import numpy as np
    import torch
    from PIL import Image

    corner = np.zeros((8, 8), dtype=np.float32)
    corner[-3:, -3:] = 1
    np.save(tmp_path / "corner.npy", corner)
    stripe = np.zeros((8, 8), dtype=np.uint8)
    stripe[:, 2] = 255
    Image.fromarray(stripe).save(tmp_path / "stripe.png")
    ring = torch.ones(8, 8, dtype=torch.bool)
    ring[1:-1, 1:-1] = False
    torch.save(ring, tmp_path / "ring.pt")
    config = tmp_path / "config.yaml"
    config.write_text(
        REGIONS_CONFIG.format(
            root=tmp_path, corner=tmp_path / "corner.npy", stripe=tmp_path / "stripe.png", ring=tmp_path / "ring.pt"
        )
    )
    cli = LightningCLI(DigitsClassifier, DigitsDataModule, run=False, args=["--config", str(config)])
    (monitor,) = [c for c in cli.trainer.callbacks if isinstance(c, ExplanationMonitor)]
    assert sorted(monitor.regions) == ["corner", "diagonal", "ring", "stripe"]
    assert torch.equal(monitor.regions["corner"], torch.from_numpy(corner))
    assert torch.equal(monitor.regions["stripe"], torch.from_numpy(stripe // 255).float())
    assert torch.equal(monitor.regions["ring"], ring.float())
    assert torch.equal(monitor.regions["diagonal"], torch.eye(8))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    for name in monitor.regions:
        assert f"xai/Saliency/relevance_mass_{name}" in cli.trainer.callback_metrics
