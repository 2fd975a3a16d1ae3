"""Train a tiny 3-D convolutional clip classifier on generated clips with lightning_xai monitoring its explanations.

Every clip (1 channel, 6 frames of 16 x 16 pixels, light noise) shows a static square that sits in every frame at a
random place. In class 1 a second square *flashes*: it appears in one random frame at a random place. The model
must therefore find an event in space and time; a faithful map of a class-1 clip puts its mass on the flash, in
its frame, not on the static square. Runs on the CPU in well under a minute and writes TensorBoard logs to ./runs:

    python examples/video_clips.py
    tensorboard --logdir runs

The monitor explains a fixed probe of 8 validation clips with Saliency and Grad-CAM (default layer: the last
``nn.Conv3d`` block) and measures DeletionAUC over voxels. Without ``moviepy`` the heatmaps are logged as frame
grids (clips along the rows, frames along the columns) under ``xai/<explainer>/heatmaps``; with ``moviepy<2`` as
TensorBoard videos. Nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

try:
    from examples._common import ClassifierSteps, example_parser, train_and_report
except ImportError:  # run as a script from examples/ (python video_clips.py)
    from _common import ClassifierSteps, example_parser, train_and_report  # type: ignore[no-redef]

FRAMES, SIZE, SQUARE = 6, 16, 4


def make_clips(count: int, seed: int = 0, frames: int = FRAMES, size: int = SIZE) -> tuple[Tensor, Tensor, Tensor]:
    """Generated clips ``(N, 1, T, H, W)``, labels ``(N,)`` and where the flash is, ``(N, 1, T, H, W)`` 0/1.

    Every clip holds a static ``SQUARE x SQUARE`` square (value 1) in all frames; class 1 clips (half of them) also
    hold a second square in one frame only (the flash, whose voxels the returned mask marks; zero for class 0).
    Background: Gaussian noise of standard deviation 0.1. Deterministic for one ``seed``.
    """
    generator = torch.Generator().manual_seed(seed)
    clips = 0.1 * torch.randn(count, 1, frames, size, size, generator=generator)
    flashes = torch.zeros_like(clips)
    labels = (torch.arange(count) % 2).long()[torch.randperm(count, generator=generator)]
    corners = torch.randint(0, size - SQUARE + 1, (count, 4), generator=generator)
    frame_of_flash = torch.randint(0, frames, (count,), generator=generator)
    for index in range(count):
        row, column, flash_row, flash_column = corners[index].tolist()
        clips[index, 0, :, row : row + SQUARE, column : column + SQUARE] += 1.0
        if labels[index] == 1:
            frame = int(frame_of_flash[index])
            flashes[index, 0, frame, flash_row : flash_row + SQUARE, flash_column : flash_column + SQUARE] = 1.0
    return clips + flashes, labels, flashes


class ClipsDataModule(L.LightningDataModule):
    """``train_size`` training and ``val_size`` validation clips from :func:`make_clips` (fixed seeds)."""

    def __init__(self, batch_size: int = 32, train_size: int = 512, val_size: int = 128, seed: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.train_size = train_size
        self.val_size = val_size
        self.seed = seed

    def setup(self, stage: str | None = None) -> None:
        train_clips, train_labels, _ = make_clips(self.train_size, seed=self.seed)
        val_clips, val_labels, _ = make_clips(self.val_size, seed=self.seed + 1)
        self.train_set = TensorDataset(train_clips, train_labels)
        self.val_set = TensorDataset(val_clips, val_labels)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=64)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class ClipClassifier(ClassifierSteps):
    """Two ``Conv3d`` blocks with BatchNorm, a global max pool over (T, H, W) and a linear head.

    ``features`` (its last block's output, post-ReLU, at full resolution) is Grad-CAM's default layer: the last module
    with a spatio-temporal output.
    """

    def __init__(self, width: int = 8, lr: float = 1e-2, num_classes: int = 2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(
            nn.Conv3d(1, width, 3, padding=1),
            nn.BatchNorm3d(width),
            nn.ReLU(),
            nn.Conv3d(width, 2 * width, 3, padding=1),
            nn.BatchNorm3d(2 * width),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveMaxPool3d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def default_monitor(probe_size: int = 8, steps: int = 16) -> Any:
    """Saliency and Grad-CAM (last Conv3d block) on a class-balanced probe of clips; DeletionAUC over voxels."""
    from lightning_xai import ExplanationMonitor
    from lightning_xai.explainers import GradCAM, Saliency
    from lightning_xai.metrics import DeletionAUC

    return ExplanationMonitor(
        explainer={"Saliency": Saliency(), "GradCAM": GradCAM()},
        metrics=[DeletionAUC(steps=steps)],
        probe_size=probe_size,
        class_balanced=True,
        heatmap_samples=probe_size,
    )


def main() -> None:
    args = example_parser(__doc__, epochs=4).parse_args()
    train_and_report(
        args, "video_clips", ClipClassifier, lambda: ClipsDataModule(seed=args.seed), lambda: [default_monitor()]
    )


if __name__ == "__main__":
    main()
