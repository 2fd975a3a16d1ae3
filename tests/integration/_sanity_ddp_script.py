"""Two-process CPU DDP fit with robustness and randomisation metrics; run as a script by ``test_sanity_checks.py``.

Usage: ``python _sanity_ddp_script.py OUT_DIR``. Each rank saves its ``xai/`` callback metrics and its weights to
``OUT_DIR/rank<r>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from examples.digits import DigitsClassifier, DigitsDataModule
from lightning_xai import ExplanationMonitor
from lightning_xai.explainers import Saliency
from lightning_xai.metrics import AvgSensitivity, ModelRandomisation, RandomLogit, RelativeOutputStability
from tests.helpers.ddp import ddp_trainer, save_rank_result, seed_single_threaded, xai_metrics


def main(out_dir: Path) -> None:
    seed_single_threaded()
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
    trainer = ddp_trainer(out_dir, max_epochs=2, callbacks=[monitor], limit_train_batches=3, limit_val_batches=2)
    model = DigitsClassifier(width=8)
    trainer.fit(model, datamodule=DigitsDataModule(image_size=8, batch_size=8))
    save_rank_result(trainer, out_dir, {"metrics": xai_metrics(trainer), "weights": model.state_dict()})


if __name__ == "__main__":
    main(Path(sys.argv[1]))
