"""MIF/LIF fidelity metric (Brocki & Chung, arXiv:2203.02928, 2303.01538) over :mod:`~lightning_xai.functional`."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from lightning_utilities.core.rank_zero import rank_zero_warn
from torch import Tensor, nn

from lightning_xai._checks import check_in_range, check_positive_int
from lightning_xai._targets import ScoreKind
from lightning_xai._typing import TargetType
from lightning_xai.functional._common import check_score
from lightning_xai.functional.baselines import BaselineType, check_baseline
from lightning_xai.functional.mif_lif import (
    MIN_REFERENCE_SCORE,
    has_positive_reference,
    mif_lif_curves,
    normalize_by_unperturbed,
)
from lightning_xai.functional.perturbation_curves import curve_auc, curve_x
from lightning_xai.metrics.base import FaithfulnessMetric, _cat_state


class MIFLIFFidelity(FaithfulnessMetric):
    """Fidelity ``F = AUC_LIF - AUC_MIF``: the area between the least- and most-important-first curves.

    MIF removes the most important pixels first, LIF the least important first (attribution summed over
    channels, ties by the lower pixel index, all channels set to the baseline), in ``steps`` equal fractions;
    each curve is divided by the sample's unperturbed score, as the reference notebook does, and integrated by
    the trapezoid rule with x in ``[0, 1]`` (the reference uses 0..100, so its areas are 100 times larger). The
    difference cancels what perturbation artifacts do to both curves. See
    :mod:`lightning_xai.functional.mif_lif` for the choices of this reconstruction.

    Normalisation guard: the default score is the target's softmax probability, always positive. A sample whose
    unperturbed score is not above ``eps`` (possible with ``score="logit"``) cannot be normalised: it is left out
    with a warning, counted in ``summary()["mif_lif_skipped"]``, never turned into NaN.

    **Higher is better** (``higher_is_better = True``; a random map gives about 0). The standard error is the
    reference's ``sqrt(var AUC_MIF + var AUC_LIF) / sqrt(n)`` (so the 95 % interval is ``F +- 1.96 x stderr``).
    ``summary()`` gives ``mif_lif_fidelity``, ``mif_lif_fidelity_stderr``, ``mif_auc`` (lower is better),
    ``lif_auc`` (higher is better) and ``mif_lif_skipped``; ``curves()`` gives the mean normalised ``"mif"`` and
    ``"lif"`` curves.

    Args:
        steps: number of equal fractions (the reference: 20 steps of 5 %).
        baseline: what removed pixels become (default 0, the reference's mid-grey of a [-1, 1] normalisation).
        score: ``"probability"`` (default), ``"logit"`` (the reference) or ``"log_probability"``.
        eps: smallest unperturbed score a curve is divided by.
        batch_size: perturbed images per forward pass.
        seed: seed of a ``"noise"`` baseline.
        kwargs: passed to ``torchmetrics.Metric``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> metric = MIFLIFFidelity(steps=4)
        >>> metric.update(model, torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 2]))
        >>> sorted(metric.summary())
        ['lif_auc', 'mif_auc', 'mif_lif_fidelity', 'mif_lif_fidelity_stderr', 'mif_lif_skipped']
    """

    name = "mif_lif_fidelity"
    higher_is_better = True
    mif_auc: list[Tensor]
    lif_auc: list[Tensor]
    mif_curve_sum: Tensor
    mif_curves: list[Tensor]
    lif_curves: list[Tensor]
    lif_curve_sum: Tensor
    skipped: Tensor

    def __init__(
        self,
        steps: int = 20,
        baseline: BaselineType = 0.0,
        score: ScoreKind = "probability",
        eps: float = MIN_REFERENCE_SCORE,
        batch_size: int | Literal["auto"] = "auto",
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        check_positive_int(steps, "steps")
        check_baseline(baseline)
        check_score(score)
        check_in_range(eps, "eps", 0.0, math.inf)
        check_positive_int(seed, "seed", minimum=0)
        self.steps = steps
        self.baseline = baseline
        self.score = score
        self.eps = eps
        self.seed = seed
        self.add_state("mif_auc", default=[], dist_reduce_fx="cat")
        self.add_state("lif_auc", default=[], dist_reduce_fx="cat")
        self.add_state("mif_curve_sum", default=torch.zeros(steps + 1), dist_reduce_fx="sum")
        self.add_state("lif_curve_sum", default=torch.zeros(steps + 1), dist_reduce_fx="sum")
        self.add_state("mif_curves", default=[], dist_reduce_fx="cat")  # (N, steps + 1), for the bands
        self.add_state("lif_curves", default=[], dist_reduce_fx="cat")
        self.add_state("skipped", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def _sample_scores(self, model: nn.Module, inputs: Tensor, attributions: Tensor, target: TargetType) -> Tensor:
        mif, lif = mif_lif_curves(
            model,
            inputs,
            attributions,
            target,
            steps=self.steps,
            baseline=self.baseline,
            score=self.score,
            batch_size=self.batch_size,
            seed=self.seed,
        )
        valid = has_positive_reference(mif, self.eps)
        if not bool(valid.all()):
            bad = (~valid).nonzero().flatten().tolist()
            rank_zero_warn(
                f"MIFLIFFidelity left out samples {bad[:10]} of this batch: their unperturbed {self.score} is not "
                f"above eps={self.eps}, so their curves cannot be normalised (use score='probability')."
            )
            self.skipped += int((~valid).sum())
            mif, lif = mif[valid], lif[valid]
        mif, lif = normalize_by_unperturbed(mif, self.eps), normalize_by_unperturbed(lif, self.eps)
        mif_auc, lif_auc = curve_auc(mif), curve_auc(lif)
        self.mif_auc.append(mif_auc)
        self.lif_auc.append(lif_auc)
        self.mif_curve_sum += mif.sum(dim=0).to(self.mif_curve_sum)
        self.lif_curve_sum += lif.sum(dim=0).to(self.lif_curve_sum)
        self.mif_curves.append(mif.detach().to(torch.float32))
        self.lif_curves.append(lif.detach().to(torch.float32))
        return lif_auc - mif_auc

    def _mean(self, values: Tensor) -> Tensor:
        if values.numel() == 0 and int(self.skipped) > 0:
            raise RuntimeError(
                f"MIFLIFFidelity has no sample to average: all {int(self.skipped)} were left out because their "
                f"unperturbed score was not above eps={self.eps}."
            )
        return super()._mean(values)

    def _standard_error(self) -> Tensor:
        mif, lif = _cat_state(self.mif_auc, self.device), _cat_state(self.lif_auc, self.device)
        if mif.numel() < 2:
            return torch.zeros((), device=mif.device)
        return (mif.var(unbiased=True) + lif.var(unbiased=True)).sqrt() / math.sqrt(mif.numel())

    def summary(self) -> dict[str, Tensor]:
        """``mif_lif_fidelity``, its ``_stderr``, ``mif_auc``, ``lif_auc`` and ``mif_lif_skipped``, synchronised."""
        with self.sync_context():
            fidelity = self._mean(self.per_sample())
            return {
                self.name: fidelity,
                f"{self.name}_stderr": self._standard_error(),
                "mif_auc": _cat_state(self.mif_auc, self.device).mean(),
                "lif_auc": _cat_state(self.lif_auc, self.device).mean(),
                "mif_lif_skipped": self.skipped.clone(),
            }

    def curves(self) -> dict[str, tuple[Tensor, Tensor]]:
        """The mean normalised curves ``{"mif": (x, y), "lif": (x, y)}``, x = ``k / steps`` in ``[0, 1]``."""
        with self.sync_context():
            count = self.per_sample().numel()
            if count == 0:
                raise RuntimeError("MIFLIFFidelity.curves() needs at least one (normalisable) sample.")
            mif, lif = self.mif_curve_sum / count, self.lif_curve_sum / count
        x = curve_x(self.steps, mif.device)
        return {"mif": (x, mif), "lif": (x, lif)}

    def curve_samples(self) -> dict[str, Tensor]:
        """The per-sample normalised curves ``{"mif": (N, steps + 1), "lif": ...}`` (``"cat"`` states)."""
        return {
            key: _cat_state(state, self.device).view(-1, self.steps + 1)
            for key, state in (("mif", self.mif_curves), ("lif", self.lif_curves))
        }

    def curve_axes(self) -> tuple[str, str]:
        """``("fraction of pixels removed (...)", "<score> / unperturbed <score>")``."""
        score = self.score.replace("_", " ")
        return "fraction of pixels removed (MIF most, LIF least relevant first)", f"{score} / unperturbed {score}"
