"""What the deletion/insertion metrics cost, measured side by side in one run on one model, batch, maps and steps.

(a) ``DeletionAUC.update`` against the *forward-pass floor*: the same number of forwards (``B * (steps + 1)``)
    of already-built perturbed images in the same chunks (``batch_size``), so the ratio is the overhead of
    ranking, building the perturbed images on the device and scoring (goal: <= 1.10).
(b) Peers on the same work: Quantus ``PixelFlipping`` (numpy, one step of the whole batch per forward; with
    ``features_in_step = C * H * W / steps`` it makes ``steps`` forwards of ``B`` images) and TorchCAM's
    ``DeletionInsertionMetric`` (deletion and insertion in one pass; the real class when ``torchcam`` imports,
    which needs no torchvision for ``torchcam.metrics``, else a faithful local re-creation of its job loop),
    against our ``DeletionAUC`` + ``InsertionAUC`` with TorchCAM's zero baseline.
(c) Peak memory of ``DeletionAUC.update`` at ``steps=16`` and ``steps=256``: on CUDA
    ``torch.cuda.max_memory_allocated``; on the CPU the growth of the process' peak resident set (``VmHWM`` of
    ``/proc/self/status``, reset through ``/proc/self/clear_refs``) in a fresh subprocess per setting, with glibc's
    mmap threshold fixed so freed tensors leave the resident set, next to the size of one perturbed chunk.

    python benchmarks/fidelity.py                         # CPU
    python benchmarks/fidelity.py --device cuda --batch 64 --image-size 64 --steps 128
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import SmallCNN, synchronize
from lightning_xai.functional.perturbation_curves import pixel_ranks, step_counts
from lightning_xai.metrics import DeletionAUC, InsertionAUC


def timed(functions: dict[str, Callable[[], Any]], device: torch.device, repeats: int) -> dict[str, float]:
    """Fastest time of each function over ``repeats`` rounds, run interleaved after one warm-up each.

    On CUDA: wall time. On the CPU: the process' CPU time (all threads), which a busy shared machine does not
    inflate the way it inflates wall time. Interleaving puts drift on every contender alike; the minimum is the
    least disturbed run.
    """
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    for function in functions.values():
        function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            synchronize(device)
            start = clock()
            function()
            synchronize(device)
            times[name].append(clock() - start)
    return {name: min(values) for name, values in times.items()}


def clock_name(device: torch.device) -> str:
    return "wall time" if device.type == "cuda" else "process CPU time"


def make_case(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    model = SmallCNN().to(device).eval()
    inputs = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=generator).to(device)
    maps = torch.rand(args.batch, 1, args.image_size, args.image_size, generator=generator).to(device)
    with torch.no_grad():
        target = model(inputs).argmax(dim=1)
    return model, inputs, maps, target


# ---------------------------------------------------------------- (a) overhead over the forward-pass floor
def prebuilt_chunks(inputs: Tensor, maps: Tensor, steps: int, batch_size: int) -> list[Tensor]:
    """The deletion images of every (sample, step), built once, cut into the metric's chunks."""
    ranks = pixel_ranks(maps)
    counts = step_counts(ranks.shape[1], steps, inputs.device)
    images = []
    for b in range(inputs.shape[0]):
        removed = (ranks[b][None] < counts[:, None]).view(-1, 1, *inputs.shape[2:])
        images.append(torch.where(removed, torch.zeros_like(inputs[b]), inputs[b]))
    everything = torch.cat(images)
    return list(everything.split(batch_size))


def forward_floor(model: nn.Module, chunks: list[Tensor]) -> None:
    with torch.no_grad():
        for chunk in chunks:
            torch.softmax(model(chunk), dim=1)


# ---------------------------------------------------------------- (b) peers
def quantus_pixel_flipping(
    model: nn.Module, inputs: Tensor, maps: Tensor, target: Tensor, steps: int
) -> Callable[[], Any] | None:
    try:
        import quantus
    except ImportError:
        return None
    if not hasattr(np, "trapz"):  # quantus 0.6 calls np.trapz, removed in NumPy 2.4
        np.trapz = np.trapezoid
    # Quantus flattens (C, H, W) but checks features_in_step against H * W: both must divide for `steps` forwards.
    features, pixels = inputs[0].numel(), inputs.shape[2] * inputs.shape[3]
    if features % steps or pixels % (features // steps):
        return None
    metric = quantus.PixelFlipping(
        features_in_step=features // steps, perturb_baseline=0.0, normalise=False, abs=False, disable_warnings=True
    )
    x, a, y = inputs.cpu().numpy(), maps.expand_as(inputs).cpu().numpy(), target.cpu().numpy()

    def run() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return metric(
                model=model,
                x_batch=x,
                y_batch=y,
                a_batch=a,
                channel_first=True,
                softmax=True,
                device=str(inputs.device),
                batch_size=inputs.shape[0],
            )

    return run


class _FixedMaps:
    """A stand-in TorchCAM extractor returning precomputed maps, so only the metric's loop is timed."""

    def __init__(self, model: nn.Module, maps: Tensor) -> None:
        self.model = model
        self.maps = maps[:, 0]

    def __call__(
        self, class_idx: Any = None, scores: Any = None, normalized: bool = True, **kwargs: Any
    ) -> list[Tensor]:
        return [self.maps]

    def fuse_cams(self, cams: list[Tensor]) -> Tensor:
        return cams[0]

    @contextmanager
    def _hooks_off(self) -> Iterator[None]:
        yield


def local_torchcam_deletion_insertion(
    model: nn.Module, inputs: Tensor, maps: Tensor, steps: int, batch_size: int
) -> tuple[Tensor, Tensor]:
    """A re-creation of torchcam 0.5 ``DeletionInsertionMetric``'s job loop (used when torchcam is not importable).

    One job per (sample, curve, point), listed in Python; each chunk gathers its rows by Python lists and writes
    the scores back one by one; the all-baseline image is shared by deletion's last and insertion's first point.
    """
    with torch.inference_mode():
        scores = torch.softmax(model(inputs), dim=-1)
        target = scores.argmax(dim=-1)
        original = scores.gather(1, target[:, None]).squeeze(1)
        order = torch.argsort(maps.flatten(1), dim=1, descending=True, stable=True)
        ranks = torch.argsort(order, dim=1)
        positions = ranks.shape[1]
        step_size = (positions + steps - 1) // steps
        counts = [*range(0, positions, step_size), positions]
        fractions = torch.tensor(counts, dtype=torch.float32, device=inputs.device) / positions
        deletion = original.new_empty((inputs.shape[0], len(counts)))
        insertion = original.new_empty((inputs.shape[0], len(counts)))
        deletion[:, 0], insertion[:, -1] = original, original
        interior = [(curve, point, count) for point, count in enumerate(counts[1:-1], 1) for curve in range(2)]
        jobs = [
            (sample, curve, point, count)
            for sample in range(inputs.shape[0])
            for curve, point, count in [(2, len(counts) - 1, positions), *interior]
        ]
        baseline = torch.zeros_like(inputs)
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            rows = torch.tensor([job[0] for job in chunk], device=inputs.device)
            perturb = torch.tensor([job[3] for job in chunk], device=inputs.device)
            relevant = ranks[rows] < perturb[:, None]
            keep = torch.where(
                torch.tensor([job[1] for job in chunk], device=inputs.device)[:, None] == 1, relevant, ~relevant
            )
            perturbed = torch.where(keep[:, None], inputs.flatten(2)[rows], baseline.flatten(2)[rows]).reshape(
                -1, *inputs.shape[1:]
            )
            selected = torch.softmax(model(perturbed), dim=-1).gather(1, target[rows][:, None]).squeeze(1)
            for score, (sample, curve, point, _) in zip(selected, chunk, strict=True):
                if curve == 0:
                    deletion[sample, point] = score
                elif curve == 1:
                    insertion[sample, point] = score
                else:
                    deletion[sample, point] = score
                    insertion[sample, 0] = score
        return torch.trapezoid(deletion, fractions, dim=1), torch.trapezoid(insertion, fractions, dim=1)


def torchcam_deletion_insertion(
    model: nn.Module, inputs: Tensor, maps: Tensor, steps: int, batch_size: int
) -> tuple[Callable[[], Any], str]:
    try:
        from torchcam.metrics import DeletionInsertionMetric
    except ImportError:
        return (lambda: local_torchcam_deletion_insertion(model, inputs, maps, steps, batch_size)), "local re-creation"

    def run() -> Any:
        metric = DeletionInsertionMetric(
            _FixedMaps(model, maps), lambda logits: torch.softmax(logits, dim=-1), steps=steps, batch_size=batch_size
        )
        metric.update(inputs)
        return metric.summary()

    return run, "torchcam " + __import__("torchcam").__version__


# ---------------------------------------------------------------- (c) peak memory
def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_memory_of_update(args: argparse.Namespace, device: torch.device, steps: int) -> int:
    """Bytes of peak memory growth during one ``DeletionAUC(steps).update`` (see the module docstring)."""
    model, inputs, maps, target = make_case(args, device)
    metric = DeletionAUC(steps=steps, batch_size=args.batch_size)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        metric.update(model, inputs, maps, target)
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set to the current one
    before = _rss_bytes()
    metric.update(model, inputs, maps, target)
    return _peak_rss_bytes() - before


def peak_memory(args: argparse.Namespace, device: torch.device, steps: int) -> int:
    if device.type == "cuda":
        return peak_memory_of_update(args, device, steps)
    command = [sys.executable, __file__, *sys.argv[1:], "--probe-memory", str(steps)]
    # A fixed mmap threshold stops glibc from keeping freed large blocks on its heap (its dynamic threshold),
    # so the resident set follows the live tensors instead of the allocator's history.
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=environment).stdout
    return int(json.loads(output.strip().splitlines()[-1])["peak_bytes"])


# ---------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--batch", type=int, default=16, help="images per update")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=48, help="48 lets Quantus take the same steps on 3 channels")
    parser.add_argument("--batch-size", type=int, default=64, help="perturbed images per forward (the chunk)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--probe-memory", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.probe_memory:
        print(json.dumps({"peak_bytes": peak_memory_of_update(args, device, args.probe_memory)}))
        return

    model, inputs, maps, target = make_case(args, device)
    steps, chunk = args.steps, args.batch_size
    forwards = args.batch * (steps + 1)
    print(
        f"device={device} threads={torch.get_num_threads()} batch={args.batch} image=3x{args.image_size}x"
        f"{args.image_size} steps={steps} batch_size={chunk} forwards per deletion update={forwards}"
    )

    deletion = DeletionAUC(steps=steps, batch_size=chunk)

    def ours_deletion() -> None:
        deletion.reset()
        deletion.update(model, inputs, maps, target)

    chunks = prebuilt_chunks(inputs, maps, steps, chunk)
    insertion = InsertionAUC(steps=steps, baseline=0.0, batch_size=chunk)

    def ours_both() -> None:
        deletion.reset()
        insertion.reset()
        deletion.update(model, inputs, maps, target)
        insertion.update(model, inputs, maps, target)

    torchcam_run, torchcam_label = torchcam_deletion_insertion(model, inputs, maps, steps, chunk)
    contenders = {
        "ours": ours_deletion,
        "floor": lambda: forward_floor(model, chunks),
        "both": ours_both,
        "torchcam": torchcam_run,
    }
    quantus_run = quantus_pixel_flipping(model, inputs, maps, target, steps)
    if quantus_run is not None:
        contenders["quantus"] = quantus_run
        same_chunk = DeletionAUC(steps=steps, batch_size=args.batch)  # Quantus forwards B images at a time

        def ours_quantus_chunk() -> None:
            same_chunk.reset()
            same_chunk.update(model, inputs, maps, target)

        contenders["ours_batch_chunk"] = ours_quantus_chunk
    times = timed(contenders, device, args.repeats)
    ours, floor = times["ours"], times["floor"]
    print(f"\n(a) DeletionAUC against the forward-pass floor (fastest of interleaved runs, {clock_name(device)})")
    print(f"    DeletionAUC.update      {ours * 1e3:9.1f} ms")
    print(f"    forwards of pre-built   {floor * 1e3:9.1f} ms")
    print(f"    ratio                   {ours / floor:9.3f}   (goal <= 1.10)")

    print("\n(b) peers on the same model, images, maps and steps")
    if quantus_run is None:
        print("    Quantus PixelFlipping: not run (quantus missing, or no features_in_step gives the same steps)")
    else:
        quantus_time = times["quantus"]
        print(f"    Quantus PixelFlipping   {quantus_time * 1e3:9.1f} ms   ({steps} forwards of {args.batch} images)")
        same = times["ours_batch_chunk"]
        print(f"    DeletionAUC, chunk={args.batch:<4d}  {same * 1e3:9.1f} ms   (Quantus' forward size)")
        print(f"    ours / Quantus          {ours / quantus_time:9.3f}   (chunk {chunk})")
        print(f"    ours / Quantus          {same / quantus_time:9.3f}   (chunk {args.batch})")
    both, torchcam_time = times["both"], times["torchcam"]
    torchcam_forwards = args.batch * (2 * steps - 1)
    print(
        f"    TorchCAM del.+ins.      {torchcam_time * 1e3:9.1f} ms   ({torchcam_forwards} forwards; {torchcam_label})"
    )
    print(f"    ours deletion+insertion {both * 1e3:9.1f} ms   ({2 * forwards} forwards)")
    print(
        f"    ours / TorchCAM         {both / torchcam_time:9.3f}   per forward: "
        f"{(both / (2 * forwards)) / (torchcam_time / torchcam_forwards):.3f}"
    )

    print("\n(c) peak memory of DeletionAUC.update")
    method = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS growth (VmHWM), fresh process"
    chunk_bytes = chunk * inputs[0].numel() * inputs.element_size()
    small, large = peak_memory(args, device, 16), peak_memory(args, device, 256)
    print(f"    method: {method}; one perturbed chunk = {chunk_bytes / 2**20:.2f} MiB")
    print(f"    steps=16   {small / 2**20:9.2f} MiB")
    print(f"    steps=256  {large / 2**20:9.2f} MiB")
    everything = args.batch * 257 * inputs[0].numel() * inputs.element_size()
    print(
        f"    ratio      {large / max(small, 1):9.3f}   (the {args.batch * 257} perturbed images of steps=256 at once: "
        f"{everything / 2**20:.1f} MiB)"
    )


if __name__ == "__main__":
    main()
