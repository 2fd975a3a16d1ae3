"""Max-sensitivity of an explainer (Yeh et al., NeurIPS 2019, arXiv:1901.09392), as ``captum.metrics.sensitivity_max``.

``SENS_max(phi, f, x, r) = max_{||delta||_inf <= r} ||phi(x + delta) - phi(x)|| / ||phi(x)||``, estimated with
``n_samples`` perturbations drawn uniformly from the L-infinity ball of radius ``radius`` (Captum's
``default_perturb_func``), the explainer re-run on every perturbed input, the Frobenius norm by default and the
same division by ``||phi(x)||`` (replaced by 1 when it is 0). Lower is better (a stabler explanation).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from lightning_xai._checks import check_image_batch, check_in_range, check_positive_int
from lightning_xai._model_state import explanation_mode
from lightning_xai._scoring import ChunkSize, check_batch_size, score_in_chunks
from lightning_xai._targets import check_class_range, check_target
from lightning_xai._typing import TargetType
from lightning_xai.functional.noise import perturbation_noise

#: ``explainer(model, inputs, target) -> attributions``, e.g. any :class:`~lightning_xai.explainers.Explainer`.
ExplainerFn = Callable[[nn.Module, Tensor, TargetType], Tensor]
NormOrder = str | float


def check_norm_order(norm_ord: object) -> None:
    """Raise unless ``norm_ord`` is ``"fro"`` or a positive number (``math.inf`` for the max norm)."""
    if norm_ord == "fro":
        return
    if isinstance(norm_ord, bool) or not isinstance(norm_ord, (int, float)) or not norm_ord > 0:
        raise ValueError(f"`norm_ord` must be 'fro' or a positive number (math.inf allowed), got {norm_ord!r}.")


def _norms(values: Tensor, norm_ord: NormOrder) -> Tensor:
    order = 2.0 if norm_ord == "fro" else float(norm_ord)
    return torch.linalg.vector_norm(values.flatten(1).double(), ord=order, dim=1)


def max_sensitivity(
    explainer: ExplainerFn,
    model: nn.Module,
    inputs: Tensor,
    target: TargetType,
    *,
    radius: float = 0.02,
    n_samples: int = 10,
    norm_ord: NormOrder = "fro",
    batch_size: ChunkSize = "auto",
    seed: int = 0,
    attributions: Tensor | None = None,
) -> Tensor:
    """Per-sample max-sensitivity ``(B,)`` of ``explainer`` at ``inputs``; lower is better.

    Args:
        explainer: ``explainer(model, inputs, target) -> attributions``; called on chunks of perturbed inputs
            (with the rows' targets), so its result for a sample must not depend on the rest of the batch.
        model: the classifier handed to the explainer.
        inputs: images ``(B, C, H, W)``.
        target: class indices ``(B,)`` or a row-wise callable ``(outputs) -> scores``.
        radius: half-width of the uniform L-infinity perturbation (Captum's ``perturb_radius``, 0.02).
        n_samples: perturbations per image (Captum's ``n_perturb_samples``, 10).
        norm_ord: ``"fro"`` (default) or a positive number, the norm of the explanation difference.
        batch_size: perturbed images explained per call of ``explainer``.
        seed: seed of the perturbations, shared by every sample (see :mod:`~lightning_xai.functional.noise`).
        attributions: ``explainer(model, inputs, target)`` when already computed; computed when None.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> def constant_explainer(model, inputs, target):
        ...     return torch.ones(inputs.shape[0], 1, *inputs.shape[2:])
        >>> max_sensitivity(constant_explainer, model, torch.rand(2, 1, 4, 4), torch.tensor([0, 1])).tolist()
        [0.0, 0.0]
    """
    check_image_batch(inputs, method="max_sensitivity")
    check_target(target, inputs.shape[0])
    check_in_range(radius, "radius", 0.0, math.inf, low_inclusive=False)
    check_positive_int(n_samples, "n_samples")
    check_norm_order(norm_ord)
    check_batch_size(batch_size)
    reference, scores = perturbed_explanation_scores(
        explainer,
        model,
        inputs,
        target,
        perturbation_noise(inputs, n_samples, radius, "uniform", seed),
        lambda rows, _perturbed, explanations, _reference: _norms(explanations - _reference, norm_ord),
        batch_size=batch_size,
        attributions=attributions,
    )
    reference_norms = _norms(reference, norm_ord)
    reference_norms = torch.where(reference_norms == 0, torch.ones_like(reference_norms), reference_norms)
    return (scores / reference_norms[:, None]).to(torch.float32).amax(dim=1)


#: ``score(rows, perturbed_inputs, explanations, reference) -> (n,)`` for a chunk of ``n`` perturbed inputs:
#: ``rows`` the sample each was built from, ``reference`` those samples' explanations at the unperturbed inputs.
ChunkScore = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def perturbed_explanation_scores(
    explainer: ExplainerFn,
    model: nn.Module,
    inputs: Tensor,
    target: TargetType,
    noise: Tensor,
    score: ChunkScore,
    *,
    batch_size: ChunkSize = "auto",
    attributions: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Re-explain ``inputs + noise[s]`` for every sample and perturbation and score each against the reference.

    The engine shared by the sensitivity and stability metrics (MaxSensitivity, AvgSensitivity,
    LocalLipschitzEstimate, the relative stabilities): the ``B * S`` perturbed inputs (sample-major, item
    ``b * S + s``) are built on the device and explained ``batch_size`` at a time under ``no_grad`` (the explainer
    turns autograd back on for itself), so only one chunk exists at a time.

    Args:
        explainer: ``explainer(model, inputs, target) -> attributions``.
        model: the classifier.
        inputs: images ``(B, C, H, W)``, already checked.
        target: class indices ``(B,)`` or a row-wise callable.
        noise: the ``S`` perturbations ``(S, C, H, W)``, added to every sample (see
            :func:`~lightning_xai.functional.noise.perturbation_noise`).
        score: ``score(rows, perturbed, explanations, reference) -> (n,)`` float64 scores of a chunk.
        batch_size: perturbed inputs explained per call.
        attributions: the explanations at ``inputs`` when already computed; ``explainer(model, inputs, target)``
            when None.

    Returns:
        ``(reference, scores)``: the reference explanations ``(B, ...)`` and the scores ``(B, S)``.
    """
    if not callable(explainer):
        raise TypeError(f"`explainer` must be callable as explainer(model, inputs, target), got {explainer!r}.")
    device = inputs.device
    n_samples = noise.shape[0]
    with explanation_mode(model, grad=False):
        outputs = model(inputs)
    if isinstance(target, Tensor):
        check_class_range(outputs, target)
    reference = explainer(model, inputs, target) if attributions is None else attributions
    reference = reference.detach().to(device)

    def make_inputs(first: int, stop: int) -> Tensor:
        items = torch.arange(first, stop, device=device)
        return inputs[items // n_samples] + noise[items % n_samples]

    def forward(chunk: Tensor, first: int, stop: int) -> Tensor:
        rows = torch.arange(first, stop, device=device) // n_samples
        rows_target = target[rows] if isinstance(target, Tensor) else target
        explanations = explainer(model, chunk, rows_target).detach()
        if explanations.shape[1:] != reference.shape[1:]:
            raise ValueError(
                f"`explainer` returned maps of shape {tuple(explanations.shape[1:])} for perturbed inputs but "
                f"{tuple(reference.shape[1:])} for the inputs."
            )
        with explanation_mode(model, grad=False):
            return score(rows, chunk, explanations, reference[rows]).double()

    scores = score_in_chunks(
        forward, make_inputs, inputs.shape[0] * n_samples, batch_size, model=model, like=inputs, purpose=explainer
    )
    return reference, scores.view(-1, n_samples)
