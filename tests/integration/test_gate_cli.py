"""FaithfulnessGate is configured entirely from a LightningCLI YAML file."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_xai import FaithfulnessGate

pytest.importorskip("jsonargparse")
from lightning.pytorch.cli import LightningCLI

from tests.helpers.scripted import KEY, ScriptedMetricModule

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
    return LightningCLI(ScriptedMetricModule, run=False, args=["--config", str(config)])


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
