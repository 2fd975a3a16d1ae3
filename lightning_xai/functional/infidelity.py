"""Infidelity (Yeh et al., "On the (In)fidelity and Sensitivity of Explanations", NeurIPS 2019, arXiv:1901.09392).

``INFD(phi, f, x) = E_I[(I^T phi - (f(x) - f(x - I)))^2]``, estimated with ``n_samples`` Gaussian perturbations
``I ~ N(0, noise_scale^2)`` per input element, exactly as ``captum.metrics.infidelity`` computes it for a
``perturb_func`` returning ``(I, x - I)``: ``a = sum(phi * I)``, ``b = f(x)[t] - f(x - I)[t]``, and the mean of
``(a - b)^2``; with ``normalize=True`` the attribution is first rescaled by the optimal
``beta = E[ab] / E[a^2]`` (as the authors' code always does), so the score does not depend on the map's scale.
A ``(B, 1, H, W)`` map is broadcast over the channels (every channel of a pixel gets the pixel's value).
Lower is better.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_xai._checks import check_in_range, check_positive_int
from lightning_xai._model_state import explanation_mode
from lightning_xai._scoring import ChunkSize, check_batch_size, score_in_chunks
from lightning_xai._targets import ScoreKind, target_scores
from lightning_xai._typing import TargetType
from lightning_xai.functional._common import check_metric_arguments, check_score, chunk_scores
from lightning_xai.functional.noise import perturbation_noise


def infidelity_from_terms(attribution_terms: Tensor, score_drops: Tensor, *, normalize: bool = True) -> Tensor:
    """Infidelity ``(B,)`` from ``a = sum(phi * I)`` and ``b = f(x) - f(x - I)``, both ``(B, n_samples)``.

    Example:
        >>> a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[2.0, 4.0]])
        >>> infidelity_from_terms(a, b, normalize=False).tolist(), infidelity_from_terms(a, b).tolist()
        ([2.5], [0.0])
    """
    a, b = attribution_terms.double(), score_drops.double()
    if not normalize:
        return (a - b).square().mean(dim=1).float()
    aa, ab, bb = a.square().mean(dim=1), (a * b).mean(dim=1), b.square().mean(dim=1)
    beta = torch.where(aa > 0, ab / aa.clamp_min(1e-300), 0.0)
    return (beta * beta * aa - 2 * beta * ab + bb).float()


def infidelity(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetType,
    *,
    n_samples: int = 10,
    noise_scale: float = 0.1,
    normalize: bool = True,
    score: ScoreKind = "logit",
    batch_size: ChunkSize = "auto",
    seed: int = 0,
) -> Tensor:
    """Per-sample infidelity ``(B,)`` of attributions under Gaussian input perturbations; lower is better.

    Args:
        model: the classifier (run in eval mode, without autograd).
        inputs: images ``(B, C, H, W)``.
        attributions: ``(B, 1, H, W)`` (broadcast over channels) or ``(B, C, H, W)``.
        target: class indices ``(B,)`` or a row-wise callable ``(outputs) -> scores``.
        n_samples: perturbations per image (Captum's ``n_perturb_samples``, default 10).
        noise_scale: standard deviation of the perturbation, in the inputs' units.
        normalize: rescale the attribution optimally first (Captum's ``normalize``; the authors' code).
        score: ``"logit"`` (default: the model output Captum's forward returns), ``"probability"`` or
            ``"log_probability"``.
        batch_size: perturbed images per forward pass.
        seed: seed of the perturbations, shared by every sample (see :mod:`~lightning_xai.functional.noise`).

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> x = torch.rand(2, 1, 4, 4)
        >>> exact = model[1].weight[[0, 1]].detach().view(2, 1, 4, 4)
        >>> bool(infidelity(model, x, exact, torch.tensor([0, 1]), normalize=False).max() < 1e-8)
        True
    """
    check_metric_arguments(inputs, attributions, target, method="infidelity")
    check_positive_int(n_samples, "n_samples")
    check_in_range(noise_scale, "noise_scale", 0.0, float("inf"), low_inclusive=False)
    check_batch_size(batch_size)
    check_score(score)
    device = inputs.device
    attributions = attributions.to(device=device, dtype=inputs.dtype).expand_as(inputs)
    noise = perturbation_noise(inputs, n_samples, noise_scale, "normal", seed)
    terms: list[Tensor] = []
    with explanation_mode(model, grad=False):

        def make_inputs(first: int, stop: int) -> Tensor:
            items = torch.arange(first, stop, device=device)
            rows, perturbation = items // n_samples, noise[items % n_samples]
            terms.append((attributions[rows] * perturbation).flatten(1).sum(dim=1).to(torch.float32))
            return inputs[rows] - perturbation

        def forward(chunk: Tensor, first: int, stop: int) -> Tensor:
            rows = torch.arange(first, stop, device=device) // n_samples
            return chunk_scores(model, chunk, target, rows, score, first=first == 0)

        perturbed = score_in_chunks(
            forward, make_inputs, inputs.shape[0] * n_samples, batch_size, model=model, like=inputs
        )
        with torch.no_grad():
            original = target_scores(model(inputs), target, score).to(torch.float32)
    attribution_terms = torch.cat(terms).view(-1, n_samples)
    return infidelity_from_terms(
        attribution_terms, original[:, None] - perturbed.view(-1, n_samples), normalize=normalize
    )
