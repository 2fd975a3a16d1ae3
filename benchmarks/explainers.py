"""What the black-box explainers cost beyond their forward passes, measured side by side in one run.

For RISE, Sobol, Score-CAM and SIDU, and for Captum's ``Occlusion`` and ``FeatureAblation``: the method's time
against its *forward-pass floor*. The floor replays the very forwards the method made, on the very inputs it
built (recorded once by a forward pre-hook, so same chunks, same ``batch_size``, same data), pre-built in memory,
so ``/floor`` is the overhead of building masks, perturbing, scoring and accumulating (goal: <= 1.15). Methods
that need different numbers of forwards are compared per forwarded image (``ms/1k img``, and ``/Occl.``: that
cost relative to Captum's Occlusion).

Method and floor runs alternate (drift hits both); on the CPU the clock is the process's CPU time, steadier than
wall time on a shared machine.

    python benchmarks/explainers.py --threads 1          # CPU
    python benchmarks/explainers.py --device cuda --batch 16 --image-size 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from captum.attr import FeatureAblation, Occlusion
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import SmallCNN, synchronize
from lightning_xai.explainers import RISE, SIDU, ScoreCAM, Sobol


def process_clock(device: torch.device) -> Callable[[], float]:
    """CPU time of this process on the CPU (steadier on a shared machine), wall time on an accelerator."""
    return time.process_time if device.type == "cpu" else time.perf_counter


def recorded_forwards(model: nn.Module, method: Callable[[], object]) -> list[Tensor]:
    """Run ``method`` once and return a copy of the input of every forward of ``model`` it made."""
    recorded: list[Tensor] = []
    handle = model.register_forward_pre_hook(lambda module, args: recorded.append(args[0].detach().clone()))
    try:
        method()
    finally:
        handle.remove()
    return recorded


def floor_function(model: nn.Module, chunks: list[Tensor]) -> Callable[[], None]:
    """The same forwards on the pre-built inputs: only the model runs (plus the softmax the explainers take)."""

    def run() -> None:
        with torch.no_grad():
            for chunk in chunks:
                torch.softmax(model(chunk), dim=1)

    return run


def paired_seconds(
    method: Callable[[], object], floor: Callable[[], object], device: torch.device, repeats: int
) -> tuple[float, float, float]:
    """Medians of ``method``'s and ``floor``'s times, run alternately, and the median of the per-repeat ratios."""
    clock = process_clock(device)
    method(), floor()  # warm-up
    synchronize(device)
    method_times, floor_times = [], []
    for _ in range(repeats):
        for function, times in ((method, method_times), (floor, floor_times)):
            start = clock()
            function()
            synchronize(device)
            times.append(clock() - start)
    ratios = [m / f for m, f in zip(method_times, floor_times, strict=True)]
    return statistics.median(method_times), statistics.median(floor_times), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--batch", type=int, default=2, help="images explained per call")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128, help="perturbed images per forward (all methods)")
    parser.add_argument("--rise-masks", type=int, default=1000)
    parser.add_argument("--sobol-grid", type=int, default=8)
    parser.add_argument("--sobol-design", type=int, default=32)
    parser.add_argument("--occlusion-window", type=int, default=4)
    parser.add_argument("--occlusion-stride", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on the CPU")
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = SmallCNN().to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    inputs = torch.rand(args.batch, 3, args.image_size, args.image_size, device=device)
    with torch.no_grad():
        target = model(inputs).argmax(dim=1)
    size, layer = args.batch_size, "features.10"  # the last ReLU: 128 channels at a quarter of the image size

    grid, window, stride = args.sobol_grid, args.occlusion_window, args.occlusion_stride
    per_eval = max(1, size // args.batch)  # Captum forwards per_eval perturbations of every image at once
    cells = torch.arange(grid * grid, device=device).view(1, 1, grid, grid).float()
    feature_mask = nn.functional.interpolate(cells, size=(args.image_size,) * 2, mode="nearest").long()
    explainers = {
        f"RISE(n_masks={args.rise_masks})": RISE(n_masks=args.rise_masks, batch_size=size),
        f"Sobol(grid={grid}, n_design={args.sobol_design})": Sobol(grid, args.sobol_design, batch_size=size),
        "ScoreCAM(128 channels)": ScoreCAM(layer=layer, batch_size=size),
        "SIDU(128 channels)": SIDU(layer=layer, batch_size=size),
    }
    methods: dict[str, Callable[[], object]] = {
        label: lambda explainer=explainer: explainer(model, inputs, target) for label, explainer in explainers.items()
    }
    occlusion, ablation = Occlusion(model), FeatureAblation(model)
    methods[f"captum Occlusion(window={window}, stride={stride})"] = lambda: occlusion.attribute(
        inputs, (3, window, window), strides=(3, stride, stride), target=target, perturbations_per_eval=per_eval
    )
    methods[f"captum FeatureAblation({grid}x{grid} cells)"] = lambda: ablation.attribute(
        inputs, target=target, feature_mask=feature_mask, perturbations_per_eval=per_eval
    )

    rows = []
    for label, method in methods.items():
        chunks = recorded_forwards(model, method)
        timing = paired_seconds(method, floor_function(model, chunks), device, args.repeats)
        rows.append((label, sum(len(chunk) for chunk in chunks), len(chunks), *timing))

    print(
        f"device={device} threads={torch.get_num_threads()} batch={args.batch} image={args.image_size}x"
        f"{args.image_size} batch_size={size} repeats={args.repeats} clock={process_clock(device).__name__} "
        "(medians; /floor = median of the paired ratios)"
    )
    occlusion_row = next(row for row in rows if row[0].startswith("captum Occlusion"))
    occlusion_per_image = occlusion_row[3] / occlusion_row[1]
    header = (
        f"{'method':<44}{'images':>8}{'fwds':>6}{'time s':>9}{'floor s':>9}{'/floor':>8}{'ms/1k img':>11}{'/Occl.':>8}"
    )
    print(header)
    print("-" * len(header))
    for label, images, forwards, seconds, floor, ratio in rows:
        per_image = seconds / images
        print(
            f"{label:<44}{images:>8}{forwards:>6}{seconds:>9.3f}{floor:>9.3f}{ratio:>8.2f}{per_image * 1e6:>11.1f}"
            f"{per_image / occlusion_per_image:>8.2f}"
        )


if __name__ == "__main__":
    main()
