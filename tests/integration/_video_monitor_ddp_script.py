"""Two-process CPU DDP fit of the clip classifier with an ExplanationMonitor; run by ``test_video_monitor.py``.

Usage: ``python _video_monitor_ddp_script.py OUT_DIR``. Lightning's launcher re-executes this script for rank 1. Each
rank saves its ``xai/`` callback metrics, how many clips the DeletionAUC of GradCAM gathered, and its final weights
to ``OUT_DIR/rank<r>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from examples.video_clips import ClipClassifier, ClipsDataModule
from lightning_xai import ExplanationMonitor
from lightning_xai.explainers import GradCAM, Saliency
from lightning_xai.metrics import DeletionAUC
from tests.helpers.ddp import ddp_trainer, save_rank_result, seed_single_threaded, xai_metrics


def main(out_dir: Path) -> None:
    seed_single_threaded()
    monitor = ExplanationMonitor(
        {"GradCAM": GradCAM(), "Saliency": Saliency()}, metrics=[DeletionAUC(steps=6)], probe_size=4, max_samples=16
    )
    trainer = ddp_trainer(out_dir, max_epochs=2, callbacks=[monitor], limit_train_batches=2, limit_val_batches=2)
    model = ClipClassifier(width=4)
    trainer.fit(model, datamodule=ClipsDataModule(batch_size=16, train_size=64, val_size=64))
    metric = monitor.metrics["GradCAM"][0]
    with metric.sync_context():
        count = int(metric.per_sample().numel())
    save_rank_result(trainer, out_dir, {"metrics": xai_metrics(trainer), "count": count, "weights": model.state_dict()})


if __name__ == "__main__":
    main(Path(sys.argv[1]))
