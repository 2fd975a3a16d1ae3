"""Similarity deletion and insertion AUC of pair maps (xai-ssl's metrics for two images) as torchmetrics."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_xai._layers import eager_model
from lightning_xai._model_state import explanation_mode
from lightning_xai.functional.baselines import BaselineType
from lightning_xai.functional.perturbation_curves import curve_auc
from lightning_xai.functional.similarity_curves import similarity_curves
from lightning_xai.metrics.deletion_insertion import _CurveAUCMetric


class _SimilarityCurveAUCMetric(_CurveAUCMetric):
    """A curve AUC of both views of each pair: ``update(model, x1, x2, maps1, maps2)``, one score per pair."""

    def update(  # type: ignore[override]
        self, model: nn.Module, x1: Tensor, x2: Tensor, maps1: Tensor, maps2: Tensor
    ) -> None:
        """Score the pair maps of one batch of pairs.

        Args:
            model: the embedding model, ``model(x) -> (B, D)``.
            x1: the first views ``(B, C, H, W)``.
            x2: the second views, the same shape.
            maps1: maps of ``x1`` ``(B, 1, H, W)`` or ``(B, C, H, W)``, finite; higher means more important.
            maps2: maps of ``x2``, likewise.
        """
        model = eager_model(model, type(self).__name__)
        with explanation_mode(model, grad=False):
            curves1, curves2 = similarity_curves(
                model,
                x1.detach().clone(),
                x2.detach().clone(),
                maps1.detach().clone(),
                maps2.detach().clone(),
                insertion=self._insertion,
                steps=self.steps,
                baseline=self.baseline,
                batch_size=self.batch_size,
                seed=self.seed,
            )
        curves = ((curves1 + curves2) / 2).to(torch.float32)
        self.curve_sum += curves.sum(dim=0).to(self.curve_sum)
        self.sample_curves.append(curves.detach())
        self.scores.append(((curve_auc(curves1) + curve_auc(curves2)) / 2).detach().to(torch.float32))

    def _sample_scores(self, model: nn.Module, inputs: Tensor, attributions: Tensor, target: Any) -> Tensor:
        raise TypeError(f"{type(self).__name__} scores pairs: call update(model, x1, x2, maps1, maps2).")

    def curve_axes(self) -> tuple[str, str]:
        """``("fraction of pixels deleted" or "inserted", "cosine similarity to the other view")``."""
        verb = "inserted" if self._insertion else "deleted"
        return f"fraction of pixels {verb}", "cosine similarity to the other view"


class SimilarityDeletionAUC(_SimilarityCurveAUCMetric):
    """Area under the similarity deletion curve of pair maps: how fast a pair's similarity falls.

    For each pair ``(x1, x2)`` the pixels of ``x1`` are replaced by the baseline in the order of ``maps1`` (as
    :class:`~lightning_xai.metrics.DeletionAUC` does, ``steps`` equal fractions) while ``x2`` stays whole, and
    the curve holds ``cos(f(x1 deleted), f(x2))``; likewise for ``x2`` against ``x1``. A pair's score is the mean
    of its two AUCs (trapezoid on ``[0, 1]``), and the curve kept for it the mean of its two curves
    (:func:`~lightning_xai.functional.similarity_curves`). Per-pair scores and curves are ``"cat"`` states and
    the curve sum a ``"sum"`` state, so means, standard errors and bands are exact under DDP.

    **Lower is better** (``higher_is_better = False``). ``summary()`` gives ``similarity_deletion_auc`` and
    ``similarity_deletion_auc_stderr``; ``curves()`` gives ``{"similarity_deletion": (x, mean curve)}``.

    Paper: Sammani et al., arXiv:2206.09753 (the metrics adapted to two images); Petsiuk et al., RISE, BMVC 2018.

    Args:
        steps: number of equal fractions.
        baseline: what deleted pixels become (default 0; see
            :func:`~lightning_xai.functional.baselines.make_baseline`).
        batch_size: perturbed images per forward pass, or ``"auto"``.
        seed: seed of the ``"noise"`` baseline.
        kwargs: passed to ``torchmetrics.Metric``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> metric = SimilarityDeletionAUC(steps=4)
        >>> x1, x2 = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
        >>> metric.update(model, x1, x2, torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4))
        >>> metric.compute().shape, sorted(metric.summary())
        (torch.Size([]), ['similarity_deletion_auc', 'similarity_deletion_auc_stderr'])
    """

    name = "similarity_deletion_auc"
    higher_is_better = False
    _insertion = False
    _curve_label = "similarity_deletion"

    def __init__(
        self,
        steps: int = 20,
        baseline: BaselineType = 0.0,
        batch_size: int | Literal["auto"] = "auto",
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(steps, baseline, "logit", batch_size, seed, **kwargs)


class SimilarityInsertionAUC(_SimilarityCurveAUCMetric):
    """Area under the similarity insertion curve of pair maps: how fast a pair's similarity comes back.

    Each view starts from the baseline (default ``"blur"``, as :class:`~lightning_xai.metrics.InsertionAUC`) and
    gets its top-ranked pixels back in ``steps`` equal fractions, scored by the cosine similarity to the other
    view's whole embedding; otherwise as :class:`SimilarityDeletionAUC`.

    **Higher is better** (``higher_is_better = True``). ``summary()`` gives ``similarity_insertion_auc`` and
    ``similarity_insertion_auc_stderr``; ``curves()`` gives ``{"similarity_insertion": (x, mean curve)}``.

    Args:
        steps: number of equal fractions.
        baseline: the starting image (default ``"blur"``), a number, ``"mean"``, ``"noise"``, a tensor or a
            callable.
        batch_size: perturbed images per forward pass, or ``"auto"``.
        seed: seed of the ``"noise"`` baseline.
        kwargs: passed to ``torchmetrics.Metric``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> metric = SimilarityInsertionAUC(steps=4)
        >>> x1, x2 = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
        >>> metric.update(model, x1, x2, torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4))
        >>> x, y = metric.curves()["similarity_insertion"]
        >>> x.tolist(), y.shape
        ([0.0, 0.25, 0.5, 0.75, 1.0], torch.Size([5]))
    """

    name = "similarity_insertion_auc"
    higher_is_better = True
    _insertion = True
    _curve_label = "similarity_insertion"

    def __init__(
        self,
        steps: int = 20,
        baseline: BaselineType = "blur",
        batch_size: int | Literal["auto"] = "auto",
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(steps, baseline, "logit", batch_size, seed, **kwargs)
