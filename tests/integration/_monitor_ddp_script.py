"""Two-process CPU DDP fit with an ExplanationMonitor; run as a script by ``test_monitor_ddp.py``.

Usage: ``python _monitor_ddp_script.py OUT_DIR``. Lightning's launcher re-executes this script for rank 1. Each
rank saves its ``trainer.callback_metrics`` (the xai/ keys), its global maps and its final weights to
``OUT_DIR/rank<r>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from examples.digits import DigitsClassifier, DigitsDataModule
from lightning_xai import ExplanationMonitor
from lightning_xai.explainers import GradCAM, Saliency
from lightning_xai.metrics import DeletionAUC, MIFLIFFidelity
from tests.helpers.ddp import ddp_trainer, save_rank_result, seed_single_threaded, xai_metrics


def main(out_dir: Path) -> None:
    seed_single_threaded()
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
    trainer = ddp_trainer(out_dir, max_epochs=2, callbacks=[monitor], limit_train_batches=3, limit_val_batches=2)
    model = DigitsClassifier(width=8)
    trainer.fit(model, datamodule=DigitsDataModule(image_size=8, batch_size=16))
    save_rank_result(
        trainer,
        out_dir,
        {"metrics": xai_metrics(trainer), "global": monitor.global_maps, "weights": model.state_dict()},
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
