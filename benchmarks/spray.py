"""What SpRAy costs next to the validation it rides on, and how it grows with the maps per label.

1. The clustering of 10 labels x ``max_per_label`` maps (16 x 16), ``SpectralRelevance.compute()``, on random maps.
2. For N = 64 ... 2048 maps of one label: the time of ``spectral_relevance`` (eigh is O(N^3)).
3. ``--recovery``: train the shortcut example's model 2 epochs with 30 % of the threes watermarked; for each explainer,
   the watermark mass of the marked and the other images, and how SpRAy splits the 36 validation threes.
4. The shortcut example's validation pass (360 digits, Grad-CAM and Input x Gradient maps of every sample, the
   monitor's other work included) with and without the SpRAy analysis.

    python benchmarks/spray.py [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import synchronize
from examples.digits import DigitsClassifier, DigitsDataModule
from examples.shortcut_digits import shortcut_monitor
from lightning_xai.functional import spectral_relevance
from lightning_xai.metrics import SpectralRelevance


def _timed(fn, device: torch.device, repeats: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def clustering_seconds(device: torch.device, per_label: int = 256, labels: int = 10) -> float:
    metric = SpectralRelevance(num_labels=labels, max_per_label=per_label).to(device)
    metric.update(torch.rand(labels * per_label, 1, 16, 16, device=device), torch.arange(labels * per_label) % labels)

    def run() -> None:
        metric._computed = None  # no cache: cluster again
        metric.compute()

    return _timed(run, device)


def validation_seconds(spray: bool) -> float:
    L.seed_everything(0, verbose=False)
    monitor = shortcut_monitor(peppr_steps=None, spray=spray)
    monitor.save_global_maps = False
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        callbacks=[monitor],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    monitor.stages = ("validate",)
    model, data = DigitsClassifier(), DigitsDataModule()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.validate(model, datamodule=data, verbose=False)  # warm-up
        start = time.perf_counter()
        for _ in range(3):
            trainer.validate(model, datamodule=data, verbose=False)
    return (time.perf_counter() - start) / 3


def recovery() -> None:
    from examples.shortcut_digits import Watermark, watermark_region
    from lightning_xai.explainers import GradCAM, InputXGradient, IntegratedGradients, Saliency

    region = watermark_region().bool()
    L.seed_everything(0, verbose=False)
    data = DigitsDataModule(transform=Watermark(fraction=0.3))
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, deterministic=True,
    )  # fmt: skip
    model = DigitsClassifier()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=data)
    images, labels = data.val_set.tensors
    marked = (labels == 3) & (images[:, 0][:, region].amin(dim=1) >= images.max() - 1e-6)
    model.eval()
    print(f"validation threes: {int((labels == 3).sum())}, watermarked: {int(marked.sum())}")
    for explainer in (InputXGradient(channel_reduction="abs_sum"), Saliency(), GradCAM(), IntegratedGradients()):
        maps = explainer(model, images, model(images).argmax(dim=1)).abs().sum(dim=1)
        mass = maps[:, region].sum(dim=1) / maps.flatten(1).sum(dim=1).clamp(min=1e-12)
        result = spectral_relevance(maps[labels == 3], n_neighbors=5)
        in_three = marked[labels == 3]
        clusters = [
            f"{int((result.labels == c).sum())} maps ({int(in_three[result.labels == c].sum())} marked, "
            f"{float(result.cluster_means[c][region].sum()):.3f})"
            for c in range(result.n_clusters)
        ]
        print(
            f"{explainer.name}: watermark mass marked {float(mass[marked].mean()):.3f}, other threes "
            f"{float(mass[(labels == 3) & ~marked].mean()):.3f}, other digits {float(mass[labels != 3].mean()):.3f}; "
            f"SpRAy clusters of the threes: {', '.join(clusters)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-validation", action="store_true")
    parser.add_argument("--recovery", action="store_true")
    args = parser.parse_args()
    if args.recovery:
        recovery()
        return
    device = torch.device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}")
    for per_label in (36, 256):
        print(
            f"SpectralRelevance.compute(), 10 labels x {per_label} maps: {clustering_seconds(device, per_label):.3f} s"
        )
    for n in (64, 128, 256, 512, 1024, 2048):
        maps = torch.rand(n, 1, 16, 16, device=device)
        seconds = _timed(lambda maps=maps: spectral_relevance(maps), device)
        print(f"spectral_relevance, N = {n:5d}: {seconds:.4f} s")
    if not args.skip_validation:
        without, with_spray = validation_seconds(False), validation_seconds(True)
        print(f"shortcut example validation (360 samples): {without:.3f} s without SpRAy, {with_spray:.3f} s with")


if __name__ == "__main__":
    main()
