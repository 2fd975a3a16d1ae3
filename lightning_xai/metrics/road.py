"""ROAD metric (Rong et al., ICML 2022, arXiv:2202.00449) over :mod:`~lightning_xai.functional.road`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_xai._checks import check_in_range, check_positive_int
from lightning_xai._targets import ScoreKind
from lightning_xai._typing import TargetType
from lightning_xai.functional._common import check_score
from lightning_xai.functional.road import ROAD_PERCENTAGES, check_percentages, road_combined, road_curves
from lightning_xai.metrics.base import FaithfulnessMetric, _cat_state


class ROAD(FaithfulnessMetric):
    """RemOve And Debias: scores after removing pixels with noisy linear imputation, most and least relevant first.

    At each percentage ``p`` the ``floor(p * H * W)`` most relevant (MoRF) or least relevant (LeRF) pixels are
    removed and imputed from their neighbours (the 8-neighbour linear system of ``NoisyLinearImputer``, solved
    on the device by batched conjugate gradients, plus ``noise * N(0, 1)``), and the target's score is recorded.
    See :mod:`lightning_xai.functional.road` for the sign convention and the choices made.

    Headline value and direction: ``road = mean_p (LeRF_p - MoRF_p) / 2`` per sample (``pytorch-grad-cam``'s
    ``ROADCombined``), averaged over samples; **higher is better** (``higher_is_better = True``: removing the
    least relevant pixels should keep the score, removing the most relevant should destroy it; a random map gives
    about 0). ``summary()`` also gives ``road_morf`` (mean MoRF score, lower is better) and ``road_lerf`` (mean
    LeRF score, higher is better); ``curves()`` gives the mean ``"morf"`` and ``"lerf"`` scores against the
    removed fraction.

    Args:
        percentages: fractions of pixels removed, each in ``(0, 1)`` (default: the paper's 0.1 ... 0.9).
        noise: standard deviation of the imputation noise in the inputs' units (the reference: 0.01 in [0, 1]
            pixel space; pass ``0.01 / std`` for normalised inputs).
        score: ``"probability"`` (default), ``"logit"`` or ``"log_probability"`` of the target class.
        tolerance: relative residual at which the conjugate-gradient solve stops; None (default) chooses it from
            the noise, as :func:`~lightning_xai.functional.road_curves` does (``max(noise / 10, 1e-6)``: 1e-3 for
            the default noise 0.01, which moves imputed pixels by at most about 2e-3, a fifth of the noise's standard
            deviation; see :func:`~lightning_xai.functional.road.default_tolerance`). ``1e-6`` matches a direct
            solve to about 1e-5 in float32 (the default before, kept by passing it).
        max_iterations: conjugate-gradient iteration cap (None: ``4 * (H + W) + 100``).
        batch_size: imputed images solved and scored together.
        seed: seed of the imputation noise (one noise image per update, shared by the samples).
        kwargs: passed to ``torchmetrics.Metric``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> metric = ROAD(percentages=[0.25, 0.5])
        >>> metric.update(model, torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4), torch.tensor([0, 2]))
        >>> sorted(metric.summary())
        ['road', 'road_lerf', 'road_morf', 'road_stderr']
    """

    name = "road"
    higher_is_better = True
    morf_sum: Tensor
    lerf_sum: Tensor
    morf_curves: list[Tensor]
    lerf_curves: list[Tensor]

    def __init__(
        self,
        percentages: Sequence[float] = ROAD_PERCENTAGES,
        noise: float = 0.01,
        score: ScoreKind = "probability",
        tolerance: float | None = None,
        max_iterations: int | None = None,
        batch_size: int | Literal["auto"] = "auto",
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        check_percentages(percentages)
        check_in_range(noise, "noise", 0.0, math.inf)
        check_score(score)
        if tolerance is not None:
            check_in_range(tolerance, "tolerance", 0.0, 1.0, low_inclusive=False)
        if max_iterations is not None:
            check_positive_int(max_iterations, "max_iterations")
        check_positive_int(seed, "seed", minimum=0)
        self.percentages = tuple(float(p) for p in percentages)
        self.noise = noise
        self.score = score
        self.tolerance = tolerance
        self.max_iterations = max_iterations
        self.seed = seed
        self.add_state("morf_sum", default=torch.zeros(len(self.percentages)), dist_reduce_fx="sum")
        self.add_state("lerf_sum", default=torch.zeros(len(self.percentages)), dist_reduce_fx="sum")
        self.add_state("morf_curves", default=[], dist_reduce_fx="cat")  # (N, len(percentages)), for the bands
        self.add_state("lerf_curves", default=[], dist_reduce_fx="cat")

    def _sample_scores(self, model: nn.Module, inputs: Tensor, attributions: Tensor, target: TargetType) -> Tensor:
        morf, lerf = road_curves(
            model,
            inputs,
            attributions,
            target,
            percentages=self.percentages,
            noise=self.noise,
            score=self.score,
            batch_size=self.batch_size,
            seed=self.seed,
            tolerance=self.tolerance,
            max_iterations=self.max_iterations,
        )
        self.morf_sum += morf.sum(dim=0).to(self.morf_sum)
        self.lerf_sum += lerf.sum(dim=0).to(self.lerf_sum)
        self.morf_curves.append(morf.detach().to(torch.float32))
        self.lerf_curves.append(lerf.detach().to(torch.float32))
        return road_combined(morf, lerf)

    def summary(self) -> dict[str, Tensor]:
        """``road``, ``road_stderr``, ``road_morf`` and ``road_lerf`` (means over samples and percentages)."""
        with self.sync_context():
            values = self.per_sample()
            mean = self._mean(values)
            count = values.numel()
            return {
                self.name: mean,
                f"{self.name}_stderr": self._standard_error(),
                "road_morf": self.morf_sum.mean() / count,
                "road_lerf": self.lerf_sum.mean() / count,
            }

    def curves(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Mean scores against the removed fraction: ``{"morf": (x, y), "lerf": (x, y)}``, x in ``(0, 1)``."""
        with self.sync_context():
            count = self.per_sample().numel()
            if count == 0:
                raise RuntimeError("ROAD.curves() was called before any update().")
            morf, lerf = self.morf_sum / count, self.lerf_sum / count
        x = torch.tensor(self.percentages, device=morf.device)
        return {"morf": (x, morf), "lerf": (x, lerf)}

    def curve_samples(self) -> dict[str, Tensor]:
        """The per-sample scores ``{"morf": (N, P), "lerf": (N, P)}`` at the ``P`` percentages (``"cat"`` states)."""
        size = len(self.percentages)
        return {
            key: _cat_state(state, self.device).view(-1, size)
            for key, state in (("morf", self.morf_curves), ("lerf", self.lerf_curves))
        }

    def curve_axes(self) -> tuple[str, str]:
        """``("fraction of pixels removed and imputed", "<score> of the target class")``."""
        return "fraction of pixels removed and imputed", f"{self.score.replace('_', ' ')} of the target class"
