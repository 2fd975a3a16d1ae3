"""FaithfulnessGate is configured entirely from a LightningCLI YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_xai import FaithfulnessGate

pytest.importorskip("jsonargparse")
from lightning.pytorch.cli import LightningCLI

KEY = "xai/GradCAM/deletion_auc"


class ScriptedModule(LightningModule):
    """Logs ``values[epoch]`` and ``stderrs[epoch]`` under ``xai/GradCAM/deletion_auc[_stderr]``."""

    def __init__(self, values: list[float], stderrs: list[float]) -> None:
        super().__init__()
        self.values, self.stderrs = values, stderrs
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        return nn.functional.mse_loss(self.layer(inputs), targets)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        return None

    def on_validation_epoch_end(self) -> None:
        self.log(KEY, self.values[self.current_epoch])
        self.log(f"{KEY}_stderr", self.stderrs[self.current_epoch])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(4, 2, generator=generator), torch.randn(4, 1)), batch_size=2)

    def val_dataloader(self) -> DataLoader:
        return self.train_dataloader()


CONFIG = """
model:
  values: [0.30, 0.32, 0.50, 0.52, 0.30]
  stderrs: [0.01, 0.01, 0.01, 0.01, 0.01]
trainer:
  default_root_dir: {root}
  max_epochs: 5
  accelerator: cpu
  devices: 1
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  limit_train_batches: 1
  limit_val_batches: 1
  log_every_n_steps: 1
  callbacks:
    - class_path: lightning_xai.FaithfulnessGate
      init_args:
        monitor: xai/GradCAM/deletion_auc
        mode: {mode}
        threshold: 0.45
        max_regression: 0.5
        relative: true
        baseline: first
        patience: 1
        min_epochs: 1
        confidence: 0.9
        action: stop
        check_finite: false
        strict: false
"""


def _cli(tmp_path: Path, mode: str) -> LightningCLI:
    config = tmp_path / "gate.yaml"
    config.write_text(CONFIG.format(mode=mode, root=tmp_path))
    return LightningCLI(ScriptedModule, run=False, args=["--config", str(config)])


def test_gate_from_yaml(tmp_path: Path) -> None:
    cli = _cli(tmp_path, "min")
    gates = [callback for callback in cli.trainer.callbacks if isinstance(callback, FaithfulnessGate)]
    assert len(gates) == 1
    gate = gates[0]
    configured = {
        "monitor": KEY,
        "mode": "min",
        "threshold": 0.45,
        "max_regression": 0.5,
        "relative": True,
        "baseline": "first",
        "patience": 1,
        "min_epochs": 1,
        "confidence": 0.9,
        "action": "stop",
        "check_finite": False,
        "strict": False,
    }
    assert {name: getattr(gate, name) for name in configured} == configured
    # deletion AUC (lower is better) rises above the 0.45 ceiling at epochs 2 and 3: patience 1 stops at epoch 3
    with pytest.warns(RuntimeWarning, match="stopping the trainer"):
        cli.trainer.fit(cli.model)
    assert gate.stopped_epoch == 3 and cli.trainer.current_epoch == 4
    assert [entry["failing"] for entry in gate.history] == [False, False, True, True]


def test_invalid_choice_in_yaml_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        _cli(tmp_path, "lower")
