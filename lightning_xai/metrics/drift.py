"""``ExplanationDrift``: how much the maps of a fixed probe or the global maps changed since the previous epoch."""

from __future__ import annotations

import warnings
from typing import Any

from torch import Tensor

from lightning_xai.functional.drift import explanation_drift, map_rows


def _comparable(maps: Tensor) -> Tensor:
    """``maps`` detached, on the device the ranks are computed on: their own, or the CPU for MPS (no float64)."""
    maps = maps.detach()
    return maps.cpu() if maps.device.type == "mps" else maps


class ExplanationDrift:
    """Spearman rank correlation between this epoch's maps and the previous epoch's, for a callback to hold.

    Hold one instance per kind of map (one for a fixed probe's per-sample maps ``(B, 1, H, W)``, one for the global
    maps ``(L, 1, H, W)`` or ``(1, H, W)``) and call :meth:`update` once per epoch. Each call compares the maps with
    the stored previous ones, then stores the new maps as the reference for the next call.

    - **First epoch.** There is nothing to compare with: :meth:`update` returns ``None`` (never NaN) and
      :attr:`has_previous` was False before the call; a callback logs nothing that epoch.
    - **Constant maps.** A map whose values are all equal (an all-zero Grad-CAM, say) has no ranking, so its
      correlation is undefined; it is left out of the mean and counted in :attr:`undefined`. If every map is
      undefined, :meth:`update` warns and returns ``None``.
    - **Resume.** The previous maps are the only state: put :meth:`state_dict` in the callback's ``state_dict``
      and give it back to :meth:`load_state_dict` after a restart; the next update then compares with the maps of
      the epoch before the checkpoint.

    It is not a ``torchmetrics.Metric``: its state lives across epochs rather than being reset each epoch, and the
    maps it gets are the same on every rank (a fixed probe, or global maps that are already synchronised), so
    there is nothing to reduce.

    The ranks and the correlation are computed on the maps' device, where the previous maps are kept too (no copy
    to the host; on a GPU the sorts are the cheap part). MPS has no float64, which the average ranks use: MPS maps
    are compared, and kept, on the CPU.

    The value is in ``[-1, 1]``: 1 means the pixel ranking did not change, values near 0 mean the model now looks
    elsewhere. Higher is more stable.

    Example:
        >>> import torch
        >>> drift = ExplanationDrift()
        >>> maps = torch.arange(8.0).view(2, 1, 2, 2)
        >>> drift.update(maps) is None
        True
        >>> drift.update(maps.flip(-1))
        tensor(0.6000, dtype=torch.float64)
        >>> restored = ExplanationDrift()
        >>> restored.load_state_dict(drift.state_dict())
        >>> restored.update(maps.flip(-1))
        tensor(1., dtype=torch.float64)
    """

    name = "drift_spearman"
    higher_is_better = True

    def __init__(self) -> None:
        self.previous: Tensor | None = None
        self.per_sample: Tensor | None = None
        self.correlation: Tensor | None = None
        self.undefined = 0

    @property
    def has_previous(self) -> bool:
        """Whether maps of an earlier epoch are stored, so that the next :meth:`update` returns a value."""
        return self.previous is not None

    def compare(self, maps: Tensor) -> Tensor | None:
        """The mean correlation of ``maps`` with the stored previous maps, without storing ``maps``.

        Sets :attr:`per_sample` (``(N,)``, NaN for constant maps) and :attr:`undefined`.

        Returns:
            A float64 scalar on the maps' device, or ``None`` when nothing is stored yet or every map is constant.
        """
        map_rows(maps)  # shape check
        maps = _comparable(maps)
        if self.previous is None:
            self.per_sample, self.correlation, self.undefined = None, None, 0
            return None
        per_sample = explanation_drift(maps, self.previous.to(maps.device))
        defined = ~per_sample.isnan()
        self.per_sample = per_sample
        self.undefined = int((~defined).sum())
        if not bool(defined.any()):
            warnings.warn(
                f"ExplanationDrift: all {per_sample.numel()} maps (or their previous versions) are constant, so "
                "their rank correlation is undefined; no drift value this epoch.",
                stacklevel=2,
            )
            self.correlation = None
            return None
        self.correlation = per_sample[defined].mean()
        return self.correlation

    def update(self, maps: Tensor) -> Tensor | None:
        """Compare ``maps`` with the previous epoch's (see :meth:`compare`), then keep them for the next epoch.

        Args:
            maps: per-sample or per-label maps ``(N, 1, H, W)`` (or ``(N, C, H, W)``), or one map ``(1, H, W)`` /
                ``(H, W)``; the same shape every epoch.

        Returns:
            The mean Spearman correlation with the previous maps, a float64 scalar; ``None`` at the first call (and
            when every map is constant).
        """
        maps = _comparable(maps)  # moved once (MPS); compare finds it already comparable
        correlation = self.compare(maps)
        self.previous = maps.clone()
        return correlation

    def reset(self) -> None:
        """Forget the previous maps and the last result (the next update is again a first epoch)."""
        self.previous, self.per_sample, self.correlation, self.undefined = None, None, None, 0

    def state_dict(self) -> dict[str, Any]:
        """``{"previous": maps on the CPU or None}``, for the holding callback's ``state_dict``."""
        return {"previous": None if self.previous is None else self.previous.detach().cpu().clone()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the previous maps saved by :meth:`state_dict` (a missing key means none)."""
        previous = state_dict.get("previous")
        if previous is not None and not isinstance(previous, Tensor):
            raise TypeError(f"`state_dict['previous']` must be a tensor or None, got {type(previous).__name__}.")
        self.reset()
        self.previous = None if previous is None else previous.clone()
