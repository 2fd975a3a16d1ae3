"""What LRP and Concept Relevance Propagation cost against Saliency, measured side by side in one run.

``Saliency`` is one forward and one backward; ``LRP`` (Zennit's Gradient attributor under ``epsilon_plus_flat``,
canonizers ``"auto"``) is one forward and one modified backward, plus registering the composite's hooks and
merging/unmerging BatchNorm. ``/Saliency`` is the median of the per-repeat time ratios (runs alternate, so drift
hits both). ``ConceptRelevance.channel_relevance`` is one CRP pass; ``concepts(top_k)`` adds ``B x top_k``
conditional passes (chunked).

    python benchmarks/concepts.py --threads 1                 # CPU
    python benchmarks/concepts.py --device cuda --batch 32 --image-size 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import SmallCNN, synchronize
from benchmarks.explainers import process_clock
from lightning_xai.explainers import LRP, ConceptRelevance, Saliency


def median_seconds(functions: dict, device: torch.device, repeats: int) -> dict[str, list[float]]:
    clock = process_clock(device)
    for function in functions.values():
        function()  # warm-up
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = clock()
            function()
            synchronize(device)
            times[name].append(clock() - start)
    return times


def methods(model: torch.nn.Module, layer: str, inputs: torch.Tensor, target: torch.Tensor, top_k: int) -> dict:
    crp = ConceptRelevance(layer, top_k=top_k)
    return {
        "Saliency": lambda: Saliency()(model, inputs, target),
        "LRP": lambda: LRP()(model, inputs, target),
        "ConceptRelevance.channels": lambda: crp.channel_relevance(model, inputs, target),
        f"ConceptRelevance.concepts k={top_k}": lambda: crp.concepts(model, inputs, target),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--top-k", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    models = {
        "SmallCNN": (SmallCNN(num_classes=10), "features.8"),
        "resnet18": (torchvision.models.resnet18(weights=None, num_classes=10), "layer3"),
    }
    print(f"device={device} batch={args.batch} image={args.image_size} repeats={args.repeats} top_k={args.top_k}")
    header = f"{'model':10} {'method':28} {'ms':>9} {'/Saliency':>10}"
    print(header)
    print("-" * len(header))
    for model_name, (model, layer) in models.items():
        model = model.eval().to(device)
        inputs = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
        target = torch.randint(0, 10, (args.batch,), device=device)
        functions = methods(model, layer, inputs, target, args.top_k)
        times = median_seconds(functions, device, args.repeats)
        for name, values in times.items():
            ratio = statistics.median(v / s for v, s in zip(values, times["Saliency"], strict=True))
            print(f"{model_name:10} {name:28} {1e3 * statistics.median(values):9.1f} {ratio:10.2f}")


if __name__ == "__main__":
    main()
