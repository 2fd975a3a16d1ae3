"""Infidelity metric (Yeh et al., NeurIPS 2019, arXiv:1901.09392) over :mod:`~lightning_xai.functional.infidelity`."""

from __future__ import annotations

import math
from typing import Any, Literal

from torch import Tensor, nn

from lightning_xai._checks import check_in_range, check_positive_int
from lightning_xai._targets import ScoreKind
from lightning_xai._typing import TargetType
from lightning_xai.functional._common import check_score
from lightning_xai.functional.infidelity import infidelity
from lightning_xai.metrics.base import FaithfulnessMetric


class Infidelity(FaithfulnessMetric):
    """Expected squared error between ``I^T phi`` and the score change ``f(x) - f(x - I)`` for random ``I``.

    ``I ~ N(0, noise_scale^2)`` per input element, ``n_samples`` per image; the same computation as
    ``captum.metrics.infidelity`` with a perturbation function returning ``(I, x - I)`` (see
    :mod:`lightning_xai.functional.infidelity`). With ``normalize=True`` (default, as the authors' code) the map
    is optimally rescaled first, so the score does not depend on its scale. The ``n_samples`` perturbations are
    drawn from ``seed`` at every update and shared by the samples, so a sample's score depends only on the
    sample, its map and the seed (not on the chunk size, the rest of the batch or the processes).

    **Lower is better** (``higher_is_better = False``). ``summary()`` gives ``infidelity`` and
    ``infidelity_stderr``.

    Args:
        n_samples: perturbations per image (Captum: 10).
        noise_scale: standard deviation of the perturbation, in the inputs' units.
        normalize: rescale the attribution optimally (``beta = E[ab] / E[a^2]``) before the error.
        score: ``"logit"`` (default), ``"probability"`` or ``"log_probability"`` of the target class.
        batch_size: perturbed images per forward pass.
        seed: seed of the perturbations.
        kwargs: passed to ``torchmetrics.Metric``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> metric = Infidelity()
        >>> metric.update(model, torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4), torch.tensor([0, 2]))
        >>> bool(metric.compute() >= 0)
        True
    """

    name = "infidelity"
    higher_is_better = False

    def __init__(
        self,
        n_samples: int = 10,
        noise_scale: float = 0.1,
        normalize: bool = True,
        score: ScoreKind = "logit",
        batch_size: int | Literal["auto"] = "auto",
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        check_positive_int(n_samples, "n_samples")
        check_in_range(noise_scale, "noise_scale", 0.0, math.inf, low_inclusive=False)
        if not isinstance(normalize, bool):
            raise TypeError(f"`normalize` must be a bool, got {normalize!r}.")
        check_score(score)
        check_positive_int(seed, "seed", minimum=0)
        self.n_samples = n_samples
        self.noise_scale = noise_scale
        self.normalize = normalize
        self.score = score
        self.seed = seed

    def _sample_scores(self, model: nn.Module, inputs: Tensor, attributions: Tensor, target: TargetType) -> Tensor:
        return infidelity(
            model,
            inputs,
            attributions,
            target,
            n_samples=self.n_samples,
            noise_scale=self.noise_scale,
            normalize=self.normalize,
            score=self.score,
            batch_size=self.batch_size,
            seed=self.seed,
        )
