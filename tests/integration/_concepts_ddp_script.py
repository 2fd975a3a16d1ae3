"""Two-process CPU DDP fit with LRP and a ConceptAnalysis; run as a script by ``test_concepts_ddp.py``.

Usage: ``python _concepts_ddp_script.py OUT_DIR``. Each rank saves its xai/ ``callback_metrics``, the analysis's
last per-label concept vectors and counts, and its final weights to ``OUT_DIR/rank<r>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from examples.digits import DigitsClassifier, DigitsDataModule
from lightning_xai import LRP, ExplanationMonitor
from lightning_xai.callbacks.analyses import ConceptAnalysis


def main(out_dir: Path) -> None:
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    analysis = ConceptAnalysis(layer="features.4", num_labels=10, top_k=3, num_channels=16)
    monitor = ExplanationMonitor({"LRP": LRP()}, probe_size=4, max_samples=24, analyses=[analysis])
    trainer = L.Trainer(
        max_epochs=3,
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
    state = monitor.analysis("LRP", "concepts").state_dict()
    torch.save(
        {
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("xai/")},
            "previous": state["previous"],
            "count": state["previous_count"],
            "weights": model.state_dict(),
        },
        out_dir / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
