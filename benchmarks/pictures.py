"""What drawing the pictures costs per epoch of the README demo's monitor, old pictures against new, in one run.

One monitored epoch of the demo draws 3 heatmap grids (16 probe images, 16 x 16) and 9 curve figures (deletion,
insertion and MIF/LIF for each of 3 explainers, 17 points). This script draws exactly that and writes it to a
TensorBoard ``SummaryWriter`` (PNG encoding included), with the pictures of an older revision (``--old-rev``, read
with ``git show``: jet overlays, ``plt.subplots`` + ``tight_layout`` figures passed to ``add_figure``) and with the
current ones (labelled grids with captions and colour bars, curves with AUC and bands drawn once by ``render``).
Both are timed alternately in one process, and the growth is put against the demo monitor's per-epoch cost
measured in the same run by fitting the digits with and without it.

    python benchmarks/pictures.py --repeats 5
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch
from torch.utils.tensorboard import SummaryWriter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.overhead import fit_seconds
from examples.digits import DigitsClassifier, default_monitor, load_digits_tensors
from lightning_xai import visualize
from lightning_xai.metrics import DeletionAUC, InsertionAUC, MIFLIFFidelity

ROOT = Path(__file__).resolve().parents[1]


def old_visualize(revision: str) -> ModuleType | None:
    try:
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{revision}:lightning_xai/visualize.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader("old_visualize", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, "old_visualize.py", "exec"), module.__dict__)
    return module


def epoch_inputs() -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], list]:
    """The demo's probe, one map per explainer (signed IG, unsigned others) and its 9 filled metrics."""
    torch.manual_seed(0)
    images, labels = load_digits_tensors()
    images, labels = images[:16], labels[:16]
    model = DigitsClassifier().eval()
    maps = {"GradCAM": torch.rand(16, 1, 16, 16), "Saliency": torch.rand(16, 1, 16, 16)}
    maps["IntegratedGradients"] = torch.randn(16, 1, 16, 16)
    metrics = []
    for name, explained in maps.items():
        for metric in (DeletionAUC(steps=16), InsertionAUC(steps=16), MIFLIFFidelity(steps=16)):
            metric.update(model, images, explained, labels)
            metrics.append((name, metric))
    return images, labels, maps, metrics


def draw_old(module: ModuleType, writer: SummaryWriter, images, labels, maps, metrics) -> None:
    import matplotlib.pyplot as plt

    for name, explained in maps.items():
        writer.add_image(f"{name}/heatmaps", module.heatmap_grid(images, explained), 0)
    for name, metric in metrics:
        figure = module.curve_figure(metric.curves(), title=f"{name}: {metric.name}")
        writer.add_figure(f"{name}/{metric.name}_curve", figure, 0, close=False)
        plt.close(figure)


def draw_new(writer: SummaryWriter, model, images, labels, maps, metrics) -> None:
    predictions, probabilities = visualize.caption_predictions(model, images)
    for name, explained in maps.items():
        grid = visualize.heatmap_grid(
            images, explained, labels=labels, predictions=predictions, probabilities=probabilities, explainer=name
        )
        writer.add_image(f"{name}/heatmaps", grid, 0)
    for name, metric in metrics:
        curves, bands = metric.curves(), metric.curve_bands()
        figure = visualize.metric_curve_figure(metric, title=f"{name}: {metric.name}", curves=curves, bands=bands)
        writer.add_image(f"{name}/{metric.name}_curve", visualize.render(figure), 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the fits that give the monitor's cost")
    parser.add_argument("--old-rev", default="32ffaf9", help="git revision with the old pictures")
    args = parser.parse_args()
    old = old_visualize(args.old_rev)
    images, labels, maps, metrics = epoch_inputs()
    model = DigitsClassifier().eval()
    old_times, new_times = [], []
    with tempfile.TemporaryDirectory() as logdir:
        writer = SummaryWriter(logdir)
        draw_new(writer, model, images, labels, maps, metrics)  # warm-up: fonts, colour maps
        if old is not None:
            draw_old(old, writer, images, labels, maps, metrics)
        for _ in range(args.repeats):
            if old is not None:
                start = time.perf_counter()
                draw_old(old, writer, images, labels, maps, metrics)
                old_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            draw_new(writer, model, images, labels, maps, metrics)
            new_times.append(time.perf_counter() - start)
        writer.close()
        fit_seconds(False, 1, logdir)  # warm-up
        without, with_monitor = [], []
        for _ in range(max(1, args.repeats // 2)):
            without.append(fit_seconds(False, args.epochs, logdir))
            with_monitor.append(fit_seconds(True, args.epochs, logdir, default_monitor))
    monitor_per_epoch = (statistics.median(with_monitor) - statistics.median(without)) / args.epochs
    new = statistics.median(new_times)
    print(f"demo monitor: {monitor_per_epoch:.3f} s per epoch (fit with - without, median, {args.epochs} epochs)")
    print(f"new pictures: {new:.3f} s per epoch (median of {args.repeats})")
    if old_times:
        previous = statistics.median(old_times)
        growth = (new - previous) / (monitor_per_epoch - new + previous)
        print(
            f"old pictures ({args.old_rev}): {previous:.3f} s per epoch; the new pictures change the demo monitor's "
            f"per-epoch cost by {100 * growth:+.1f} % (goal <= +10 %)"
        )


if __name__ == "__main__":
    main()
