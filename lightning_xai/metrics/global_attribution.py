"""``GlobalAttribution``: running label-wise and overall global maps, synchronised across ranks by summation."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_xai._checks import check_choice, check_positive_int
from lightning_xai.functional.global_attribution import (
    NORMALIZATIONS,
    Normalization,
    _global_attribution_compute,
    _global_attribution_update,
    check_labels,
    normalize_maps,
)

_STATES = ("sum_maps", "sum_squares", "count")


class GlobalAttribution(Metric):
    """Label-wise and overall global explanation maps of aligned images (Engelmann et al. 2021, reconstructed).

    Each update normalises every image's map on its own and adds it to the running sums of each of its labels;
    :meth:`compute` returns the label-wise means and standard deviations and the overall map. The reconstruction
    choices (normalisation, population standard deviation, overall map = mean of the label-wise maps over the
    labels seen at least once) are listed in :mod:`lightning_xai.functional.global_attribution`.

    The states are per-label sums of maps and of squared maps, shape ``(L, H, W)``, and per-label counts ``(L,)``,
    all float64 and reduced with ``"sum"``: memory is ``O(L x H x W)`` whatever the number of samples, and under DDP
    the synchronised result equals the single-process one up to float rounding.

    The image size is fixed by ``image_size`` or, when it is ``None``, by the first update (a later update with a
    different size raises). Under DDP, pass ``image_size`` if a rank may see no sample at all: a rank whose states
    were never sized cannot be summed with the others.

    Args:
        num_labels: the number of labels ``L`` (classes).
        normalize: per-image normalisation before averaging: ``"mass"`` (sum of ``|map|`` is 1, the authors'
            ``mass1``), ``"max"`` (largest ``|value|`` is 1) or ``None``.
        absolute: take ``|a|`` before summing channels (signed attributions); ``False`` keeps the signed sum.
        image_size: ``(H, W)`` of the maps, to size the states up front; ``None`` sizes them at the first update.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = GlobalAttribution(num_labels=2)
        >>> metric.update(torch.tensor([[1.0, 3.0], [2.0, 2.0]]).view(2, 1, 1, 2), torch.tensor([0, 0]))
        >>> result = metric.compute()
        >>> result["per_label"].flatten(1), result["count"]
        (tensor([[0.3750, 0.6250],
                [0.0000, 0.0000]]), tensor([2, 0]))
        >>> result["overall"]
        tensor([[[0.3750, 0.6250]]])
    """

    is_differentiable = False
    higher_is_better: bool | None = None
    full_state_update = False
    name = "global_attribution"

    sum_maps: Tensor
    sum_squares: Tensor
    count: Tensor

    def __init__(
        self,
        num_labels: int,
        normalize: Normalization | None = "mass",
        absolute: bool = True,
        image_size: tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_positive_int(num_labels, "num_labels")
        check_choice(normalize, "normalize", NORMALIZATIONS)
        if not isinstance(absolute, bool):
            raise TypeError(f"`absolute` must be a bool, got {absolute!r}.")
        height, width = 0, 0
        if image_size is not None:
            if not (isinstance(image_size, (tuple, list)) and len(image_size) == 2):
                raise ValueError(f"`image_size` must be a pair (H, W) of ints >= 1 or None, got {image_size!r}.")
            check_positive_int(image_size[0], "image_size[0]")
            check_positive_int(image_size[1], "image_size[1]")
            height, width = int(image_size[0]), int(image_size[1])
        self.num_labels = num_labels
        self.normalize = normalize
        self.absolute = absolute
        zeros = torch.zeros(num_labels, height, width, dtype=torch.float64)
        self.add_state("sum_maps", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("sum_squares", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(num_labels, dtype=torch.float64), dist_reduce_fx="sum")

    @property
    def image_size(self) -> tuple[int, int] | None:
        """The ``(H, W)`` the states are sized for, or ``None`` before the first update when not given."""
        height, width = self.sum_maps.shape[1:]
        return (int(height), int(width)) if height > 0 else None

    def _size_states(self, height: int, width: int) -> None:
        # torchmetrics restores states from `_defaults` on reset (and in forward), so the defaults are sized too:
        # the image size then holds for the metric's life, as when `image_size` is given.
        for state in ("sum_maps", "sum_squares"):
            default = torch.zeros(self.num_labels, height, width, dtype=torch.float64)
            self._defaults[state] = default
            # a copy, never the default itself: `.to` returns the same tensor on the default's device, and the
            # in-place `+=` of the updates would then write into the default that every `reset()` restores.
            setattr(self, state, default.to(self.device, copy=True))

    def update(self, attributions: Tensor, labels: Tensor) -> None:
        """Add one batch of maps to the sums of their labels.

        Args:
            attributions: ``(B, 1, H, W)`` or ``(B, C, H, W)``, finite; the same ``H, W`` at every update.
            labels: class indices ``(B,)`` in ``[0, num_labels)``, or a multi-label 0/1 tensor ``(B, num_labels)``
                (each map is added to every positive label).
        """
        maps = normalize_maps(attributions.detach(), self.normalize, self.absolute)
        check_labels(labels, self.num_labels, maps.shape[0])
        height, width = maps.shape[-2:]
        expected = self.image_size
        if expected is None:
            self._size_states(height, width)
        elif expected != (height, width):
            raise ValueError(
                f"`attributions` must keep the spatial size {expected} (H, W) of the earlier updates, got "
                f"{(height, width)} (shape {tuple(attributions.shape)})."
            )
        sums, squares, counts = _global_attribution_update(maps, labels, self.num_labels)
        self.sum_maps += sums.to(self.sum_maps.device)
        self.sum_squares += squares.to(self.sum_squares.device)
        self.count += counts.to(self.count.device)

    def forward(self, attributions: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Update with one batch and return the global maps of that batch alone (torchmetrics' ``forward``)."""
        if self.image_size is None and isinstance(attributions, Tensor) and attributions.ndim == 4:
            # forward merges the batch's states into a copy of the earlier ones, which must already be sized
            self._size_states(*attributions.shape[-2:])
        return super().forward(attributions, labels)

    def compute(self) -> dict[str, Tensor]:
        """The global maps of every sample seen (on every rank).

        Returns:
            ``{"per_label": (L, 1, H, W), "overall": (1, H, W), "std": (L, 1, H, W), "count": (L,)}``. A label never
            seen has an all-zero map and standard deviation and count 0 (no NaN); ``"overall"`` is the mean of the
            label-wise maps of the labels with count > 0 (all zeros when no label was seen).

        Raises:
            RuntimeError: before any update (the image size is unknown).
        """
        if self.image_size is None:
            raise RuntimeError(
                "GlobalAttribution.compute() was called before any update() (the image size is unknown)."
            )
        return _global_attribution_compute(self.sum_maps, self.sum_squares, self.count)
