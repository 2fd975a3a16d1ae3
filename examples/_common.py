"""What the examples share: the classification steps, the command line, the training run and its report."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor


class ClassifierSteps(L.LightningModule):
    """Cross-entropy training, validation and test steps logging ``<stage>/loss`` and ``<stage>/acc``; Adam at
    ``self.hparams.lr``. Subclasses build the network and ``forward``."""

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        inputs, labels = batch
        logits = self(inputs)
        loss = F.cross_entropy(logits, labels)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val")
        self.log(f"{stage}/acc", (logits.argmax(1) == labels).float().mean(), prog_bar=stage == "val")
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def save_pictures(log_dir: str, directory: str) -> list[str]:
    """Write the last picture of every image tag in ``log_dir``'s TensorBoard events into ``directory``.

    Grids and curves are PNGs; video summaries (written where ``moviepy`` is importable) are GIFs.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(log_dir, size_guidance={"images": 1})
    events.Reload()
    os.makedirs(directory, exist_ok=True)
    written = []
    for tag in events.Tags()["images"]:
        encoded = events.Images(tag)[-1].encoded_image_string
        suffix = ".gif" if encoded[:3] == b"GIF" else ".png"
        path = os.path.join(directory, tag.removeprefix("xai/").replace("/", "_") + suffix)
        with open(path, "wb") as file:
            file.write(encoded)
        written.append(path)
    return sorted(written)


def example_parser(description: str | None, epochs: int) -> argparse.ArgumentParser:
    """The examples' command line: ``--epochs``, ``--logdir`` (default ``runs``), ``--seed``, ``--save-pictures``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--logdir", default="runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-pictures", metavar="DIR", help="write the last epoch's pictures into DIR")
    return parser


def train_and_report(
    args: argparse.Namespace,
    name: str,
    model: Callable[[], L.LightningModule],
    datamodule: Callable[[], L.LightningDataModule],
    callbacks: Callable[[], Sequence[Any]],
    keys: tuple[str, ...] = ("val/", "xai/"),
) -> L.Trainer:
    """Seed with ``args.seed``, then build the callbacks, the model and the data and fit on the CPU with TensorBoard
    logs in ``args.logdir/name``; print the final metrics whose keys start with ``keys``, write the pictures when
    ``--save-pictures`` asks, and say where the logs are."""
    L.seed_everything(args.seed, verbose=False)
    logger = TensorBoardLogger(args.logdir, name=name)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=logger,
        callbacks=list(callbacks()),
        enable_model_summary=False,
        deterministic=True,
    )
    start = time.perf_counter()
    trainer.fit(model(), datamodule=datamodule())
    metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if k.startswith(keys)}
    print(f"\nTrained {args.epochs} epochs in {time.perf_counter() - start:.1f} s. Final validation metrics:")
    width = max(map(len, metrics), default=0)
    for key, value in sorted(metrics.items()):
        print(f"  {key:<{width}}  {value}")
    if args.save_pictures:
        for path in save_pictures(logger.log_dir, args.save_pictures):
            print(f"  wrote {path}")
    print(f"\nTensorBoard logs are in {logger.log_dir}. Open them with:\n  tensorboard --logdir {args.logdir}")
    return trainer
