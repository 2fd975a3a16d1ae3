"""Fidelity from MIF and LIF perturbation curves (Brocki & Chung, arXiv:2203.02928 and arXiv:2303.01538).

MIF removes the most important pixels first, LIF the least important first (both: attribution summed over
channels, stable ties by pixel index, all channels set to the baseline together, 0 by default as in the
reference, which sets normalised pixels to 0). Each curve holds the target's score at the ``steps + 1``
fractions ``k / steps`` and is divided by the unperturbed score (its first point, shared by both curves), as in
the reference notebook (``perturb.ipynb``: ``trapz(c / c[0], x)``). Then

``F = mean_i AUC_LIF,i - mean_i AUC_MIF,i``, ``CI95 = +- 1.96 sqrt(var AUC_MIF + var AUC_LIF) / sqrt(n)``.

Choices of this implementation (documented reconstruction where the reference differs):

* x runs over ``[0, 1]`` (the reference uses percent, 0..100, so its areas are 100 times larger), with
  ``steps + 1`` points including the fully perturbed image (the reference stops at 95 %, ``steps = 20``).
* The default score is the softmax probability of the target, which is always positive, so the normalisation
  is well defined; the reference's logit is available as ``score="logit"``. A sample whose unperturbed score is
  not above ``eps`` cannot be normalised: :func:`normalize_by_unperturbed` raises, and
  :class:`~lightning_xai.metrics.MIFLIFFidelity` leaves the sample out with a warning and counts it.

Higher F is better; a random map gives F close to 0.
"""

from __future__ import annotations

from torch import Tensor, nn

from lightning_xai._checks import check_positive_int
from lightning_xai._model_state import explanation_mode
from lightning_xai._scoring import ChunkSize, check_batch_size
from lightning_xai._targets import ScoreKind
from lightning_xai._typing import TargetType
from lightning_xai.functional._common import check_metric_arguments, check_score
from lightning_xai.functional.baselines import BaselineType, make_baseline
from lightning_xai.functional.perturbation_curves import (
    curve_auc,
    perturbation_curves,
    pixel_ranks,
    shared_baseline,
    step_counts,
)

#: Default smallest unperturbed score that a curve can be normalised by.
MIN_REFERENCE_SCORE = 1e-6


def mif_lif_curves(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetType,
    *,
    steps: int = 20,
    baseline: BaselineType = 0.0,
    score: ScoreKind = "probability",
    batch_size: ChunkSize = "auto",
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Raw (not normalised) MIF and LIF curves, each ``(B, steps + 1)``, at the fractions ``k / steps``.

    Args:
        model: the classifier (run in eval mode, without autograd).
        inputs: images ``(B, C, H, W)``.
        attributions: ``(B, 1, H, W)`` or ``(B, C, H, W)``; higher means more important.
        target: class indices ``(B,)`` or a row-wise callable ``(outputs) -> scores``.
        steps: number of equal fractions between 0 and 1 (the reference: 20, in 5 % steps).
        baseline: what removed pixels become (see :func:`~lightning_xai.functional.baselines.make_baseline`).
        score: ``"probability"`` (default), ``"logit"`` (the reference) or ``"log_probability"``.
        batch_size: perturbed images per forward pass.
        seed: seed of the ``"noise"`` baseline.

    Returns:
        ``(mif, lif)`` float32 curves; ``mif[:, 0] == lif[:, 0]`` is the unperturbed score.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> mif, lif = mif_lif_curves(model, torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))
        >>> mif.shape, lif.shape
        (torch.Size([2, 21]), torch.Size([2, 21]))
    """
    check_metric_arguments(inputs, attributions, target, method="mif_lif_curves")
    check_positive_int(steps, "steps")
    check_batch_size(batch_size)
    check_score(score)
    with explanation_mode(model, grad=False):
        substrate = make_baseline(inputs, baseline, seed=seed)
        attributions = attributions.to(inputs.device)
        counts = step_counts(inputs.shape[2] * inputs.shape[3], steps, inputs.device)
        mif = perturbation_curves(
            model,
            inputs,
            substrate,
            pixel_ranks(attributions, descending=True),
            counts,
            target,
            score=score,
            batch_size=batch_size,
            shared_replacement=shared_baseline(baseline),
        )
        # Both curves start at the unperturbed image and end at the baseline: LIF reuses MIF's end points.
        last = counts.shape[0] - 1
        lif = perturbation_curves(
            model,
            inputs,
            substrate,
            pixel_ranks(attributions, descending=False),
            counts,
            target,
            score=score,
            batch_size=batch_size,
            known={0: mif[:, 0], last: mif[:, last]},
        )
    return mif, lif


def has_positive_reference(curves: Tensor, eps: float = MIN_REFERENCE_SCORE) -> Tensor:
    """Which curves ``(B, K)`` start above ``eps`` and can be divided by their unperturbed score, ``(B,)`` bool."""
    return curves[:, 0] > eps


def normalize_by_unperturbed(curves: Tensor, eps: float = MIN_REFERENCE_SCORE) -> Tensor:
    """Divide each curve ``(B, K)`` by its first point, the unperturbed score; raise if one is not above ``eps``.

    Example:
        >>> import torch
        >>> normalize_by_unperturbed(torch.tensor([[0.5, 0.25, 0.0]])).tolist()
        [[1.0, 0.5, 0.0]]
    """
    valid = has_positive_reference(curves, eps)
    if not bool(valid.all()):
        bad = (~valid).nonzero().flatten().tolist()
        raise ValueError(
            f"MIF/LIF curves are normalised by the unperturbed score, which must be > {eps}; samples {bad[:10]} "
            f"have {curves[~valid, 0][:10].tolist()}. Use score='probability' (always positive) or leave them out."
        )
    return curves / curves[:, :1]


def mif_lif_fidelity(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetType,
    *,
    steps: int = 20,
    baseline: BaselineType = 0.0,
    score: ScoreKind = "probability",
    batch_size: ChunkSize = "auto",
    seed: int = 0,
    eps: float = MIN_REFERENCE_SCORE,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample fidelity ``AUC_LIF - AUC_MIF`` and both AUCs of the normalised curves, each ``(B,)``.

    Same arguments as :func:`mif_lif_curves`; raises ``ValueError`` if a sample's unperturbed score is not
    above ``eps``. Higher fidelity is better.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> x, maps = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
        >>> fidelity, mif_auc, lif_auc = mif_lif_fidelity(model, x, maps, torch.tensor([0, 1]), steps=4)
        >>> torch.allclose(fidelity, lif_auc - mif_auc)
        True
    """
    mif, lif = mif_lif_curves(
        model,
        inputs,
        attributions,
        target,
        steps=steps,
        baseline=baseline,
        score=score,
        batch_size=batch_size,
        seed=seed,
    )
    mif_auc = curve_auc(normalize_by_unperturbed(mif, eps))
    lif_auc = curve_auc(normalize_by_unperturbed(lif, eps))
    return lif_auc - mif_auc, mif_auc, lif_auc
