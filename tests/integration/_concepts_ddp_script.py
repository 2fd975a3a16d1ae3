"""Two-process CPU DDP fit with LRP and a ConceptAnalysis; run as a script by ``test_concepts_ddp.py``.

Usage: ``python _concepts_ddp_script.py OUT_DIR``. Each rank saves its xai/ ``callback_metrics``, the analysis's
last per-label concept vectors and counts, and its final weights to ``OUT_DIR/rank<r>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from examples.digits import DigitsClassifier, DigitsDataModule
from lightning_xai import LRP, ExplanationMonitor
from lightning_xai.callbacks.analyses import ConceptAnalysis
from tests.helpers.ddp import ddp_trainer, save_rank_result, seed_single_threaded, xai_metrics


def main(out_dir: Path) -> None:
    seed_single_threaded()
    analysis = ConceptAnalysis(layer="features.4", num_labels=10, top_k=3, num_channels=16)
    monitor = ExplanationMonitor({"LRP": LRP()}, probe_size=4, max_samples=24, analyses=[analysis])
    trainer = ddp_trainer(out_dir, max_epochs=3, callbacks=[monitor], limit_train_batches=3, limit_val_batches=2)
    model = DigitsClassifier(width=8)
    trainer.fit(model, datamodule=DigitsDataModule(image_size=8, batch_size=16))
    state = monitor.analysis("LRP", "concepts").state_dict()
    save_rank_result(
        trainer,
        out_dir,
        {
            "metrics": xai_metrics(trainer),
            "previous": state["previous"],
            "count": state["previous_count"],
            "weights": model.state_dict(),
        },
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
