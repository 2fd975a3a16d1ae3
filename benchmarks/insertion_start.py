"""How much evidence each insertion start image removes, at several image sizes, on trained digits models.

For each image side, a :class:`~examples.digits.DigitsClassifier` is trained for a few epochs on the bundled
digits resized to that side (bilinear); with ``--stem-side 32`` a learned strided patch stem brings larger images
down to 32 px first, so a 224 px model trains in a minute on the CPU. On the first ``--samples`` validation
images, for each candidate start image (RISE's fixed 11 x 11, sigma = 5 blur; Gaussian blurs with sigma a
fraction of the side; constants), it prints the mean probability of the predicted class on the clean image and
on the start, the share of samples whose argmax survives the start, and the insertion AUC of Grad-CAM, Saliency
and a uniform random map with their paired separation ``(AUC_map - AUC_random) / stderr``. Chance is 0.10.

    python benchmarks/insertion_start.py --sides 32 --samples 256
    python benchmarks/insertion_start.py --sides 64 --samples 128
    python benchmarks/insertion_start.py --sides 224 --stem-side 32 --epochs 5 --samples 96
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples.digits import DigitsClassifier, DigitsDataModule
from lightning_xai.explainers import GradCAM, Saliency
from lightning_xai.functional import insertion_auc
from lightning_xai.functional.baselines import make_baseline, scaled_blur


def digits_model(side: int, stem_side: int | None) -> nn.Module:
    """A DigitsClassifier; with ``stem_side`` behind a learned ``side // stem_side`` strided patch stem."""
    if stem_side is None or side <= stem_side:
        return DigitsClassifier()
    stride = side // stem_side
    return nn.Sequential(nn.Conv2d(1, 1, stride, stride=stride), DigitsClassifier())


def train(side: int, epochs: int, seed: int, stem_side: int | None) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    data = DigitsDataModule(image_size=side, seed=seed)
    data.setup()
    torch.manual_seed(seed)
    model = digits_model(side, stem_side)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        model.train()
        for inputs, labels in data.train_dataloader():
            optimiser.zero_grad()
            F.cross_entropy(model(inputs), labels).backward()
            optimiser.step()
    images, labels = data.val_set.tensors
    return model.eval(), images, labels


def candidates() -> dict[str, object]:
    starts: dict[str, object] = {"rise_blur (11x11, s=5)": "rise_blur"}
    for fraction in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3):
        starts[f"blur s={fraction:g} side"] = lambda x, f=fraction: scaled_blur(x, f)
    starts["constant 0"] = 0.0
    starts["mean"] = "mean"
    return starts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", type=int, nargs="+", default=[32, 64, 224])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stem-side", type=int, default=None, help="patch stem down to this side (fast at 224)")
    args = parser.parse_args()
    for side in args.sides:
        start = time.perf_counter()
        model, images, labels = train(side, args.epochs, args.seed, args.stem_side)
        inputs = images[: args.samples]
        with torch.no_grad():
            clean = model(images).softmax(1)
        accuracy = (clean.argmax(1) == labels).float().mean().item()
        clean = clean[: args.samples]
        target = clean.argmax(1)
        maps = {
            "GradCAM": GradCAM()(model, inputs, target),
            "Saliency": Saliency()(model, inputs, target),
            "random": torch.rand(inputs.shape[0], 1, side, side, generator=torch.Generator().manual_seed(1)),
        }
        print(
            f"\nside {side}: trained {args.epochs} epochs in {time.perf_counter() - start:.1f} s, val acc "
            f"{accuracy:.3f}; p(target) clean {clean.max(1).values.mean():.3f}; {inputs.shape[0]} samples"
        )
        print(f"{'start':24s} p(start) argmax kept | " + " | ".join(f"{n:>8s} AUC (sep)" for n in maps))
        for name, baseline in candidates().items():
            substrate = make_baseline(inputs, baseline)  # type: ignore[arg-type]
            with torch.no_grad():
                probabilities = model(substrate).softmax(1)
            p_start = probabilities.gather(1, target[:, None]).mean().item()
            kept = (probabilities.argmax(1) == target).float().mean().item()
            aucs = {
                n: insertion_auc(model, inputs, m, target, steps=args.steps, baseline=baseline, batch_size=256)
                for n, m in maps.items()
            }
            cells = []
            for n, auc in aucs.items():
                difference = auc - aucs["random"]
                separation = difference.mean() / (difference.std() / difference.numel() ** 0.5 + 1e-12)
                cells.append(f"{auc.mean():.3f} ({separation:+5.1f})" if n != "random" else f"{auc.mean():.3f}")
            print(f"{name:24s} {p_start:8.3f} {kept:6.2f} | " + " | ".join(f"{c:>19s}" for c in cells))


if __name__ == "__main__":
    main()
