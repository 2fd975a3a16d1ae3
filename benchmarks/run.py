"""Every ratio the README's Performance table reports, from one run: ``python benchmarks/run.py --device cpu|cuda``.

Method: each contender is timed in process CPU time (``time.process_time``, all threads of this process) on the
CPU, in wall time after a device synchronisation on CUDA; the thread count is fixed (``--threads``, 1 by
default); after one warm-up call each, rounds are paired and interleaved (every round times every contender,
in an order rotated from round to round) and a ratio is computed per round, so drift of the machine hits
both sides of it. Printed: the minimum and the median of the per-round ratios over ``--rounds`` (>= 5) rounds.

Sections:

1. ``DeletionAUC`` with the default chunk (``batch_size="auto"``) against Quantus ``PixelFlipping`` on the same
   model, maps and steps (48 steps, ``features_in_step = C H W / 48``), and against the *best-chunk floor*: the
   bare forwards of the same pre-built perturbed images at the candidate chunk of the lowest median time, at 32,
   64 and 128 px. (Also printed: against the fastest candidate of each round, the minimum of several noisy
   timings, which leans below the floor by the noise alone.)
2. Deletion + insertion (zero baseline) against TorchCAM's ``DeletionInsertionMetric``, per forwarded image.
3. ROAD at 64 px with a smooth (bilinearly upsampled 4x4) map against its forward floor (the same imputed
   images, pre-built, forwarded at the best chunk), on a ResNet-style model (torchvision ``resnet18``,
   ``weights=None``) and on the small CNN.
4. The digits fit (4 epochs) with and without ``ExplanationMonitor(GradCAM())``, and the README quickstart
   monitor (Grad-CAM and IG, deletion and insertion, 16-sample probe) per validation epoch, timed by a callback
   around every validation epoch after the sanity check: the CPU it adds to the validation epoch against its
   explainers' and metrics' own work (the same calls on the probe, made directly), and the validation epoch with
   curves on against the same monitor with curves off (heatmaps on in both).
5. ``benchmarks/fidelity.py`` and ``benchmarks/explainers.py`` (their own ratios), unless ``--quick``.
6. ``benchmarks/extremal.py``: ExtremalPerturbation against its floor (steps x forward and backward of the B x A
   perturbed images) and the per-sample loop against the batched call; then fewer steps against TorchRay's 800.

``--quick`` shrinks every section (one size, a few images, 2 rounds) to a few seconds: a smoke test, not figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import SmallCNN, paired, ratio, synchronize  # noqa: E402
from benchmarks.fidelity import prebuilt_chunks, quantus_pixel_flipping, torchcam_deletion_insertion  # noqa: E402
from lightning_xai._scoring import CANDIDATES  # noqa: E402
from lightning_xai.functional.perturbation_curves import pixel_ranks  # noqa: E402
from lightning_xai.functional.road import ROAD_PERCENTAGES, default_tolerance, linear_imputation, road_curves  # noqa: E402
from lightning_xai.metrics import DeletionAUC, InsertionAUC  # noqa: E402


def show(label: str, values: tuple[float, float], goal: str) -> None:
    print(f"  {label:<64s} min {values[0]:6.3f}  median {values[1]:6.3f}   (goal {goal})")


def floor_function(model: nn.Module, images: Tensor, chunk: int) -> Callable[[], None]:
    pieces = list(images.split(chunk))

    def run() -> None:
        with torch.no_grad():
            for piece in pieces:
                torch.softmax(model(piece), dim=1)

    return run


# ---------------------------------------------------------------- 1. deletion
def deletion_section(args: argparse.Namespace, device: torch.device) -> None:
    steps = 48
    sizes = [(32, 4)] if args.quick else [(32, 16), (64, 8), (128, 4)]
    print(
        f"\n1. DeletionAUC (default chunk 'auto') against Quantus PixelFlipping and the best-chunk floor, {steps} steps"
    )
    for side, batch in sizes:
        generator = torch.Generator().manual_seed(0)
        model = SmallCNN().to(device).eval()
        inputs = torch.randn(batch, 3, side, side, generator=generator).to(device)
        maps = torch.rand(batch, 1, side, side, generator=generator).to(device)
        with torch.no_grad():
            target = model(inputs).argmax(dim=1)
        metric = DeletionAUC(steps=steps)

        def ours(
            metric: DeletionAUC = metric,
            model: nn.Module = model,
            inputs: Tensor = inputs,
            maps: Tensor = maps,
            target: Tensor = target,
        ) -> None:
            metric.reset()
            metric.update(model, inputs, maps, target)

        images = torch.cat(prebuilt_chunks(inputs, maps, steps, 10**9))
        candidates = CANDIDATES["cuda" if device.type == "cuda" else "cpu"]
        contenders: dict[str, Callable[[], Any]] = {"ours": ours}
        contenders.update({f"floor{c}": floor_function(model, images, c) for c in candidates})
        quantus = quantus_pixel_flipping(model, inputs, maps, target, steps)
        if quantus is not None:
            contenders["quantus"] = quantus
        times = paired(contenders, device, args.rounds)
        floors = [f"floor{c}" for c in candidates]
        best = min(floors, key=lambda name: statistics.median(times[name]))
        print(
            f"  {side} px, {batch} images: ours forwards {batch * steps + 1} images (chunk chosen: "
            f"{_chosen_chunk(model, inputs)}), the floor {images.shape[0]}, Quantus {batch * steps}; "
            f"best floor chunk {best[5:]}"
        )
        if quantus is not None:
            show(f"{side} px  DeletionAUC / Quantus PixelFlipping", ratio(times, "ours", "quantus"), "<= 1.0")
        show(f"{side} px  DeletionAUC / best-chunk floor", ratio(times, "ours", best), "<= 1.05")
        show(f"{side} px  DeletionAUC / fastest floor chunk of each round", ratio(times, "ours", floors), "-")


def _chosen_chunk(model: nn.Module, inputs: Tensor, purpose: str = "") -> int | None:
    """The chunk ``"auto"`` settled on for this model, input shape and purpose (None while it still probes)."""
    from lightning_xai._scoring import tuned_chunk, tuning_key

    return tuned_chunk(tuning_key(model, inputs, purpose))


# ---------------------------------------------------------------- 2. TorchCAM
class _Counting(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.images = 0

    def forward(self, x: Tensor) -> Tensor:
        self.images += x.shape[0]
        return self.model(x)


def torchcam_section(args: argparse.Namespace, device: torch.device) -> None:
    steps, batch, side = (8, 4, 32) if args.quick else (48, 16, 32)
    generator = torch.Generator().manual_seed(0)
    model = _Counting(SmallCNN().to(device).eval())
    inputs = torch.randn(batch, 3, side, side, generator=generator).to(device)
    maps = torch.rand(batch, 1, side, side, generator=generator).to(device)
    with torch.no_grad():
        target = model(inputs).argmax(dim=1)
    deletion, insertion = DeletionAUC(steps=steps), InsertionAUC(steps=steps, baseline=0.0)

    def ours() -> None:
        deletion.reset()
        insertion.reset()
        deletion.update(model, inputs, maps, target)
        insertion.update(model, inputs, maps, target)

    theirs, label = torchcam_deletion_insertion(model, inputs, maps, steps, 64)
    forwarded = {}
    for name, function in (("ours", ours), ("torchcam", theirs)):
        model.images = 0
        function()
        forwarded[name] = model.images
    times = paired({"ours": ours, "torchcam": theirs}, device, args.rounds)
    per_forward = {name: [t / forwarded[name] for t in ts] for name, ts in times.items()}
    print(
        f"\n2. deletion + insertion (zero baseline) against {label}'s DeletionInsertionMetric, {side} px, {batch} "
        f"images, {steps} steps: ours forwards {forwarded['ours']} images, TorchCAM {forwarded['torchcam']}"
    )
    show("per call", ratio(times, "ours", "torchcam"), "-")
    show("per forwarded image", ratio(per_forward, "ours", "torchcam"), "<= 1.0")


# ---------------------------------------------------------------- 3. ROAD
def road_section(args: argparse.Namespace, device: torch.device) -> None:
    import torchvision

    side, batch = (32, 2) if args.quick else (64, 4)
    print(f"\n3. ROAD at {side} px, smooth map, {len(ROAD_PERCENTAGES)} percentages x MoRF/LeRF, {batch} images")
    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand(batch, 3, side, side, generator=generator).to(device)
    maps = F.interpolate(torch.rand(batch, 1, 4, 4, generator=generator), size=(side, side), mode="bilinear")
    maps = maps.to(device)
    models = {
        "ResNet-style (resnet18)": torchvision.models.resnet18(weights=None, num_classes=10),
        "small CNN": SmallCNN(),
    }
    ranks = pixel_ranks(maps)
    points = len(ROAD_PERCENTAGES)
    counts = torch.tensor([int(side * side * p) for p in ROAD_PERCENTAGES], device=device)
    removed = []
    for row in range(batch):
        morf = ranks[row][None] < counts[:, None]
        lerf = ranks[row][None] >= (side * side - counts)[:, None]
        removed.append(torch.cat([morf, lerf]).view(2 * points, 1, side, side))
    removed_all = torch.cat(removed)
    rows = torch.arange(batch, device=device).repeat_interleave(2 * points)
    imputed = linear_imputation(inputs[rows], removed_all, tolerance=default_tolerance(0.01))
    for label, network in models.items():
        model = network.to(device).eval()
        with torch.no_grad():
            target = model(inputs).argmax(dim=1)

        def ours(model: nn.Module = model, target: Tensor = target) -> None:
            road_curves(model, inputs, maps, target)

        # steady state, as from the second epoch or so of a monitor: "auto" settles its chunk on the first calls
        for _ in range(20):
            if _chosen_chunk(model, inputs, "road") is not None:
                break
            ours()
        candidates = CANDIDATES["cuda" if device.type == "cuda" else "cpu"]
        contenders: dict[str, Callable[[], Any]] = {"ours": ours}
        contenders.update({f"floor{c}": floor_function(model, imputed, c) for c in candidates})
        times = paired(contenders, device, args.rounds)
        goal = "<= 1.3" if "ResNet" in label else "<= 2"
        floors = [f"floor{c}" for c in candidates]
        best = min(floors, key=lambda name: statistics.median(times[name]))
        chosen = _chosen_chunk(model, inputs, "road")
        against_floor = f"{label}: ROAD (chunk {chosen}) / forward floor (best chunk, {best[5:]})"
        show(against_floor, ratio(times, "ours", best), goal)
        show(f"{label}: ROAD / fastest floor chunk of each round", ratio(times, "ours", floors), "-")


# ---------------------------------------------------------------- 4. the monitor in a fit
class _ValidationClock:
    """A callback that sums the CPU (or synchronised wall) time of the validation epochs after the sanity check.

    It runs after the monitor and flushes the logger at both ends, so the records an epoch queued (TensorBoard's
    writer thread checksums every byte of its images) are written inside the epoch that logged them, in every config.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.clock = time.perf_counter if device.type == "cuda" else time.process_time
        self.total = 0.0
        self.started = 0.0

    def make(self) -> Any:
        import lightning as L

        clock = self

        class Clock(L.Callback):
            def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
                if trainer.logger is not None and hasattr(trainer.logger.experiment, "flush"):
                    trainer.logger.experiment.flush()  # the training epoch's records are not this epoch's
                synchronize(clock.device)
                clock.started = clock.clock()

            def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
                if trainer.logger is not None and hasattr(trainer.logger.experiment, "flush"):
                    trainer.logger.experiment.flush()  # the writer thread's checksums count in their own epoch
                synchronize(clock.device)
                if not trainer.sanity_checking:
                    clock.total += clock.clock() - clock.started

        return Clock()


def monitor_section(args: argparse.Namespace, device: torch.device) -> None:
    import logging

    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from examples.digits import DigitsClassifier, DigitsDataModule
    from lightning_xai import ExplanationMonitor
    from lightning_xai.explainers import GradCAM, IntegratedGradients

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    epochs = 1 if args.quick else 4
    accelerator = "gpu" if device.type == "cuda" else "cpu"

    def explainers() -> dict[str, Any]:
        return {"GradCAM": GradCAM(), "IG": IntegratedGradients(n_steps=16)}

    def metrics() -> list[Any]:
        return [DeletionAUC(steps=16), InsertionAUC(steps=16)]

    def quickstart(heatmaps: bool, curves: bool) -> Callable[[], Any]:
        return lambda: ExplanationMonitor(
            explainer=explainers(), metrics=metrics(), probe_size=16, log_heatmaps=heatmaps, log_curves=curves
        )

    configs: dict[str, Callable[[], Any] | None] = {
        "none": None,
        "gradcam": lambda: ExplanationMonitor(GradCAM()),
        "quick_pictures": quickstart(True, True),
        "quick_no_curves": quickstart(True, False),
        "quick_no_pictures": quickstart(False, False),
    }
    validation: dict[str, list[float]] = {name: [] for name in configs}

    # The explainers' and metrics' own work per monitored epoch: each explainer on the 16-sample probe, each
    # metric updated with its maps and computed, called directly (target given, no callback around them).
    datamodule = DigitsDataModule()
    datamodule.setup("fit")
    probe = torch.stack([datamodule.val_set[i][0] for i in range(16)]).to(device)
    work_model = DigitsClassifier().to(device).eval()
    with torch.no_grad():
        probe_target = work_model(probe).argmax(dim=1)
    work_explainers = explainers()

    def work() -> None:
        for _ in range(epochs):
            for explainer in work_explainers.values():
                maps = explainer(work_model, probe, probe_target)
                for metric in metrics():
                    metric.to(device)
                    metric.update(work_model, probe, maps, probe_target)
                    metric.compute()

    with tempfile.TemporaryDirectory() as logdir:

        def fit(name: str, factory: Callable[[], Any] | None) -> Callable[[], None]:
            def run() -> None:
                L.seed_everything(0, verbose=False)
                clock = _ValidationClock(device)
                trainer = L.Trainer(
                    max_epochs=epochs,
                    accelerator=accelerator,
                    devices=1,
                    logger=TensorBoardLogger(logdir, name="bench"),
                    callbacks=([factory()] if factory else []) + [clock.make()],
                    enable_progress_bar=False,
                    enable_model_summary=False,
                    enable_checkpointing=False,
                )
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
                validation[name].append(clock.total)

            return run

        functions: dict[str, Callable[[], Any]] = {name: fit(name, factory) for name, factory in configs.items()}
        functions["work"] = work
        times = paired(functions, device, args.rounds)
    for name in validation:
        times[f"val_{name}"] = validation[name][1:]  # the first run is the warm-up
    times["added"] = [b - a for a, b in zip(times["val_none"], times["val_quick_pictures"], strict=True)]
    print(f"\n4. digits fit, {epochs} epochs, with and without a monitor")
    show("ExplanationMonitor(GradCAM()) fit / fit without it", ratio(times, "gradcam", "none"), "<= 1.05")
    show("quickstart monitor fit / fit without it", ratio(times, "quick_pictures", "none"), "-")
    per_epoch = {name: statistics.median(times[name]) / epochs for name in times}
    curves = per_epoch["val_quick_pictures"] - per_epoch["val_quick_no_curves"]
    heatmaps = per_epoch["val_quick_no_curves"] - per_epoch["val_quick_no_pictures"]
    print(
        "  quickstart monitor, per validation epoch (median): validation without monitor "
        f"{per_epoch['val_none']:.3f} s, added by the monitor {per_epoch['added']:.3f} s, of which its explainers' "
        f"and metrics' own work {per_epoch['work']:.3f} s; curves {curves:.3f} s, heatmaps {heatmaps:.3f} s"
    )
    show("quickstart: added CPU per validation epoch / its own work", ratio(times, "added", "work"), "<= 1.5")
    show(
        "quickstart: validation epoch, curves on / curves off",
        ratio(times, "val_quick_pictures", "val_quick_no_curves"),
        "<= 1.25",
    )
    show(
        "quickstart: validation epoch, pictures on / pictures off",
        ratio(times, "val_quick_pictures", "val_quick_no_pictures"),
        "-",
    )


def peers_section(args: argparse.Namespace) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    threads = ["--threads", str(args.threads)]
    for script, extra in (("fidelity.py", ["--repeats", str(args.rounds)]), ("explainers.py", ["--repeats", "5"])):
        print(f"\n5. benchmarks/{script}")
        command = [sys.executable, str(ROOT / "benchmarks" / script), "--device", args.device, *threads, *extra]
        subprocess.run(command, check=True, env=env)


def extremal_section(args: argparse.Namespace) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    print("\n6. benchmarks/extremal.py", flush=True)
    command = [sys.executable, str(ROOT / "benchmarks" / "extremal.py"), "--device", args.device]
    command += ["--threads", str(args.threads), "--rounds", str(args.rounds), *(["--quick"] if args.quick else [])]
    subprocess.run(command, check=True, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (fixed for every timing)")
    parser.add_argument("--rounds", type=int, default=None, help="paired rounds (default 5, --quick 2)")
    parser.add_argument("--quick", action="store_true", help="a few seconds of smoke test, not figures")
    parser.add_argument(
        "--only", default="deletion,torchcam,road,monitor,peers,extremal", help="comma-separated sections to run"
    )
    args = parser.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 5)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sections = set(args.only.split(","))
    print(
        f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else os.cpu_count()} "
        f"{'GPU' if device.type == 'cuda' else 'CPUs'}), torch {torch.__version__}, threads={args.threads}, "
        f"rounds={args.rounds}, clock={'wall' if device.type == 'cuda' else 'process CPU time'}"
    )
    started = time.perf_counter()
    if "deletion" in sections:
        deletion_section(args, device)
    if "torchcam" in sections:
        torchcam_section(args, device)
    if "road" in sections:
        road_section(args, device)
    if "monitor" in sections:
        monitor_section(args, device)
    if "peers" in sections and not args.quick:
        peers_section(args)
    if "extremal" in sections:
        extremal_section(args)
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
