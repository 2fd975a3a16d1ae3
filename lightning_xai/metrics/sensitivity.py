"""Max-sensitivity metric (Yeh et al., NeurIPS 2019) over :mod:`~lightning_xai.functional.sensitivity`."""

from __future__ import annotations

import math
from typing import Any, Literal

from torch import Tensor, nn

from lightning_xai._checks import check_in_range, check_positive_int
from lightning_xai._typing import TargetType
from lightning_xai.functional.sensitivity import ExplainerFn, NormOrder, check_norm_order, max_sensitivity
from lightning_xai.metrics.base import FaithfulnessMetric


class MaxSensitivity(FaithfulnessMetric):
    """How much an explainer's map moves under small input perturbations: ``max ||phi(x + d) - phi(x)|| / ||phi(x)||``.

    ``n_samples`` perturbations ``d`` are drawn uniformly from the L-infinity ball of radius ``radius`` and the
    explainer is re-run on each perturbed input (chunks of ``batch_size``); the same computation as
    ``captum.metrics.sensitivity_max`` with its default perturbation (see
    :mod:`lightning_xai.functional.sensitivity`). ``phi(x)`` is the ``attributions`` given to :meth:`update`
    (they must be ``explainer``'s own maps of the inputs for a like-for-like comparison, as the monitor passes
    them), so ``phi(x)`` is not computed a second time.

    **Lower is better** (``higher_is_better = False``). ``summary()`` gives ``max_sensitivity`` and
    ``max_sensitivity_stderr``.

    Args:
        explainer: ``explainer(model, inputs, target) -> attributions`` (any
            :class:`~lightning_xai.explainers.Explainer`). May be None at construction and set later through the
            ``explainer`` attribute (a monitor can bind each copy to the explainer whose maps it measures).
        radius: half-width of the perturbation (Captum: 0.02), in the inputs' units.
        n_samples: perturbations per image (Captum: 10).
        norm_ord: ``"fro"`` (default) or a positive number.
        batch_size: perturbed images explained per call.
        seed: seed of the perturbations (drawn at every update, shared by the samples).
        kwargs: passed to ``torchmetrics.Metric``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> def weights(model, inputs, target):
        ...     return model[1].weight[target].detach().view(-1, 1, 4, 4)
        >>> metric = MaxSensitivity(weights)
        >>> x, target = torch.rand(2, 1, 4, 4), torch.tensor([0, 2])
        >>> metric.update(model, x, weights(model, x, target), target)
        >>> metric.compute().item()
        0.0
    """

    name = "max_sensitivity"
    higher_is_better = False

    def __init__(
        self,
        explainer: ExplainerFn | None = None,
        radius: float = 0.02,
        n_samples: int = 10,
        norm_ord: NormOrder = "fro",
        batch_size: int | Literal["auto"] = "auto",
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        if explainer is not None and not callable(explainer):
            raise TypeError(f"`explainer` must be callable as explainer(model, inputs, target), got {explainer!r}.")
        check_in_range(radius, "radius", 0.0, math.inf, low_inclusive=False)
        check_positive_int(n_samples, "n_samples")
        check_norm_order(norm_ord)
        check_positive_int(seed, "seed", minimum=0)
        self.explainer = explainer
        self.radius = radius
        self.n_samples = n_samples
        self.norm_ord = norm_ord
        self.seed = seed

    def _sample_scores(self, model: nn.Module, inputs: Tensor, attributions: Tensor, target: TargetType) -> Tensor:
        if self.explainer is None:
            raise ValueError("MaxSensitivity needs an `explainer` to re-run on perturbed inputs; got None.")
        return max_sensitivity(
            self.explainer,
            model,
            inputs,
            target,
            radius=self.radius,
            n_samples=self.n_samples,
            norm_ord=self.norm_ord,
            batch_size=self.batch_size,
            seed=self.seed,
            attributions=attributions,
        )
