"""Probe drift: has the model's reasoning about the fixed probe changed since the previous monitored epoch?"""

from __future__ import annotations

from typing import Any, ClassVar

from lightning_xai.callbacks.analyses.base import Analysis, EpochContext, ExplainedBatch, Samples
from lightning_xai.metrics.drift import ExplanationDrift


class ProbeDrift(Analysis):
    """Spearman rank correlation of the probe's maps with the previous monitored epoch's.

    Logs ``drift_probe`` from the second monitored epoch on, in ``[-1, 1]``; higher means a more stable pixel ranking.
    Under DDP each rank has its own probe: the value is averaged over the ranks, and logged only when every rank has
    a previous epoch to compare with. The previous maps are kept in the checkpoint.
    """

    name: ClassVar[str] = "drift_probe"
    samples: ClassVar[Samples] = "probe"

    def __init__(self) -> None:
        self.drift = ExplanationDrift()

    def update(self, batch: ExplainedBatch) -> None:
        """Nothing to accumulate: the probe's maps arrive whole in :meth:`log`."""

    def log(self, context: EpochContext) -> None:
        """Compare the probe's maps with the previous epoch's and log the mean correlation (averaged over ranks)."""
        maps = context.probe_maps
        correlation = None if maps is None else self.drift.update(maps.detach().cpu())
        if context.trainer.strategy.reduce_boolean_decision(correlation is not None, all=True):
            assert correlation is not None
            context.log({"drift_probe": correlation}, sync_dist=True)

    def state_dict(self) -> dict[str, Any]:
        """The previous epoch's probe maps."""
        return self.drift.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the previous epoch's probe maps."""
        self.drift.load_state_dict(state_dict)
