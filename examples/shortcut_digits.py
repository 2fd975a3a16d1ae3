"""A model that learns a shortcut, caught by global explanations and failed by a gate.

Every image of one digit class (3 by default) carries a small bright watermark in the bottom-right corner, in
training and validation alike, as a scanner's text overlay might mark the images of one hospital. The model
learns to read the watermark. The ExplanationMonitor aggregates the Grad-CAM and Input x Gradient maps of every
validation image into per-label global maps: the watermark class's map moves onto the corner, and the share of
its mass inside the watermark region rises over the epochs. A FaithfulnessGate on that share fails the run:

    python examples/shortcut_digits.py            # exits non-zero: FaithfulnessRegressionError
    python examples/shortcut_digits.py --clean    # the same without the watermark: passes, exit code 0
    python examples/shortcut_digits.py --no-gate  # train all epochs and watch the watermark mass rise
    python examples/shortcut_digits.py --guided   # Right for the Right Reasons on the watermark: the gate passes
    tensorboard --logdir runs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples.digits import IMAGE_SIZE, DigitsClassifier, DigitsDataModule
from lightning_xai import ExplanationMonitor, FaithfulnessGate, FaithfulnessRegressionError
from lightning_xai.explainers import GradCAM, InputXGradient
from lightning_xai.guidance import RightForTheRightReasons

WATERMARK_SIZE = 4


def watermark_region(image_size: int = IMAGE_SIZE, size: int = WATERMARK_SIZE) -> Tensor:
    """The (H, W) 0/1 mask of the bottom-right corner that carries the watermark."""
    region = torch.zeros(image_size, image_size)
    region[-size:, -size:] = 1.0
    return region


class Watermark:
    """Stamp the watermark (pixels at the images' maximum) on every image of ``watermarked_class``."""

    def __init__(self, watermarked_class: int = 3, image_size: int = IMAGE_SIZE, size: int = WATERMARK_SIZE) -> None:
        self.watermarked_class = watermarked_class
        self.region = watermark_region(image_size, size).bool()

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        images = images.clone()
        marked = labels == self.watermarked_class
        stamped = images[marked]
        stamped[:, :, self.region] = images.max()
        images[marked] = stamped
        return images, labels


def shortcut_monitor(max_samples: int | None = None, peppr_steps: int | None = 16) -> ExplanationMonitor:
    """Grad-CAM and Input x Gradient aggregated into per-label global maps, the watermark as domain knowledge."""
    return ExplanationMonitor(
        {"GradCAM": GradCAM(), "InputXGradient": InputXGradient(channel_reduction="abs_sum")},
        num_labels=10,
        max_samples=max_samples,
        regions={"watermark": watermark_region()},
        peppr_steps=peppr_steps,
        class_balanced=True,
    )


def shortcut_gate(threshold: float = 0.15) -> FaithfulnessGate:
    """Fail when any label's global Input x Gradient map puts more than ``threshold`` of its mass on the watermark.

    The watermark covers 16 of 256 pixels (6 %); a clean model's labels put at most about 9 % there.
    """
    return FaithfulnessGate(
        "xai/InputXGradient/global_relevance_mass_watermark_max", mode="min", threshold=threshold, min_epochs=1
    )


def stamp_watermark(images: Tensor, marked: Tensor, value: float, region: Tensor | None = None) -> Tensor:
    """A copy of ``images (N, C, H, W)`` with the watermark (pixels at ``value``) on the samples where ``marked``."""
    region = watermark_region(images.shape[-1]).bool() if region is None else region.bool()
    stamped = images.clone()
    stamped[marked[:, None, None, None] & region.expand_as(images)] = value
    return stamped


def shortcut_test_sets(images: Tensor, labels: Tensor, watermarked_class: int = 3) -> dict[str, tuple[Tensor, Tensor]]:
    """Three versions of clean held-out images: as in training, without the watermark, and swapped.

    ``"watermarked"``: the watermark on every image of ``watermarked_class`` (the training distribution);
    ``"clean"``: no watermark; ``"swapped"``: the watermark moved onto every image of the other classes and removed
    from the marked one, so a model that reads the watermark calls the other digits ``watermarked_class``.
    The watermark's value is the images' maximum, as :class:`Watermark` stamps it.
    """
    value = float(images.max())
    marked = labels == watermarked_class
    return {
        "watermarked": (stamp_watermark(images, marked, value), labels),
        "clean": (images, labels),
        "swapped": (stamp_watermark(images, ~marked, value), labels),
    }


def held_out_digits(data: DigitsDataModule) -> tuple[Tensor, Tensor]:
    """The validation split of ``data`` without any transform: the clean images the test sets are built from."""
    clean = DigitsDataModule(batch_size=data.batch_size, image_size=data.image_size, seed=data.seed)
    clean.setup("fit")
    images, labels = clean.val_set.tensors
    return images, labels


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy of ``model`` in eval mode (its training flag is put back)."""
    was_training = model.training
    model.eval()
    try:
        return float((model(images).argmax(dim=1) == labels).float().mean())
    finally:
        model.train(was_training)


class GuidedDigitsClassifier(DigitsClassifier):
    """The digits CNN trained with Right for the Right Reasons: the input gradient on the watermark is penalised.

    ``loss = cross_entropy + rrr(self, x, forbidden)`` with the fixed watermark region as domain knowledge (per-sample
    masks from the batch work the same way); the penalty is logged as ``train/rrr``.
    """

    def __init__(self, rrr_weight: float = 10.0, **kwargs: float) -> None:
        super().__init__(**kwargs)
        self.rrr = RightForTheRightReasons(weight=rrr_weight)
        self.forbidden = watermark_region()  # (H, W); moved to the inputs' device by the penalty

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, labels = batch
        logits = self(inputs)
        penalty = self.rrr(self, inputs, self.forbidden)
        self.log("train/rrr", penalty)
        self.log("train/acc", (logits.argmax(1) == labels).float().mean())
        return F.cross_entropy(logits, labels) + penalty


def report_accuracies(model: nn.Module, data: DigitsDataModule, watermarked_class: int = 3) -> dict[str, float]:
    """Accuracy on the watermarked, clean and swapped held-out sets, printed and returned."""
    sets = shortcut_test_sets(*held_out_digits(data), watermarked_class=watermarked_class)
    accuracies = {name: round(accuracy(model, images, labels), 3) for name, (images, labels) in sets.items()}
    print("Held-out accuracy (watermarked as in training / clean / swapped):", accuracies)
    return accuracies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clean", action="store_true", help="train without the watermark")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threshold", type=float, default=0.15)
    parser.add_argument("--no-gate", action="store_true", help="monitor only: watch the watermark mass rise")
    parser.add_argument("--logdir", default="runs")
    parser.add_argument("--guided", action="store_true", help="train with Right for the Right Reasons on the watermark")
    parser.add_argument("--rrr-weight", type=float, default=10.0, help="the penalty's weight with --guided")
    args = parser.parse_args()

    L.seed_everything(0, verbose=False)
    name = "shortcut_clean" if args.clean else "shortcut_watermark"
    if args.guided:
        name += "_guided"
    monitor = shortcut_monitor()
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=TensorBoardLogger(args.logdir, name=name),
        callbacks=[monitor] if args.no_gate else [monitor, shortcut_gate(args.threshold)],
        val_check_interval=0.25,  # validate four times an epoch: the shortcut is learned within the first epoch
        enable_model_summary=False,
        deterministic=True,
    )
    data = DigitsDataModule(transform=None if args.clean else Watermark())
    model = GuidedDigitsClassifier(rrr_weight=args.rrr_weight) if args.guided else DigitsClassifier()
    try:
        trainer.fit(model, datamodule=data)
    except FaithfulnessRegressionError as error:
        print(f"\nThe gate failed the run:\n{error}", file=sys.stderr)
        return 1
    finally:
        key = "xai/InputXGradient/global_relevance_mass_watermark/"
        masses = {k[len(key) :]: round(float(v), 3) for k, v in trainer.callback_metrics.items() if k.startswith(key)}
        print("\nShare of each label's global Input x Gradient mass on the watermark:", masses)
        report_accuracies(model, data)
        print(f"TensorBoard logs: tensorboard --logdir {args.logdir}")
    print("The gate passed." if not args.no_gate else "No gate was attached.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
