"""The figures of the README's similarity section, measured in one run on the CPU.

(a) The SimCLR-style digits model of ``examples/ssl_digits.py`` is trained for ``--epochs`` epochs (seed 0);
    on ``--pairs`` augmented validation pairs, every pair method's maps are scored by the similarity deletion
    AUC (background baseline, lower is better) and insertion AUC (higher is better), next to the same metrics
    of random maps (uniform noise) and the process CPU time of one ``explain_pair`` call.
(b) On the known-answer model of the tests (an embedding of one 4 x 4 patch of a 16 x 16 image), the share of
    every method's map mass inside the patch (the patch is 6.25 % of the image).

    python benchmarks/similarity.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples.digits import DigitsDataModule
from examples.ssl_digits import SimCLRDigits, augment
from lightning_xai import SimilarityMonitor
from lightning_xai.explainers import (
    AveragedTransforms,
    ConditionalOcclusion,
    ContextAgnosticConditionalOcclusion,
    InteractionCAM,
    PairwiseOcclusion,
    PixelInvariance,
)
from lightning_xai.metrics import SimilarityDeletionAUC, SimilarityInsertionAUC
from tests.helpers.models import PatchEmbedding, region_mask


def _erase(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    keep = torch.rand(images.shape[0], 1, *images.shape[2:], generator=generator) > 0.3
    return torch.where(keep, images, torch.full_like(images, -1.0))


def methods(background: float) -> dict[str, object]:
    return {
        "ConditionalOcclusion": ConditionalOcclusion(window=4, stride=2, baseline=background),
        "ContextAgnosticConditionalOcclusion": ContextAgnosticConditionalOcclusion(4, 2, baseline=background),
        "PairwiseOcclusion": PairwiseOcclusion(window=4, stride=2, baseline=background),
        "InteractionCAM": InteractionCAM(),
        "AveragedTransforms": AveragedTransforms(steps=8),
        "PixelInvariance": PixelInvariance(_erase, num_augments=256),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    model = SimCLRDigits()
    data = DigitsDataModule(seed=0)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    trainer.fit(model, datamodule=data)
    images = data.val_set.tensors[0][: args.pairs]
    x1, x2 = SimilarityMonitor(augment=augment).make_pairs(images)
    with torch.no_grad():
        similarity = torch.nn.functional.cosine_similarity(model(x1), model(x2)).mean()
    print(f"(a) {args.pairs} augmented validation pairs, mean cos(f(x1), f(x2)) = {similarity:.3f}")
    print(f"{'method':<36} {'deletion AUC':>16} {'insertion AUC':>16} {'CPU s / call':>13}")
    generator = torch.Generator().manual_seed(1)
    random_maps = (torch.rand(x1.shape, generator=generator), torch.rand(x2.shape, generator=generator))
    rows = {"random maps": (random_maps, 0.0)}
    for name, explainer in methods(-1.0).items():
        started = time.process_time()
        maps = explainer.explain_pair(model, x1, x2)  # type: ignore[attr-defined]
        rows[name] = (maps, time.process_time() - started)
    for name, ((maps1, maps2), seconds) in rows.items():
        deletion, insertion = SimilarityDeletionAUC(steps=16, baseline=-1.0), SimilarityInsertionAUC(steps=16)
        deletion.update(model, x1, x2, maps1, maps2)
        insertion.update(model, x1, x2, maps1, maps2)
        cells = [f"{m.compute():.3f} +- {m.standard_error():.3f}" for m in (deletion, insertion)]
        print(f"{name:<36} {cells[0]:>16} {cells[1]:>16} {seconds:>13.2f}")

    patch = region_mask(16, 16, 4, 8, 4).bool()
    known = PatchEmbedding()
    generator = torch.Generator().manual_seed(1)
    y1 = torch.rand(16, 1, 16, 16, generator=generator)
    y2 = (0.9 * y1 + 0.1 * torch.rand(16, 1, 16, 16, generator=generator)).clamp(0, 1)
    print("\n(b) known answer: share of the positive map mass inside the patch (6.25 % of the pixels)")
    for name, explainer in methods(0.0).items():
        if isinstance(explainer, PixelInvariance):
            explainer = PixelInvariance(lambda x, g: x * (torch.rand(x.shape, generator=g) > 0.3), num_augments=256)
        shares = []
        for maps in explainer.explain_pair(known, y1, y2):  # type: ignore[attr-defined]
            mass = maps.clamp_min(0)[:, 0]
            shares.append((mass[:, patch].sum(1) / mass.flatten(1).sum(1)).mean())
        print(f"{name:<36} view 1: {100 * shares[0]:5.1f} %   view 2: {100 * shares[1]:5.1f} %")


if __name__ == "__main__":
    main()
