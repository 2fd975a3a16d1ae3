"""Two-process CPU DDP fit with robustness and randomisation metrics; run as a script by ``test_sanity_checks.py``.

Usage: ``python _sanity_ddp_script.py OUT_DIR``. Each rank saves its ``xai/`` callback metrics and its weights to
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
from lightning_xai.explainers import Saliency
from lightning_xai.metrics import AvgSensitivity, ModelRandomisation, RandomLogit, RelativeOutputStability


def main(out_dir: Path) -> None:
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    monitor = ExplanationMonitor(
        Saliency(),
        metrics=[
            ModelRandomisation(),
            AvgSensitivity(n_samples=2),
            RandomLogit(similarity="spearman"),
            RelativeOutputStability(n_samples=2),
        ],
        probe_size=4,
        max_samples=12,
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
    trainer.fit(model, datamodule=DigitsDataModule(image_size=8, batch_size=8))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("xai/")}
    torch.save({"metrics": metrics, "weights": model.state_dict()}, out_dir / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
