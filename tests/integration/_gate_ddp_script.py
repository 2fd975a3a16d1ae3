"""Two-process CPU DDP run of a FaithfulnessGate; run as a script by ``test_gate_ddp.py``.

Usage: ``python _gate_ddp_script.py {synced,one_rank} OUT_DIR``. Lightning's launcher re-executes this script for
rank 1. Each rank writes ``OUT_DIR/rank<r>.txt`` with the exception it saw (``on_exception``) or ``finished``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_xai import FaithfulnessGate

KEY = "xai/GradCAM/deletion_auc"


class RankScriptedModule(LightningModule):
    """Logs ``values[rank][epoch]`` at each validation epoch end, synchronised across ranks or not."""

    def __init__(self, values: list[list[float]], sync_dist: bool) -> None:
        super().__init__()
        self.values, self.sync_dist = values, sync_dist
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        return nn.functional.mse_loss(self.layer(inputs), targets)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        return None

    def on_validation_epoch_end(self) -> None:
        value = self.values[self.global_rank][self.current_epoch]
        self.log(KEY, value, sync_dist=self.sync_dist)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def _loader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(8, 2, generator=generator), torch.randn(8, 1, generator=generator))
        return DataLoader(data, batch_size=2)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()


class RecordOutcome(Callback):
    """Writes what happened on this rank to ``OUT_DIR/rank<r>.txt``."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def _write(self, trainer: Trainer, text: str) -> None:
        (self.out_dir / f"rank{trainer.global_rank}.txt").write_text(text)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._write(trainer, f"{type(exception).__name__}: {exception}")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, "finished")


def main(variant: str, out_dir: Path) -> None:
    torch.set_num_threads(1)
    if variant == "synced":  # every rank logs the same series, synchronised: the mean falls below 0.7 at epoch 2
        values, sync_dist = [[0.9, 0.8, 0.5, 0.9], [0.9, 0.8, 0.5, 0.9]], True
    elif variant == "one_rank":  # rank 0 always passes; only rank 1's local value falls below 0.7, at epoch 1
        values, sync_dist = [[0.9, 0.9, 0.9, 0.9], [0.9, 0.5, 0.9, 0.9]], False
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=len(values[0]),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[FaithfulnessGate(KEY, threshold=0.7), RecordOutcome(out_dir)],
    )
    trainer.fit(RankScriptedModule(values, sync_dist))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
