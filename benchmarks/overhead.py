"""What the default ExplanationMonitor adds to a training run: the digits fit with and without it, in one run.

Runs alternate (without, with, without, with, ...) so drift of the machine hits both; the median of each is
compared, in process CPU time with one torch thread (wall time on a shared machine measures the other jobs).
Goal: the default configuration adds at most 10 %. ``benchmarks/run.py`` reports the same ratio per paired round.

    python benchmarks/overhead.py --repeats 3 --epochs 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples.digits import DigitsClassifier, DigitsDataModule
from lightning_xai import ExplanationMonitor
from lightning_xai.explainers import GradCAM


def fit_seconds(with_monitor: bool, epochs: int, logdir: str, monitor_factory=None) -> float:
    L.seed_everything(0, verbose=False)
    callbacks = [monitor_factory() if monitor_factory else ExplanationMonitor(GradCAM())] if with_monitor else []
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=TensorBoardLogger(logdir, name="overhead"),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    model, data = DigitsClassifier(), DigitsDataModule()
    start = time.process_time()
    trainer.fit(model, datamodule=data)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--full", action="store_true", help="also time the README demo's monitor (3 explainers, 3 metrics)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    configs = {"default ExplanationMonitor(GradCAM())": None}
    if args.full:
        from examples.digits import default_monitor

        configs["demo monitor (3 explainers, 3 metrics)"] = default_monitor
    with tempfile.TemporaryDirectory() as logdir:
        fit_seconds(False, 1, logdir)  # warm-up: imports, data loading, allocator
        for label, factory in configs.items():
            base, monitored = [], []
            for _ in range(args.repeats):
                base.append(fit_seconds(False, args.epochs, logdir))
                monitored.append(fit_seconds(True, args.epochs, logdir, factory))
            b, m = statistics.median(base), statistics.median(monitored)
            print(
                f"{label}: without {b:.2f} s, with {m:.2f} s (median of {args.repeats}, {args.epochs} epochs); "
                f"ratio {m / b:.3f} (goal <= 1.10)"
            )


if __name__ == "__main__":
    main()
