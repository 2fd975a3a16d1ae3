"""ExtremalPerturbation: its cost against its floor, batched against the per-sample loop, and what fewer steps cost.

    python benchmarks/extremal.py [--device cpu|cuda] [--threads 1] [--rounds 5] [--quick] [--picture PATH]

1. Cost, on ``benchmarks._common.SmallCNN`` at 32 px and torchvision's ``resnet18`` (``weights=None``) at 64 px,
   ``B`` images x ``A = 3`` areas, ``steps`` steps:
   - ``ExtremalPerturbation.masks`` against its *floor*: ``steps`` x (one forward and one backward, to the input, of
     the ``B x A`` perturbed images), the model frozen as in the explainer. The rest is the mask generator, the blur
     pyramid, the ranking (a sort) and the update;
   - the per-sample loop (one sample and one area per call, the same settings) against the batched call;
   - where TorchRay is installed (``pip install --no-deps torchray``; CC BY-NC, timed, never imported by the
     package), its ``extremal_perturbation`` called once per image (all areas at once), same steps, step and sigma.
   Timed in process CPU time on the CPU (synchronised wall time on CUDA) at a fixed thread count, one warm-up each,
   paired interleaved rounds (order rotated); printed: min and median of the per-round ratios.
2. Fewer steps, on the digits classifier of ``examples/digits.py`` (trained here for 3 epochs, 16 px), areas
   (0.05, 0.1, 0.2), 8 probe images, preserve game: each step budget against TorchRay's 800 (whose schedule our
   defaults reproduce at ``steps=800``): the largest deviation of a mask's mean from its area, the fraction of the
   clean-to-fully-blurred logit gap the soft masks keep, and the IoU of the top-``a`` pixels with the 800-step
   masks. With ``--picture``, the masks of 4 digits at 200 steps are drawn to a PNG.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import SmallCNN, paired, ratio
from lightning_xai._model_state import explanation_mode
from lightning_xai.explainers import ExtremalPerturbation, MeaningfulPerturbation
from lightning_xai.explainers.perturbation_masks import apply_pyramid, blur_pyramid

AREAS = (0.05, 0.1, 0.2)


def floor(model: nn.Module, inputs: Tensor, target: Tensor, steps: int) -> Callable[[], None]:
    """``steps`` forwards and backwards (to the input) of the ``B x A`` images: what the optimisation cannot avoid."""
    repeated = inputs.repeat_interleave(len(AREAS), dim=0)
    rows = target.repeat_interleave(len(AREAS))

    def run() -> None:
        with explanation_mode(model):
            for _ in range(steps):
                leaf = repeated.detach().requires_grad_(True)
                scores = model(leaf).gather(1, rows[:, None]).sum()
                torch.autograd.grad(scores, leaf)

    return run


def torchray_loop(
    model: nn.Module, inputs: Tensor, target: Tensor, steps: int, explainer: ExtremalPerturbation
) -> Callable[[], None] | None:
    """TorchRay's ``extremal_perturbation`` on each image (its areas in one call), our resolved step and sigma."""
    try:
        from torchray.attribution.extremal_perturbation import extremal_perturbation
    except ImportError:
        return None
    settings = explainer.resolved(inputs.shape[-2], inputs.shape[-1])

    def run() -> None:
        flags = [p.requires_grad for p in model.parameters()]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for sample in range(inputs.shape[0]):
                extremal_perturbation(
                    model,
                    inputs[sample : sample + 1],
                    int(target[sample]),
                    areas=list(AREAS),
                    max_iter=steps,
                    step=int(settings["step"]),
                    sigma=settings["sigma"],
                )
        for parameter, flag in zip(model.parameters(), flags, strict=True):  # TorchRay leaves them frozen
            parameter.requires_grad_(flag)

    return run


def cost_section(args: argparse.Namespace, device: torch.device) -> None:
    import torchvision

    torch.manual_seed(0)
    cases = [("SmallCNN", SmallCNN(), 32, 4, 20), ("resnet18", torchvision.models.resnet18(weights=None), 64, 2, 10)]
    if args.quick:
        cases = [("SmallCNN", SmallCNN(), 32, 2, 4)]
    for name, model, side, batch, steps in cases:
        model = model.to(device).eval()
        inputs = torch.randn(batch, 3, side, side, device=device)
        target = torch.arange(batch, device=device) % 10
        explainer = ExtremalPerturbation(areas=AREAS, steps=steps)

        def batched(
            model: nn.Module = model,
            inputs: Tensor = inputs,
            target: Tensor = target,
            explainer: ExtremalPerturbation = explainer,
        ) -> None:
            explainer.masks(model, inputs, target)

        def loop(
            model: nn.Module = model, inputs: Tensor = inputs, target: Tensor = target, steps: int = steps
        ) -> None:
            for sample in range(inputs.shape[0]):
                for area in AREAS:
                    ExtremalPerturbation(areas=(area,), steps=steps).masks(
                        model, inputs[sample : sample + 1], target[sample : sample + 1]
                    )

        functions = {"batched": batched, "floor": floor(model, inputs, target, steps), "loop": loop}
        torchray = torchray_loop(model, inputs, target, steps, explainer)
        if torchray is not None:
            functions["torchray"] = torchray
        times = paired(functions, device, args.rounds)
        print(f"1. cost: {name} {side} px, B={batch}, A={len(AREAS)}, steps={steps}, {args.rounds} rounds")
        pairs = [
            ("ExtremalPerturbation / floor (steps x fwd+bwd of B x A)", ("batched", "floor")),
            ("per-sample loop / ExtremalPerturbation (batched)", ("loop", "batched")),
        ]
        if "torchray" in times:
            pairs.append(("TorchRay (one call per image, areas together) / batched", ("torchray", "batched")))
        for label, (top, bottom) in pairs:
            low, median = ratio(times, top, bottom)
            print(f"  {label:<60s} min {low:6.2f}  median {median:6.2f}")
        per_step = statistics.median(times["batched"]) / steps
        print(f"  batched seconds per step (median): {per_step * 1000:.1f} ms")


def train_digits(epochs: int) -> tuple[nn.Module, Tensor, Tensor]:
    from examples.digits import DigitsClassifier, load_digits_tensors

    torch.manual_seed(0)
    images, labels = load_digits_tensors(16)
    model = DigitsClassifier(width=16)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))
    train, probe = order[:-200], order[-200:]
    for _ in range(epochs):
        model.train()
        for chunk in train.split(64):
            loss = F.cross_entropy(model(images[chunk]), labels[chunk])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    accuracy = float((model(images[probe]).argmax(1) == labels[probe]).float().mean())
    print(f"2. steps: digits classifier, 16 px, held-out accuracy {accuracy:.3f}")
    return model, images[probe[:8]], labels[probe[:8]]


def top_pixels(masks: Tensor, areas: tuple[float, ...]) -> Tensor:
    """Boolean ``(B, A, H*W)``: each mask's ``a H W`` highest pixels."""
    flat = masks.flatten(2)
    selected = torch.zeros_like(flat, dtype=torch.bool)
    for index, area in enumerate(areas):
        count = max(1, int(area * flat.shape[-1]))
        selected[:, index].scatter_(1, flat[:, index].topk(count, dim=1).indices, True)
    return selected


def preserved_logits(model: nn.Module, images: Tensor, labels: Tensor, masks: Tensor) -> Tensor:
    explainer = ExtremalPerturbation()
    max_blur = explainer.resolved(images.shape[-2], images.shape[-1])["max_blur"]
    pyramid = blur_pyramid(images, max_blur, 8)
    with torch.no_grad():
        scores = [
            model(apply_pyramid(pyramid, masks[:, index])).gather(1, labels[:, None])[:, 0]
            for index in range(masks.shape[1])
        ]
    return torch.stack(scores, dim=1)


def steps_section(args: argparse.Namespace) -> None:
    model, images, labels = train_digits(1 if args.quick else 3)
    budgets = (10, 20) if args.quick else (50, 100, 200, 400)
    reference_steps = 40 if args.quick else 800
    results: dict[int, tuple[Tensor, float]] = {}
    for steps in (*budgets, reference_steps):
        started = time.process_time()
        masks = ExtremalPerturbation(areas=AREAS, steps=steps).masks(model, images, labels)
        results[steps] = (masks, time.process_time() - started)
    reference = results[reference_steps][0]
    reference_top = top_pixels(reference, AREAS)
    clean = preserved_logits(model, images, labels, torch.ones_like(reference))
    blurred = preserved_logits(model, images, labels, torch.zeros_like(reference))
    print(
        f"  logit of the label (mean over images): clean {float(clean.mean()):.2f}, fully blurred "
        f"{float(blurred.mean()):.2f}; kept: the fraction of that gap a mask keeps, mean over images and areas"
    )
    for steps in (*budgets, reference_steps):
        masks, seconds = results[steps]
        area_error = float((masks.mean(dim=(2, 3)) - torch.tensor(AREAS)).abs().max())
        kept = float(((preserved_logits(model, images, labels, masks) - blurred) / (clean - blurred)).mean())
        top = top_pixels(masks, AREAS)
        iou = float(((top & reference_top).sum(-1) / (top | reference_top).sum(-1)).mean())
        print(
            f"  steps {steps:4d}: {seconds:6.2f} s CPU, max |mean - area| {area_error:.3f}, kept {kept:.2f}, "
            f"IoU of the top-a pixels with {reference_steps} steps' {iou:.2f}"
        )
    if args.picture:
        draw(model, images[:4], labels[:4], results[budgets[-2] if len(budgets) > 1 else budgets[0]][0][:4], args)


def draw(model: nn.Module, images: Tensor, labels: Tensor, masks: Tensor, args: argparse.Namespace) -> None:
    from torchvision.utils import save_image

    from lightning_xai import visualize

    meaningful = MeaningfulPerturbation()(model, images, labels)
    maps = torch.cat([masks, masks.mean(1, keepdim=True), meaningful], dim=1)  # (4, A + 2, H, W)
    columns = maps.shape[1]
    grid = visualize.heatmap_grid(
        images.repeat_interleave(columns, dim=0),
        maps.flatten(0, 1)[:, None],
        nrow=columns,
        explainer="Extremal a=0.05, 0.1, 0.2 | mean | Meaningful",
    )
    save_image(grid, args.picture)
    print(f"  picture: {args.picture} (rows: digits; columns: areas 0.05, 0.1, 0.2, their mean, Meaningful)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=None, help="paired rounds (default 5, --quick 2)")
    parser.add_argument("--quick", action="store_true", help="a few seconds of smoke test, not figures")
    parser.add_argument("--only", default="cost,steps", help="comma-separated sections")
    parser.add_argument("--picture", default=None, help="write the digits' masks to this PNG")
    args = parser.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 5)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device={device}, torch {torch.__version__}, threads={args.threads}")
    sections = set(args.only.split(","))
    if "cost" in sections:
        cost_section(args, device)
    if "steps" in sections:
        steps_section(args)


if __name__ == "__main__":
    main()
