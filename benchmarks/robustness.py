"""Robustness and randomisation metrics against Quantus 0.6 on the same work, as ratios measured in one run.

Each metric scores the same model (``SmallCNN``), batch and explainer (our ``Saliency``, handed to Quantus through
a numpy ``explain_func``) with the same perturbations (handed to Quantus through its ``perturb_func``), so the
two compute the same numbers; the script prints the largest absolute difference of the per-sample scores next
to the time ratio ours / Quantus (goal: < 1).

    python benchmarks/robustness.py                    # CPU
    python benchmarks/robustness.py --device cuda --batch 32 --image-size 32 --samples 10
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import SmallCNN
from benchmarks.fidelity import clock_name, timed
from lightning_xai.explainers import Saliency
from lightning_xai.functional.noise import perturbation_noise
from lightning_xai.metrics import (
    AvgSensitivity,
    FaithfulnessMetric,
    LocalLipschitzEstimate,
    ModelRandomisation,
    RandomLogit,
    RelativeInputStability,
    RelativeOutputStability,
    RelativeRepresentationStability,
)


def quantus_case(
    model: nn.Module, inputs: Tensor, target: Tensor, explainer: Callable, device: torch.device
) -> dict[str, Any]:
    def explain(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, **kwargs: Any) -> np.ndarray:
        batch = torch.as_tensor(inputs, dtype=torch.float32, device=device)
        return explainer(model, batch, torch.as_tensor(targets, device=device).long()).cpu().numpy()

    return {
        "model": model,
        "x_batch": inputs.cpu().numpy(),
        "y_batch": target.cpu().numpy(),
        "a_batch": explainer(model, inputs, target).cpu().numpy(),
        "explain_func": explain,
        "device": str(device),
        "batch_size": inputs.shape[0],
    }


def handed(noise: Tensor) -> Callable[..., np.ndarray]:
    """A Quantus ``perturb_func`` that adds our perturbation ``s`` at its ``s``-th call (restarted per metric call)."""
    flat = noise.flatten(1).cpu().numpy()
    state = {"step": 0}

    def perturb(arr: np.ndarray, indices: np.ndarray, **kwargs: Any) -> np.ndarray:
        step = state["step"] % flat.shape[0]
        state["step"] += 1
        return arr + flat[step][None, :]

    return perturb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8, help="perturbations per image")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import quantus

    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = SmallCNN().to(device).eval()
    generator = torch.Generator().manual_seed(1)
    inputs = torch.rand(args.batch, 3, args.image_size, args.image_size, generator=generator).to(device)
    with torch.no_grad():
        target = model(inputs).argmax(1)
    explainer = Saliency()
    case = quantus_case(model, inputs, target, explainer, device)
    maps = torch.as_tensor(case["a_batch"], device=device)
    n, chunk = args.samples, args.batch * args.samples
    common = {"nr_samples": n, "disable_warnings": True}
    no_flip = {"return_nan_when_prediction_changes": False}
    uniform = perturbation_noise(inputs, n, 0.2, "uniform", 0)
    normal = perturbation_noise(inputs, n, 0.1, "normal", 0)
    layers = ["features.8"]
    pairs: dict[str, tuple[FaithfulnessMetric, Callable[[], Any]]] = {
        "AvgSensitivity": (
            AvgSensitivity(explainer, n_samples=n, batch_size=chunk),
            quantus.AvgSensitivity(perturb_func=handed(uniform), **common),
        ),
        "LocalLipschitzEstimate": (
            LocalLipschitzEstimate(explainer, n_samples=n, batch_size=chunk),
            quantus.LocalLipschitzEstimate(perturb_func=handed(normal), normalise=False, **common),
        ),
        "RelativeInputStability": (
            RelativeInputStability(explainer, n_samples=n, keep_prediction=False, batch_size=chunk),
            quantus.RelativeInputStability(perturb_func=handed(uniform), **no_flip, **common),
        ),
        "RelativeOutputStability": (
            RelativeOutputStability(explainer, n_samples=n, keep_prediction=False, batch_size=chunk),
            quantus.RelativeOutputStability(perturb_func=handed(uniform), **no_flip, **common),
        ),
        "RelativeRepresentationStability": (
            RelativeRepresentationStability(
                explainer, layers=layers, n_samples=n, keep_prediction=False, batch_size=chunk
            ),
            quantus.RelativeRepresentationStability(
                perturb_func=handed(uniform), layer_names=layers, **no_flip, **common
            ),
        ),
        "ModelRandomisation": (
            ModelRandomisation(explainer, seed=1, batch_size=args.batch),
            quantus.MPRT(seed=0, abs=True, normalise=False, disable_warnings=True),
        ),
        "RandomLogit": (
            RandomLogit(explainer, similarity="spearman", batch_size=args.batch),
            quantus.RandomLogit(
                num_classes=10,
                seed=42,
                similarity_func=quantus.similarity_func.correlation_spearman,
                normalise=False,
                disable_warnings=True,
            ),
        ),
    }
    np.random.seed(42)  # Quantus' RandomLogit draws: hand the same other classes to ours for the parity figure
    draws = torch.as_tensor(np.random.randint(0, 9, args.batch), device=device)
    off_target = draws + (draws >= target).long()
    results = {}
    for name, (ours, reference) in pairs.items():

        def run_ours(ours: FaithfulnessMetric = ours) -> Tensor:
            ours.reset()
            ours.update(model, inputs, maps, target)
            return ours.per_sample()

        def run_quantus(reference: Any = reference) -> Any:
            return reference(**case)

        times = timed({"ours": run_ours, "quantus": run_quantus}, device, args.repeats)
        if name == "RandomLogit":
            from lightning_xai.functional.randomisation import random_logit

            got = random_logit(explainer, model, inputs, target, similarity="spearman", off_target=off_target)
        else:
            got = run_ours()
        expected = run_quantus()
        if isinstance(expected, dict):  # MPRT: per-layer scores; compare ours per step
            expected.pop("original")
            assert isinstance(ours, ModelRandomisation)
            got = torch.cat(ours.layer_scores).T.flatten()
            expected = np.concatenate([expected[step] for step in ours.steps or []])
        ours_values, quantus_values = got.double().cpu().numpy(), np.asarray(expected, dtype=np.float64)
        diff = float(np.max(np.abs(ours_values - quantus_values)))
        relative = float(np.max(np.abs(ours_values - quantus_values) / np.maximum(np.abs(quantus_values), 1e-12)))
        results[name] = {
            "ours_s": round(times["ours"], 4),
            "quantus_s": round(times["quantus"], 4),
            "ratio": round(times["ours"] / times["quantus"], 3),
            "max_abs_diff": diff,
            "max_rel_diff": relative,
        }
        print(f"{name:34s} ours {times['ours']:.3f} s  quantus {times['quantus']:.3f} s  ratio "
              f"{results[name]['ratio']:.3f}  max |diff| {diff:.2e} (relative {relative:.1e})", flush=True)  # fmt: skip
    print(json.dumps({"device": str(device), "clock": clock_name(device), **vars(args), "results": results}))


if __name__ == "__main__":
    main()
