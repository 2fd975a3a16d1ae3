"""``PEPPR``: progressive erasing and restoration curves of aligned images under one global map."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_xai._checks import check_choice, check_positive_int
from lightning_xai._model_state import explanation_mode
from lightning_xai._scoring import check_batch_size
from lightning_xai._targets import SCORE_KINDS, ScoreKind
from lightning_xai.functional.peppr import (
    _peppr_compute,
    _peppr_update,
    baseline_tensor,
    check_peppr_batch,
    erased_counts,
    expand_multi_hot,
    global_map_ranks,
    per_label_results,
    random_ranks,
)


class PEPPR(Metric):
    """Progressive Erasing Plus Progressive Restoration (Engelmann et al. 2021, documented reconstruction).

    The pixels of aligned images are ranked once by a global map (for instance ``GlobalAttribution``'s
    ``"overall"`` or ``"per_label"`` output); every image is then progressively erased, most important pixels first,
    and progressively restored from a fully erased image, and the score of its label (softmax probability) and
    its accuracy are recorded at each step. The same curves for a seeded random ranking are the reference. The
    reconstruction choices (steps, baseline, ties, what "Plus" means, ``peppr`` = restoration AUC - erasing AUC)
    are listed in :mod:`lightning_xai.functional.peppr`.

    States are the curves summed over images, ``(2 rankings, 2 directions, 2 measures, steps + 1)`` in float64, and
    the image count, both reduced with ``"sum"``: memory is ``O(steps)`` whatever the number of images and DDP gives
    the single-process result. Perturbed images are scored ``batch_size`` at a time.

    Args:
        global_map: ``(H, W)``, ``(1, H, W)`` (one ranking for every image) or per-label ``(L, 1, H, W)`` (each image
            is ranked by its label's map; a label never seen has an all-zero map, whose ties fall back to raster
            order, so prefer the overall map when some labels are rare). Higher means more important.
        steps: the number of erasing steps; the curves have ``steps + 1`` points at fractions ``k / steps``
            (rounded down to whole pixels).
        baseline: the value of erased pixels, a number or a tensor broadcastable to ``(C, H, W)`` (0 is the mean
            image in normalised space).
        batch_size: how many perturbed images are scored at once.
        seed: seed of the random reference ranking (a local generator; the global RNG is not touched).
        score: the label's ``"probability"`` (softmax for a multi-class head, sigmoid for a single-logit head, and
            the per-label sigmoid for multi-hot labels), ``"softmax"``, ``"sigmoid"``, ``"logit"`` or
            ``"log_probability"``.
        num_labels: the number of labels ``L`` of multi-hot ``(B, L)`` labels; when given, the metric also keeps
            per-label curve sums (``dist_reduce_fx="sum"``) and :meth:`compute` returns per-label AUCs
            (``"per_label_restoration_auc"``, ``"per_label_erasing_auc"``, ``"per_label_peppr"``, ... each ``(L,)``;
            NaN for a label never seen), the global-explanations paper's per-label sigmoid-score setting.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> metric = PEPPR(torch.rand(4, 4), steps=4)
        >>> metric.update(model, torch.rand(5, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1]))
        >>> result = metric.compute()
        >>> result["erasing_curve"].shape, sorted(metric.summary())[:3]
        (torch.Size([5]), ['erasing_accuracy_auc', 'erasing_auc', 'peppr'])
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    name = "peppr"

    curve_sums: Tensor
    count: Tensor
    label_sums: Tensor
    label_count: Tensor
    ranks: Tensor
    random_ranks: Tensor
    counts: Tensor

    def __init__(
        self,
        global_map: Tensor,
        steps: int = 20,
        baseline: float | Tensor = 0.0,
        batch_size: int | Literal["auto"] = "auto",
        seed: int = 0,
        score: ScoreKind = "probability",
        num_labels: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if num_labels is not None:
            check_positive_int(num_labels, "num_labels")
        self.num_labels = num_labels
        check_positive_int(steps, "steps")
        check_batch_size(batch_size)
        check_positive_int(seed, "seed", minimum=0)
        check_choice(score, "score", SCORE_KINDS)
        ranks = global_map_ranks(global_map.detach().cpu())
        self.image_size = (int(global_map.shape[-2]), int(global_map.shape[-1]))
        self.num_pixels = self.image_size[0] * self.image_size[1]
        baseline_tensor(baseline, torch.zeros(1, 1, *self.image_size))  # type check; channels are checked at update
        self.steps = steps
        self.baseline = baseline
        self.batch_size = batch_size
        self.seed = seed
        self.score = score
        self.register_buffer("ranks", ranks, persistent=False)
        self.register_buffer("random_ranks", random_ranks(self.num_pixels, seed), persistent=False)
        self.register_buffer("counts", erased_counts(self.num_pixels, steps), persistent=False)
        self.add_state("curve_sums", default=torch.zeros(2, 2, 2, steps + 1, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        if num_labels is not None:
            self.add_state(
                "label_sums",
                default=torch.zeros(num_labels, 2, 2, 2, steps + 1, dtype=torch.float64),
                dist_reduce_fx="sum",
            )
            self.add_state("label_count", default=torch.zeros(num_labels, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, model: nn.Module, inputs: Tensor, labels: Tensor) -> None:
        """Add the erasing and restoration curves of one batch, for the global and the random ranking.

        Args:
            model: the classifier, outputs ``(B, num_classes)``; run in eval mode without autograd, restored after.
            inputs: aligned images ``(B, C, H, W)`` with the global map's ``H, W``.
            labels: class indices ``(B,)`` (below ``L`` for a per-label map), or multi-hot ``(B, L)`` 0/1 labels (one
                row per (image, positive label) pair, scored by that label's sigmoid; ``L`` must be ``num_labels``
                when it is given).
        """
        if isinstance(labels, Tensor) and labels.ndim == 2 and self.num_labels not in (None, labels.shape[1]):
            raise ValueError(
                f"Multi-hot `labels` must have num_labels = {self.num_labels} columns, got shape {tuple(labels.shape)}."
            )
        multi_hot = isinstance(labels, Tensor) and labels.ndim == 2
        inputs, labels, score = expand_multi_hot(inputs, labels, self.score)
        if labels.numel() == 0:
            return
        check_peppr_batch(inputs, labels, self.ranks, self.image_size)
        device = inputs.device
        value = baseline_tensor(self.baseline, inputs)
        labels = labels.to(device).long()
        counts = self.counts.to(device)
        with explanation_mode(model, grad=False):
            inputs = inputs.detach().clone()
            per_row = torch.stack(
                [
                    _peppr_update(model, inputs, labels, ranks.to(device), counts, value, self.batch_size, score)
                    for ranks in (self.ranks, self.random_ranks)
                ],
                dim=1,
            )
        self.curve_sums += per_row.sum(dim=0).to(self.curve_sums.device)
        self.count += inputs.shape[0]
        if self.num_labels is not None:
            if not multi_hot and int(labels.max()) >= self.num_labels:
                raise ValueError(f"`labels` holds class index {int(labels.max())} >= num_labels={self.num_labels}.")
            rows = labels.to(self.label_sums.device)
            self.label_sums.index_add_(0, rows, per_row.to(self.label_sums.device))
            self.label_count.index_add_(0, rows, torch.ones_like(rows, dtype=torch.float64))

    def compute(self) -> dict[str, Tensor]:
        """Mean curves, their AUCs and ``peppr`` over every image seen (on every rank).

        Returns:
            ``"fractions"`` ``(steps + 1,)``; for ``<d>`` in ``erasing``, ``restoration``: ``"<d>_curve"`` (mean label
            score), ``"<d>_accuracy_curve"``, ``"<d>_auc"``, ``"<d>_accuracy_auc"``; ``"peppr"`` (restoration AUC
            minus erasing AUC, higher is better); and all of these with the prefix ``"random_"`` for the random
            ranking. A faithful map has a lower erasing AUC and a higher restoration AUC than the random ranking.

        Raises:
            RuntimeError: before any update.
        """
        if float(self.count) == 0:
            raise RuntimeError("PEPPR.compute() was called before any update().")
        counts = self.counts.to(self.curve_sums.device)
        result = _peppr_compute(self.curve_sums, self.count, counts, self.num_pixels)
        if self.num_labels is not None:
            result.update(per_label_results(self.label_sums, self.label_count, counts, self.num_pixels))
        return result

    def summary(self) -> dict[str, Tensor]:
        """The scalar entries of :meth:`compute` (AUCs and ``peppr``, global and random), for logging."""
        return {key: value for key, value in self.compute().items() if value.ndim == 0}

    def curve_axes(self) -> tuple[str, str]:
        """``("fraction of pixels erased or restored", "<score> of the label")`` (no bands: only sums are kept)."""
        return "fraction of pixels erased or restored", f"{self.score.replace('_', ' ')} of the label"

    def curves(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Mean label-score curves to plot, ``{label: (fractions, curve)}``, global and random rankings."""
        result = self.compute()
        fractions = result["fractions"]
        return {
            f"{prefix}{direction}": (fractions, result[f"{prefix}{direction}_curve"])
            for prefix in ("", "random_")
            for direction in ("erasing", "restoration")
        }
