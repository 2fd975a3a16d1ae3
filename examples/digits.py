"""Train a small CNN on scikit-learn's bundled digits with lightning_xai monitoring its explanations.

Runs on the CPU in well under two minutes and writes TensorBoard logs to ./runs:

    python examples/digits.py
    tensorboard --logdir runs

Nothing is downloaded: the 1,797 8x8 digit images ship with scikit-learn.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

try:
    from examples._common import ClassifierSteps, example_parser, train_and_report
except ImportError:  # run as a script from examples/ (python digits.py)
    from _common import ClassifierSteps, example_parser, train_and_report  # type: ignore[no-redef]

IMAGE_SIZE = 16


def load_digits_tensors(image_size: int = IMAGE_SIZE) -> tuple[Tensor, Tensor]:
    """The digits as ``(N, 1, image_size, image_size)`` floats standardised to mean 0, std 1, and labels ``(N,)``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != images.shape[-1]:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (images - 0.5) / 0.5
    return images, torch.tensor(digits.target, dtype=torch.long)


class DigitsDataModule(L.LightningDataModule):
    """Digits split 80/20 with a fixed permutation; ``transform(images, labels)`` may alter the training data."""

    def __init__(self, batch_size: int = 64, image_size: int = IMAGE_SIZE, seed: int = 0, transform: Any = None):
        super().__init__()
        self.batch_size = batch_size
        self.image_size = image_size
        self.seed = seed
        self.transform = transform

    def setup(self, stage: str | None = None) -> None:
        images, labels = load_digits_tensors(self.image_size)
        if self.transform is not None:
            images, labels = self.transform(images, labels)
        order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(self.seed))
        split = int(0.8 * images.shape[0])
        self.train_set = TensorDataset(images[order[:split]], labels[order[:split]])
        self.val_set = TensorDataset(images[order[split:]], labels[order[split:]])

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class DigitsClassifier(ClassifierSteps):
    """A small CNN: two conv blocks with BatchNorm, then pooling, dropout and a linear head.

    The last convolution, ``features.4``, sees the image at half resolution: Grad-CAM's default layer.
    """

    def __init__(self, width: int = 16, lr: float = 3e-3, num_classes: int = 10) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.AdaptiveMaxPool2d(4), nn.Flatten(), nn.Dropout(0.2), nn.Linear(2 * width * 16, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def default_monitor(global_maps: bool = False) -> Any:
    """The monitor the README shows: three explainers and three faithfulness metrics on a 16-image probe.

    With ``global_maps``, it also aggregates every validation image's maps into per-label global maps.
    """
    from lightning_xai import ExplanationMonitor
    from lightning_xai.explainers import GradCAM, IntegratedGradients, Saliency
    from lightning_xai.metrics import DeletionAUC, InsertionAUC, MIFLIFFidelity

    return ExplanationMonitor(
        explainer={
            "GradCAM": GradCAM(),
            "Saliency": Saliency(),
            "IntegratedGradients": IntegratedGradients(n_steps=16),
        },
        metrics=[DeletionAUC(steps=16), InsertionAUC(steps=16), MIFLIFFidelity(steps=16)],
        probe_size=16,
        class_balanced=True,
        **({"num_labels": 10, "max_samples": None} if global_maps else {}),
    )


def main() -> None:
    parser = example_parser(__doc__, epochs=6)
    parser.add_argument("--global-maps", action="store_true", help="also aggregate per-label global maps")
    args = parser.parse_args()
    train_and_report(
        args,
        "digits",
        DigitsClassifier,
        lambda: DigitsDataModule(seed=args.seed),
        lambda: [default_monitor(global_maps=args.global_maps)],
    )


if __name__ == "__main__":
    main()
