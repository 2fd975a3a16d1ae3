"""What the README quickstart monitor's pictures cost per validation epoch: an older revision's against this tree's.

One validation epoch of the quickstart monitor (Grad-CAM and IG on a 16-image probe; deletion and insertion, 16
steps) logs 2 heatmap grids and 4 curve pictures. This script draws exactly those, from the maps and metrics of a
digits model trained for 2 epochs, and logs them through the TensorBoard path the monitor takes (uint8 pages,
``png_bytes``, the summary protobuf, then TensorBoard's own writer thread with its pure-Python CRC-32C, flushed
inside the clock), with the pictures and PNG encoder of an older revision (``--old-rev``: its ``visualize.py`` and
``loggers.py`` read with ``git show``) and with this tree's, alternately in one process. It prints, per epoch, the
process CPU time (all threads: the writer's checksum counts) min / median over the rounds, then per picture the
thread CPU time of drawing, of ``png_bytes`` and of TensorBoard's ``masked_crc32c`` over the PNG, and its bytes.

    python benchmarks/pictures.py --repeats 20
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_xai import loggers, visualize

ROOT = Path(__file__).resolve().parents[1]


def old_module(revision: str, path: str, name: str) -> ModuleType | None:
    """``path`` of ``revision`` as a module (it imports the rest of lightning_xai from this tree)."""
    try:
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{revision}:{path}"], check=True, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, f"{name}.py", "exec"), module.__dict__)
    return module


def epoch_inputs() -> dict[str, Any]:
    """The quickstart monitor's probe, captions, maps and filled metrics, from a digits model trained 2 epochs."""
    import lightning as L

    from examples.digits import DigitsClassifier, DigitsDataModule
    from lightning_xai.explainers import GradCAM, IntegratedGradients
    from lightning_xai.metrics import DeletionAUC, InsertionAUC

    L.seed_everything(0, verbose=False)
    datamodule, model = DigitsDataModule(), DigitsClassifier()
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=datamodule)
    model.eval()
    images = torch.stack([datamodule.val_set[i][0] for i in range(16)])
    labels = torch.stack([datamodule.val_set[i][1] for i in range(16)])
    predictions, probabilities = visualize.caption_predictions(model, images)
    maps, curves = {}, []
    for name, explainer in {"GradCAM": GradCAM(), "IG": IntegratedGradients(n_steps=16)}.items():
        maps[name] = explainer(model, images, predictions).detach()
        for metric in (DeletionAUC(steps=16), InsertionAUC(steps=16)):
            metric.update(model, images, maps[name], predictions)
            xlabel, ylabel = metric.curve_axes()
            curves.append((f"{name}: {metric.name}", metric.curves(), metric.curve_bands(), xlabel, ylabel))
    return {
        "images": images,
        "labels": labels,
        "captions": (predictions, probabilities),
        "maps": maps,
        "curves": curves,
    }


def pictures(module: ModuleType, inputs: dict[str, Any]) -> tuple[Callable[[], list], Callable[[], list]]:
    """Functions drawing the epoch's 2 grids and 4 curve pages as uint8 ``(3, H, W)`` with ``module``."""
    predictions, probabilities = inputs["captions"]

    def grids() -> list:
        return [
            module.heatmap_grid(
                inputs["images"],
                maps,
                labels=inputs["labels"],
                predictions=predictions,
                probabilities=probabilities,
                explainer=name,
                dtype=torch.uint8,
            )
            for name, maps in inputs["maps"].items()
        ]

    def curves() -> list:
        return [
            module.curve_image(curve, title=title, xlabel=xlabel, ylabel=ylabel, bands=bands or None, dtype=torch.uint8)
            for title, curve, bands, xlabel, ylabel in inputs["curves"]
        ]

    return grids, curves


def _median_ms(times: dict[str, list[float]], key: str) -> str:
    return f"{1e3 * statistics.median(times[key]):.2f}"


def timed(function: Callable[[], Any], times: dict[str, list[float]], key: str, per: int = 1) -> Any:
    """``function()``, its thread CPU time divided by ``per`` appended to ``times[key]``."""
    start = time.thread_time()
    result = function()
    times.setdefault(key, []).append((time.thread_time() - start) / per)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--old-rev", default="1c992ac", help="git revision with the old pictures")
    args = parser.parse_args()
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    inputs = epoch_inputs()
    versions: dict[str, tuple[ModuleType, ModuleType]] = {"this tree": (visualize, loggers)}
    old_pictures = old_module(args.old_rev, "lightning_xai/visualize.py", "old_visualize")
    old_loggers = old_module(args.old_rev, "lightning_xai/loggers.py", "old_loggers")
    if old_pictures is not None and old_loggers is not None:
        versions = {args.old_rev: (old_pictures, old_loggers), **versions}
    epoch_times: dict[str, list[float]] = {name: [] for name in versions}
    with tempfile.TemporaryDirectory() as logdir:
        logger = TensorBoardLogger(logdir, name="pictures")

        def epoch(name: str, step: int) -> None:
            pictures_module, loggers_module = versions[name]
            grids, curves = pictures(pictures_module, inputs)
            for index, page in enumerate(grids() + curves()):
                loggers_module._tensorboard_image(logger, f"{name}/{index}", loggers_module._hwc_uint8(page), step)
            logger.experiment.flush()  # the writer thread's CRC and write inside the clock

        for name in versions:  # warm-up: fonts, text masks, colour tables
            epoch(name, 0)
        for step in range(1, args.repeats + 1):
            for name in versions if step % 2 else reversed(list(versions)):
                start = time.process_time()
                epoch(name, step)
                epoch_times[name].append(time.process_time() - start)
    print("quickstart monitor's pictures per validation epoch (2 grids + 4 curves, TensorBoard, process CPU):")
    for name, times in epoch_times.items():
        print(f"  {name:10s} min {1e3 * min(times):5.1f} ms  median {1e3 * statistics.median(times):5.1f} ms")
    # the parts, each version's in turn within every round (the order alternating), thread CPU per picture
    parts: dict[str, dict[str, list[float]]] = {name: {} for name in versions}
    sizes: dict[str, list[int]] = {}
    for round_index in range(args.repeats):
        for name in versions if round_index % 2 else reversed(list(versions)):
            pictures_module, loggers_module = versions[name]
            grids, curves = pictures(pictures_module, inputs)
            times = parts[name]
            grid_pages, curve_pages = timed(grids, times, "draw grid", 2), timed(curves, times, "draw curve", 4)
            encoded = []
            for kind, page in [("grid", page) for page in grid_pages] + [("curve", page) for page in curve_pages]:
                pixels = loggers_module._hwc_uint8(page)
                encoded.append(timed(functools.partial(loggers_module.png_bytes, pixels), times, f"png {kind}"))
                timed(functools.partial(masked_crc32c, encoded[-1]), times, f"crc {kind}")
            sizes[name] = [len(data) for data in encoded]
    for name, times in parts.items():
        ms = functools.partial(_median_ms, times)

        print(f"{name}: per picture, thread CPU medians over the rounds (ms)")
        print(f"  draw: grid {ms('draw grid')}, curve {ms('draw curve')}")
        print(f"  png_bytes: grid {ms('png grid')}, curve {ms('png curve')}")
        print(f"  TensorBoard's CRC-32C of the PNG: grid {ms('crc grid')}, curve {ms('crc curve')}")
        print(f"  PNG bytes: grids {sizes[name][:2]}, curves {sizes[name][2:]}, all 6: {sum(sizes[name])}")


if __name__ == "__main__":
    main()
