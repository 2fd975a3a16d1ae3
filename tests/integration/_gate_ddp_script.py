"""Two-process CPU DDP run of a FaithfulnessGate; run as a script by ``test_gate_ddp.py``.

Usage: ``python _gate_ddp_script.py {synced,one_rank} OUT_DIR``. Lightning's launcher re-executes this script for
rank 1. Each rank writes ``OUT_DIR/rank<r>.txt`` with the exception it saw (``on_exception``) or ``finished``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from lightning_xai import FaithfulnessGate
from tests.helpers.scripted import KEY, ScriptedMetricModule


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
    trainer.fit(ScriptedMetricModule(values, sync_dist=sync_dist))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
