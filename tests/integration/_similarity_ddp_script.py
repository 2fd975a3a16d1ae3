"""Two-process CPU DDP fit with a SimilarityMonitor; run as a script by ``test_similarity_monitor.py``.

Usage: ``python _similarity_ddp_script.py OUT_DIR``. Each rank saves its xai/ metrics, its probe's pairs and its
final weights to ``OUT_DIR/rank<r>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from examples.digits import DigitsDataModule
from examples.ssl_digits import SimCLRDigits, augment
from lightning_xai import SimilarityMonitor
from lightning_xai.explainers import ConditionalOcclusion, InteractionCAM
from tests.helpers.ddp import ddp_trainer, save_rank_result, seed_single_threaded, xai_metrics


def main(out_dir: Path) -> None:
    seed_single_threaded()
    monitor = SimilarityMonitor(
        augment=augment,
        explainers=[ConditionalOcclusion(window=2, stride=2, baseline=-1.0), InteractionCAM()],
        steps=4,
        num_pairs=5,
    )
    trainer = ddp_trainer(out_dir, max_epochs=2, callbacks=[monitor], limit_train_batches=2, limit_val_batches=1)
    model = SimCLRDigits(width=8, dim=16)
    trainer.fit(model, datamodule=DigitsDataModule(image_size=8, batch_size=16))
    save_rank_result(
        trainer, out_dir, {"metrics": xai_metrics(trainer), "pairs": monitor._pairs, "weights": model.state_dict()}
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
