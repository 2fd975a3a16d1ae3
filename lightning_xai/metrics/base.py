"""Base class of the faithfulness metrics: ``update(model, inputs, attributions, target)``, mean in ``compute()``."""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_xai._checks import check_attributions, check_image_batch
from lightning_xai._layers import eager_model
from lightning_xai._model_state import explanation_mode
from lightning_xai._scoring import check_batch_size
from lightning_xai._targets import check_target
from lightning_xai._typing import TargetType


def normal_quantile(level: float) -> float:
    """Two-sided standard-normal quantile for a confidence ``level`` (1.959964 for 0.95).

    Example:
        >>> round(normal_quantile(0.95), 4)
        1.96
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"`level` must lie in (0, 1), got {level}.")
    return math.sqrt(2.0) * torch.erfinv(torch.tensor(level, dtype=torch.float64)).item()


def mean_band(samples: Tensor, level: float = 0.95) -> tuple[Tensor, Tensor]:
    """Normal-approximation interval of the mean curve from per-sample curves ``(N, K)``: ``(low, high)``, ``(K,)``.

    ``mean +- z * std / sqrt(N)`` at every point, the pointwise analogue of
    :meth:`FaithfulnessMetric.confidence_interval`; with fewer than two samples the band collapses onto the mean.

    Example:
        >>> low, high = mean_band(torch.tensor([[0.0, 1.0], [2.0, 1.0]]))
        >>> [round(v, 3) for v in low.tolist()], [round(v, 3) for v in high.tolist()]
        ([-0.96, 1.0], [2.96, 1.0])
    """
    mean = samples.mean(dim=0)
    if samples.shape[0] < 2:
        return mean, mean
    half = normal_quantile(level) * samples.std(dim=0, unbiased=True) / math.sqrt(samples.shape[0])
    return mean - half, mean + half


def _cat_state(state: list[Tensor] | Tensor, device: torch.device) -> Tensor:
    """A ``"cat"`` state as one tensor: a list before synchronisation, already a tensor inside ``sync_context``."""
    if isinstance(state, Tensor):
        return state
    return dim_zero_cat(state) if state else torch.zeros(0, device=device)


class FaithfulnessMetric(Metric):
    """A per-sample faithfulness score of attributions, averaged over every sample seen (on every rank).

    Subclasses implement :meth:`_sample_scores`, which returns one score per sample (and may append curves
    to their own states). The base class checks the arguments, runs the subclass in
    :func:`~lightning_xai._model_state.explanation_mode` without autograd, and keeps the per-sample scores
    in a ``"cat"`` state so the mean, its standard error and a confidence interval are exact under DDP.

    Attributes:
        name: the snake_case key under which the monitor logs the metric (``xai/<explainer>/<name>``).
        higher_is_better: whether a higher score means a more faithful explanation.
    """

    is_differentiable = False
    full_state_update = False
    higher_is_better: bool | None = None
    name: str = "faithfulness"
    #: Whether the metric has a meaning for clips ``(B, C, T, H, W)`` (perturbing voxels); others refuse them.
    supports_video: bool = False
    scores: list[Tensor]

    def __init__(self, batch_size: int | Literal["auto"] = "auto", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_batch_size(batch_size)
        self.batch_size = batch_size
        self.add_state("scores", default=[], dist_reduce_fx="cat")

    def update(self, model: nn.Module, inputs: Tensor, attributions: Tensor, target: TargetType) -> None:
        """Score the attributions of one batch.

        Args:
            model: the model the attributions explain.
            inputs: images ``(B, C, H, W)``.
            attributions: ``(B, 1, H, W)`` or ``(B, C, H, W)``, finite; higher means more important.
            target: class indices ``(B,)`` or a callable ``(outputs) -> (B,)`` scores.
        """
        check_image_batch(inputs, video=self.supports_video, method=type(self).__name__)
        check_attributions(attributions, inputs)
        check_target(target, inputs.shape[0])
        model = eager_model(model, type(self).__name__)
        with explanation_mode(model, grad=False):
            target = target.to(inputs.device) if isinstance(target, Tensor) else target
            scores = self._sample_scores(model, inputs.detach().clone(), attributions.detach().clone(), target)
        self.scores.append(scores.detach().to(torch.float32))

    @abstractmethod
    def _sample_scores(self, model: nn.Module, inputs: Tensor, attributions: Tensor, target: TargetType) -> Tensor:
        """One score per sample, shape ``(B,)``; runs under ``no_grad`` with the model in eval mode."""

    def per_sample(self) -> Tensor:
        """The per-sample scores, shape ``(N,)``, gathered from every rank."""
        return _cat_state(self.scores, self.device)

    def _mean(self, values: Tensor) -> Tensor:
        if values.numel() == 0:
            raise RuntimeError(f"{type(self).__name__}.compute() was called before any update().")
        return values.mean()

    def compute(self) -> Tensor:
        """The mean score over every sample seen, a scalar tensor."""
        return self._mean(self.per_sample())

    def _standard_error(self) -> Tensor:
        values = self.per_sample()
        if values.numel() < 2:
            return torch.zeros((), device=values.device)
        return values.std(unbiased=True) / math.sqrt(values.numel())

    def standard_error(self) -> Tensor:
        """Standard error of the mean score (0 with fewer than two samples), synchronised across ranks."""
        with self.sync_context():
            return self._standard_error()

    def confidence_interval(self, level: float = 0.95) -> tuple[Tensor, Tensor]:
        """Normal-approximation confidence interval of the mean score at ``level``, as ``(low, high)``."""
        with self.sync_context():
            mean, error = self._mean(self.per_sample()), self._standard_error()
        half = normal_quantile(level) * error
        return mean - half, mean + half

    def summary(self) -> dict[str, Tensor]:
        """Scalars the monitor logs under ``xai/<explainer>/``: ``{name: mean, name + "_stderr": error}``.

        Subclasses with more than one number (both AUCs of a fidelity, MoRF and LeRF) add theirs.
        """
        with self.sync_context():
            return {self.name: self._mean(self.per_sample()), f"{self.name}_stderr": self._standard_error()}

    def curves(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Mean curves to plot, ``{label: (x, y)}``; empty for metrics without curves."""
        return {}

    def curve_samples(self) -> dict[str, Tensor]:
        """Per-sample curves ``{label: (N, K)}`` behind :meth:`curves`, gathered from every rank; empty if not kept.

        Subclasses keep them in ``"cat"`` states (one row per sample), so the bands are exact under DDP.
        """
        return {}

    def curve_bands(self, level: float = 0.95) -> dict[str, tuple[Tensor, Tensor]]:
        """``{label: (low, high)}``: pointwise ``level`` interval of each mean curve (:func:`mean_band`)."""
        with self.sync_context():
            samples = self.curve_samples()
        return {label: mean_band(rows, level) for label, rows in samples.items() if rows.shape[0] > 0}

    def curve_axes(self) -> tuple[str, str]:
        """``(x label, y label)`` of the curve figure: what was perturbed and which score is plotted.

        Subclasses override it, or set the class attributes ``curve_xlabel`` and ``curve_ylabel``.
        """
        return getattr(self, "curve_xlabel", "fraction of pixels perturbed"), getattr(self, "curve_ylabel", "score")
