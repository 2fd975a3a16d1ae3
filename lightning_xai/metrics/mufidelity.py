"""MuFidelity metric (Bhatt et al., IJCAI 2020, arXiv:2005.00631) over :mod:`~lightning_xai.functional.mufidelity`."""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor, nn

from lightning_xai._checks import check_choice, check_in_range, check_positive_int
from lightning_xai._targets import ScoreKind
from lightning_xai._typing import TargetType
from lightning_xai.functional._common import check_score
from lightning_xai.functional.baselines import BaselineType, check_baseline
from lightning_xai.functional.mufidelity import CORRELATIONS, Correlation, mufidelity
from lightning_xai.metrics.base import FaithfulnessMetric


class MuFidelity(FaithfulnessMetric):
    """Correlation between the attribution of random pixel subsets and the score drop their removal causes.

    Each of ``n_samples`` random subsets removes every cell of a ``grid_size x grid_size`` grid with probability
    ``subset_percent`` (set to the baseline); per image, the sums of the attribution over the removed pixels are
    correlated with ``f(x) - f(x_removed)`` (Xplique's ``MuFidelity``; see
    :mod:`lightning_xai.functional.mufidelity`). The subsets are drawn from ``seed`` at every update and shared
    by the samples, so a sample's score depends only on the sample, its map and the seed (not on the chunk size,
    the rest of the batch or the processes).

    **Higher is better** (``higher_is_better = True``), range ``[-1, 1]``; an undefined correlation counts as 0.
    ``summary()`` gives ``mufidelity`` and ``mufidelity_stderr``.

    Args:
        grid_size: cells per side (Xplique: 9).
        subset_percent: probability that a cell is removed (Xplique: 0.2).
        n_samples: random subsets per image (Xplique: 200).
        baseline: what removed pixels become (default 0).
        correlation: ``"pearson"`` (default, the paper) or ``"spearman"`` (Xplique).
        score: ``"logit"`` (default, Xplique's raw output), ``"probability"`` or ``"log_probability"``.
        batch_size: perturbed images per forward pass.
        seed: seed of the subsets.
        kwargs: passed to ``torchmetrics.Metric``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> metric = MuFidelity(grid_size=2, n_samples=16)
        >>> metric.update(model, torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4), torch.tensor([0, 2]))
        >>> bool(-1 <= metric.compute() <= 1)
        True
    """

    name = "mufidelity"
    higher_is_better = True

    def __init__(
        self,
        grid_size: int = 9,
        subset_percent: float = 0.2,
        n_samples: int = 200,
        baseline: BaselineType = 0.0,
        correlation: Correlation = "pearson",
        score: ScoreKind = "logit",
        batch_size: int | Literal["auto"] = "auto",
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        check_positive_int(grid_size, "grid_size")
        check_in_range(subset_percent, "subset_percent", 0.0, 1.0, low_inclusive=False)
        check_positive_int(n_samples, "n_samples", minimum=2)
        check_baseline(baseline)
        check_choice(correlation, "correlation", CORRELATIONS)
        check_score(score)
        check_positive_int(seed, "seed", minimum=0)
        self.grid_size = grid_size
        self.subset_percent = subset_percent
        self.n_samples = n_samples
        self.baseline = baseline
        self.correlation = correlation
        self.score = score
        self.seed = seed

    def _sample_scores(self, model: nn.Module, inputs: Tensor, attributions: Tensor, target: TargetType) -> Tensor:
        return mufidelity(
            model,
            inputs,
            attributions,
            target,
            grid_size=self.grid_size,
            subset_percent=self.subset_percent,
            n_samples=self.n_samples,
            baseline=self.baseline,
            correlation=self.correlation,
            score=self.score,
            batch_size=self.batch_size,
            seed=self.seed,
        )
