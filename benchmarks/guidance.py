"""What the guidance losses cost a training step: time and memory with the penalty against without, as ratios.

Steps alternate (plain, RRR, RRR reusing the training forward, Grad-CAM guidance, plain, ...) so drift of the
machine hits all of them; the median
of each is compared. Double backpropagation is expected to cost roughly two to three plain steps.

Memory: on CUDA the peak allocated during the step; on the CPU, where torch has no allocator statistics, the bytes
of the tensors autograd saves for the backward pass (the activations that dominate a step's peak), counted with
``torch.autograd.graph.saved_tensors_hooks``.

    python benchmarks/guidance.py --repeats 20 --batch-size 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import SmallCNN, synchronize
from lightning_xai.guidance import GradCAMGuidance, RightForTheRightReasons


def make_step(model: torch.nn.Module, kind: str) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    rrr, gradcam = RightForTheRightReasons(weight=10.0), GradCAMGuidance(weight=1.0)

    def step(x: Tensor, y: Tensor, forbidden: Tensor) -> Tensor:
        if kind == "rrr_one_forward":  # the training forward reused: RightForTheRightReasons.from_outputs
            leaf = x.detach().requires_grad_(True)
            logits = model(leaf)
            loss = F.cross_entropy(logits, y) + rrr.from_outputs(logits, leaf, forbidden)
            loss.backward()
            model.zero_grad(set_to_none=True)
            return loss.detach()
        loss = F.cross_entropy(model(x), y)
        if kind == "rrr":
            loss = loss + rrr(model, x, forbidden)
        elif kind == "gradcam":
            loss = loss + gradcam(model, x, forbidden, y)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def saved_bytes(step: Callable[[Tensor, Tensor, Tensor], Tensor], *args: Tensor) -> int:
    total = 0

    def pack(tensor: Tensor) -> Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step(*args)
    return total


def peak_bytes(step: Callable[[Tensor, Tensor, Tensor], Tensor], device: torch.device, *args: Tensor) -> int:
    if device.type != "cuda":
        return saved_bytes(step, *args)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step(*args)
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = SmallCNN().to(device).train()
    x = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    forbidden = torch.zeros(args.size, args.size, device=device)
    forbidden[-args.size // 4 :, -args.size // 4 :] = 1
    steps = {kind: make_step(model, kind) for kind in ("plain", "rrr", "rrr_one_forward", "gradcam")}
    for step in steps.values():  # warm-up
        step(x, y, forbidden)
    times: dict[str, list[float]] = {kind: [] for kind in steps}
    for _ in range(args.repeats):
        for kind, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step(x, y, forbidden)
            synchronize(device)
            times[kind].append(time.perf_counter() - start)
    memory = {kind: peak_bytes(step, device, x, y, forbidden) for kind, step in steps.items()}
    median = {kind: statistics.median(values) for kind, values in times.items()}
    what = "peak allocated" if device.type == "cuda" else "saved for backward"
    print(f"SmallCNN, batch {args.batch_size} x 3 x {args.size} x {args.size}, {device}, median of {args.repeats}")
    for kind in steps:
        print(
            f"  {kind:15s} step {1000 * median[kind]:7.1f} ms  ({median[kind] / median['plain']:.2f} x plain)   "
            f"{what} {memory[kind] / 2**20:6.1f} MiB  ({memory[kind] / memory['plain']:.2f} x plain)"
        )


if __name__ == "__main__":
    main()
