"""Probe drift: has the model's reasoning about the fixed probe changed since the previous monitored epoch?"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from lightning_xai.callbacks.analyses.base import Analysis, EpochContext, ExplainedBatch, Samples
from lightning_xai.metrics.drift import ExplanationDrift


class ProbeDrift(Analysis):
    """Spearman rank correlation of the probe's maps with the previous monitored epoch's.

    Logs ``drift_probe`` from the second monitored epoch on, in ``[-1, 1]``; higher means a more stable pixel ranking
    (voxel ranking for clip maps ``(P, 1, T, H, W)``).
    Under DDP each rank has its own probe: the value is averaged over the ranks, and logged only when every rank has
    a previous epoch to compare with. The previous maps are kept in the checkpoint.

    Rows are compared only with the same (sample, label) rows of the previous epoch: in the ``"predicted_labels"``
    target mode the rows follow the predictions, and when the set of rows changes the epoch starts a new reference
    (nothing is logged for it).
    """

    name: ClassVar[str] = "drift_probe"
    samples: ClassVar[Samples] = "probe"
    supports_video: ClassVar[bool] = True  # the rank correlation of voxels is as meaningful as of pixels

    def __init__(self) -> None:
        self.drift = ExplanationDrift()
        self.keys: Tensor | None = None  # (2, P) sample index and label of each row of the previous maps

    def update(self, batch: ExplainedBatch) -> None:
        """Nothing to accumulate: the probe's maps arrive whole in :meth:`log`."""

    def log(self, context: EpochContext) -> None:
        """Compare the probe's maps with the previous epoch's and log the mean correlation (averaged over ranks)."""
        maps = context.probe_maps
        correlation = None
        if maps is not None:
            keys = self._row_keys(context, maps.shape[0])
            if self.keys is not None and not torch.equal(keys, self.keys):
                self.drift.reset()  # other rows than last epoch's: a new reference
            self.keys = keys
            correlation = self.drift.update(maps)  # on the maps' device, so sync_dist reduces a device tensor
        if context.trainer.strategy.reduce_boolean_decision(correlation is not None, all=True):
            assert correlation is not None
            context.log({"drift_probe": correlation}, sync_dist=True)

    @staticmethod
    def _row_keys(context: EpochContext, count: int) -> Tensor:
        rows = context.probe_rows if context.probe_rows is not None else torch.arange(count)
        labels = context.probe_labels
        explained = labels if labels is not None and labels.ndim == 1 else torch.zeros(count, dtype=torch.long)
        return torch.stack([rows.cpu().long(), explained.cpu().long()])

    def state_dict(self) -> dict[str, Any]:
        """The previous epoch's probe maps and which (sample, label) each row was."""
        return {**self.drift.state_dict(), "keys": self.keys}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the previous epoch's probe maps and row keys."""
        self.drift.load_state_dict(state_dict)
        self.keys = state_dict.get("keys")
