"""Two-process CPU DDP fit with an ExplanationMonitor; run as a script by ``test_monitor_ddp.py``.

Usage: ``python _monitor_ddp_script.py OUT_DIR``. Lightning's launcher re-executes this script for rank 1. Each
rank saves its ``trainer.callback_metrics`` (the xai/ keys), its global maps and its final weights to
``OUT_DIR/rank<r>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from examples.digits import DigitsClassifier, DigitsDataModule
from lightning_xai import ExplanationMonitor
from lightning_xai.explainers import GradCAM, Saliency
from lightning_xai.metrics import DeletionAUC, MIFLIFFidelity


def main(out_dir: Path) -> None:
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    region = torch.zeros(8, 8)
    region[:4, :4] = 1
    monitor = ExplanationMonitor(
        {"GradCAM": GradCAM(), "Saliency": Saliency()},
        metrics=[DeletionAUC(steps=8), MIFLIFFidelity(steps=8)],
        probe_size=4,
        max_samples=24,
        num_labels=10,
        regions={"corner": region},
        peppr_steps=4,
    )
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        logger=False,
        default_root_dir=str(out_dir),
        callbacks=[monitor],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_train_batches=3,
        limit_val_batches=2,
    )
    model = DigitsClassifier(width=8)
    trainer.fit(model, datamodule=DigitsDataModule(image_size=8, batch_size=16))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("xai/")}
    torch.save(
        {"metrics": metrics, "global": monitor.global_maps, "weights": model.state_dict()},
        out_dir / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
