"""Global maps: per-label aggregates of the validation explanations, their region masses, drift and PEPPR."""

from __future__ import annotations

import os
from typing import Any, ClassVar

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_xai._targets import ScoreKind
from lightning_xai.callbacks.analyses.base import Analysis, EpochContext, ExplainedBatch, Samples
from lightning_xai.functional.global_attribution import Normalization
from lightning_xai.functional.relevance_mass import relevance_mass
from lightning_xai.metrics.drift import ExplanationDrift
from lightning_xai.metrics.global_attribution import GlobalAttribution
from lightning_xai.metrics.peppr import PEPPR
from lightning_xai.visualize import map_grid


class GlobalMaps(Analysis):
    """Per-label global maps of the streamed validation samples (Engelmann et al. 2021, reconstructed).

    Each epoch it aggregates the maps of the validation samples the monitor explains as batches pass, by their
    aggregation labels (class indices or multi-hot), in a :class:`~lightning_xai.metrics.GlobalAttribution`
    synchronised across ranks, then logs:

    * images ``global/per_label``, ``global/overall``, ``global/std``;
    * with the monitor's ``regions``: ``global_relevance_mass_<region>/<label>`` for each label seen and
      ``global_relevance_mass_<region>_max``, the largest (what a "must not look at the overlay" gate watches);
    * with ``track_drift``: ``drift_global``, the Spearman correlation with the previous monitored epoch's maps;
    * with ``peppr_steps``: PEPPR of the probe erased and restored by its label's global map, ``peppr/<key>`` and the
      ``peppr_curve`` figure.

    The latest maps are kept in :attr:`latest` (and the checkpoint) and, with ``save``, written by global zero as
    ``<log_dir>/global_maps/<explainer>_epoch=<k>.pt`` (not under ``fast_dev_run``, as Lightning writes no
    checkpoint then; a file that cannot be written gives a warning naming the path and never stops training). Like
    Lightning's ``ModelCheckpoint``, it never overwrites a file an earlier run left there (with ``logger=False``
    every run shares ``default_root_dir``): such a name gets a ``-v1``, ``-v2``, ... suffix.

    Args:
        num_labels: the number of labels ``L``.
        normalize: per-image normalisation before aggregation (``"mass"``, ``"max"`` or None).
        peppr_steps: erasing steps of PEPPR, or None for no PEPPR.
        peppr_score: the score PEPPR follows (``"probability"``; ``"sigmoid"`` for multi-label heads).
        track_drift: log ``drift_global``.
        save: save the maps as ``.pt`` next to the logs.
    """

    name: ClassVar[str] = "global_maps"
    samples: ClassVar[Samples] = "streamed"

    def __init__(
        self,
        num_labels: int,
        normalize: Normalization | None = "mass",
        peppr_steps: int | None = None,
        track_drift: bool = True,
        save: bool = True,
        peppr_score: ScoreKind = "probability",
    ) -> None:
        self.aggregate = GlobalAttribution(num_labels, normalize=normalize)
        self.num_labels = num_labels
        self.peppr_steps = peppr_steps
        self.track_drift = track_drift
        self.save = save
        self.peppr_score = peppr_score
        self.drift = ExplanationDrift()
        self.latest: dict[str, Tensor] = {}
        self._fed = False
        self._written: set[str] = set()  # the files this run wrote (a later epoch of the same run may replace them)

    def metrics(self) -> list[GlobalAttribution]:  # type: ignore[override]
        """The synchronised aggregate."""
        return [self.aggregate]

    def reset(self) -> None:
        """Start a new epoch's aggregate."""
        super().reset()
        self._fed = False

    def update(self, batch: ExplainedBatch) -> None:
        """Add the batch's maps to the sums of their aggregation labels."""
        if batch.groups is None:
            raise ValueError(
                "Global maps need labels to aggregate by: `global_labels='label'` needs a `batch_transform` that "
                "returns (inputs, labels), and `global_labels='predicted'` needs class predictions (not a callable "
                "`target`)."
            )
        self.aggregate.update(batch.maps, batch.groups)
        self._fed = True

    def log(self, context: EpochContext) -> None:
        """Compute the synchronised maps and log them, their region masses, drift and PEPPR; save them."""
        # Every rank takes part in compute(), or none: a rank that explained no sample has unsized states.
        if not context.trainer.strategy.reduce_boolean_decision(self._fed, all=True):
            return
        result = {key: value.detach() for key, value in self.aggregate.compute().items()}
        self.latest = {key: value.cpu() for key, value in result.items()}
        per_label = result["per_label"]
        seen = (result["count"] > 0).nonzero().flatten().tolist()
        for region, mask in context.regions.items():
            masses = relevance_mass(per_label, mask.to(per_label.device))
            values = {f"global_relevance_mass_{region}/{label}": masses[label] for label in seen}
            if seen:
                values[f"global_relevance_mass_{region}_max"] = masses[seen].max()
            context.log(values)
        if self.track_drift:
            correlation = self.drift.update(per_label)  # the same synchronised maps on every rank, on their device
            if correlation is not None:
                context.log({"drift_global": correlation})
        if context.pictures.active:
            counts, name = result["count"].cpu(), context.explainer_name
            per_label_grid = map_grid(
                per_label, counts=counts, title=f"{name}: global map per label", dtype=torch.uint8
            )
            context.image("global/per_label", per_label_grid)
            overall = [f"all labels (n={int(counts.sum())})"]
            context.image("global/overall", map_grid(result["overall"].unsqueeze(0), titles=overall, dtype=torch.uint8))
            std_grid = map_grid(
                result["std"], counts=counts, title=f"{name}: std of the maps per label", dtype=torch.uint8
            )
            context.image("global/std", std_grid)
        if self.peppr_steps is not None and context.probe_inputs is not None and seen:
            if context.probe_groups is None:
                raise ValueError("PEPPR needs the probe's labels to pick each sample's global map.")
            peppr = PEPPR(per_label, steps=self.peppr_steps, score=self.peppr_score).to(context.probe_inputs.device)
            peppr.update(context.model, context.probe_inputs, context.probe_groups)
            context.metric(peppr, prefix="peppr/")
        if self.save:
            self._save(context)

    def _save(self, context: EpochContext) -> None:
        trainer = context.trainer
        if getattr(trainer, "fast_dev_run", False):
            return
        # ``trainer.log_dir`` broadcasts from rank zero: every rank asks, only global zero writes.
        directory = os.path.join(trainer.log_dir or trainer.default_root_dir, "global_maps")
        if not trainer.is_global_zero:
            return
        stem = os.path.join(directory, f"{context.explainer_name}_epoch={trainer.current_epoch}")
        path, version = f"{stem}.pt", 0
        while path not in self._written and os.path.exists(path):  # left by an earlier run: keep it
            version += 1
            path = f"{stem}-v{version}.pt"
        try:
            os.makedirs(directory, exist_ok=True)
            torch.save({"epoch": trainer.current_epoch, "global_step": trainer.global_step, **self.latest}, path)
            self._written.add(path)
        except OSError as error:
            rank_zero_warn(
                f"ExplanationMonitor: could not save the global maps of {context.explainer_name!r} to {path!r} "
                f"({error}); training goes on. Pass save_global_maps=False to stop saving them."
            )

    def state_dict(self) -> dict[str, Any]:
        """The latest global maps and the drift reference."""
        return {"latest": self.latest, "drift": self.drift.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the latest global maps and the drift reference."""
        self.latest = dict(state_dict.get("latest", {}))
        self.drift.load_state_dict(state_dict.get("drift", {}))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_labels={self.num_labels}, peppr_steps={self.peppr_steps})"
