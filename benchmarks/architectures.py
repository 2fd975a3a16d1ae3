"""Explainers on a real architecture (torchvision resnet18, random weights) against peers doing the same work.

Each pair computes the same map at the same layer: Grad-CAM at ``layer4`` (ours vs pytorch-grad-cam's GradCAM and
Captum's LayerGradCam + upsampling), Grad-CAM++ at ``layer4`` (ours vs pytorch-grad-cam's GradCAMPlusPlus),
Saliency (ours vs Captum's Saliency) and Integrated Gradients with ``n_steps`` steps (ours vs Captum's). The rounds
are paired and interleaved (ours, peer, ours, peer, ...) so drift hits both; the clock is the process's CPU time
with a fixed number of threads. Printed: min and median seconds per call of each, and ours / peer (< 1: ours is
faster).

    python benchmarks/architectures.py --threads 1 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import captum.attr
import torch
import torch.nn.functional as F
import torchvision
from pytorch_grad_cam import GradCAM as PGCGradCAM
from pytorch_grad_cam import GradCAMPlusPlus as PGCGradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import synchronize
from lightning_xai.explainers import GradCAM, GradCAMPlusPlus, IntegratedGradients, Saliency


def timed(function: Callable[[], object], device: torch.device) -> float:
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    synchronize(device)
    start = clock()
    function()
    synchronize(device)
    return clock() - start


def pairs(model: torch.nn.Module, inputs: torch.Tensor, target: torch.Tensor, n_steps: int) -> dict:
    size = tuple(inputs.shape[-2:])
    targets = [ClassifierOutputTarget(int(c)) for c in target]
    pgc = PGCGradCAM(model=model, target_layers=[model.layer4])
    pgcpp = PGCGradCAMPlusPlus(model=model, target_layers=[model.layer4])
    layer_gradcam = captum.attr.LayerGradCam(model, model.layer4)

    def captum_gradcam() -> torch.Tensor:
        maps = layer_gradcam.attribute(inputs, target=target, relu_attributions=True)
        return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)

    def captum_saliency() -> torch.Tensor:
        return captum.attr.Saliency(model).attribute(inputs.clone().requires_grad_(), target=target, abs=True)

    def captum_ig() -> torch.Tensor:
        return captum.attr.IntegratedGradients(model).attribute(inputs, target=target, n_steps=n_steps)

    ig = IntegratedGradients(n_steps=n_steps)
    return {
        "GradCAM vs pytorch-grad-cam": (lambda: GradCAM()(model, inputs, target), lambda: pgc(inputs, targets)),
        "GradCAM vs Captum LayerGradCam": (lambda: GradCAM()(model, inputs, target), captum_gradcam),
        "GradCAM++ vs pytorch-grad-cam": (
            lambda: GradCAMPlusPlus()(model, inputs, target),
            lambda: pgcpp(inputs, targets),
        ),
        "Saliency vs Captum": (lambda: Saliency()(model, inputs, target), captum_saliency),
        f"IntegratedGradients({n_steps}) vs Captum": (lambda: ig(model, inputs, target), captum_ig),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--n-steps", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).to(device)
    with torch.no_grad():
        model.train()(torch.rand(4, 3, 64, 64, device=device))
    model.eval()
    print(f"resnet18, batch {args.batch}, {args.threads} thread(s), {args.rounds} paired rounds, device {device}")
    print(f"{'size':>5} {'pair':<36} {'ours min':>9} {'ours med':>9} {'peer min':>9} {'peer med':>9} {'ratio':>6}")
    for size in args.sizes:
        inputs = torch.rand(args.batch, 3, size, size, device=device)
        target = torch.arange(args.batch, device=device) % 10
        for name, (ours, peer) in pairs(model, inputs, target, args.n_steps).items():
            ours(), peer()  # warm-up
            times: dict[str, list[float]] = {"ours": [], "peer": []}
            for _ in range(args.rounds):
                times["ours"].append(timed(ours, device))
                times["peer"].append(timed(peer, device))
            o_min, o_med = min(times["ours"]), statistics.median(times["ours"])
            p_min, p_med = min(times["peer"]), statistics.median(times["peer"])
            print(f"{size:>5} {name:<36} {o_min:9.4f} {o_med:9.4f} {p_min:9.4f} {p_med:9.4f} {o_med / p_med:6.2f}")


if __name__ == "__main__":
    main()
