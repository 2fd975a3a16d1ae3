"""ExplanationMonitor: explain, measure and picture the model's explanations during validation."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import matplotlib.pyplot as plt
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_xai._checks import check_choice, check_positive_int
from lightning_xai._model_state import explanation_mode
from lightning_xai._typing import ForwardFn, TargetType
from lightning_xai.callbacks._evaluation import BatchTransform, EvaluationCallback
from lightning_xai.callbacks.analyses.base import Analysis, EpochContext, ExplainedBatch
from lightning_xai.explainers.base import Explainer
from lightning_xai.functional.relevance_mass import check_region, relevance_mass
from lightning_xai.loggers import PictureLogger, PictureLoggerNotice
from lightning_xai.metrics.base import FaithfulnessMetric
from lightning_xai.metrics.drift import ExplanationDrift
from lightning_xai.metrics.global_attribution import GlobalAttribution
from lightning_xai.metrics.peppr import PEPPR
from lightning_xai.metrics.relevance_mass import RelevanceMass
from lightning_xai.visualize import caption_predictions, heatmap_grid, map_grid, metric_curve_figure


class ExplanationMonitor(EvaluationCallback):
    r"""Explain a fixed probe of validation samples every few epochs, measure faithfulness, log it all.

    On the first validation epoch it runs, the monitor keeps ``probe_size`` validation samples (optionally
    class-balanced) as a fixed probe; it stores them in its ``state_dict`` so a resumed run explains the
    same images. On every epoch it runs (``every_n_epochs``, never in the sanity check, only in the
    ``stages`` asked for) it:

    1. explains the probe with each explainer and logs an image grid of the inputs beside their heatmap
       overlays to every TensorBoard, W&B and MLflow logger (global zero only; others get a one-time notice);
    2. updates each faithfulness metric (one copy per explainer) on the probe, or, with ``max_samples > 0``,
       on up to ``max_samples`` validation samples per epoch and rank, explained as the batches pass;
    3. logs the metrics' synchronised values through ``pl_module.log`` (so ``EarlyStopping``,
       ``ModelCheckpoint`` and :class:`~lightning_xai.FaithfulnessGate` can monitor them) and their mean curves
       as figures, then resets them;
    4. with ``regions``, measures the share of attribution mass inside each named region (domain knowledge:
       "the lesion", "the text overlay") on the same samples as the metrics;
    5. with ``num_labels``, aggregates the maps of the validation samples it explains (``max_samples`` per
       epoch and rank, or all of them with ``max_samples=None``) into per-label and overall global maps
       (:class:`~lightning_xai.metrics.GlobalAttribution`, synchronised across ranks), logs them as image grids,
       the mass each label's global map puts in each region, and, with ``peppr_steps``, the PEPPR curves of
       the probe erased and restored by its label's global map (Engelmann et al. 2021, reconstruction). The
       latest global maps are kept in the ``state_dict`` and saved each epoch as
       ``<log_dir>/global_maps/<explainer>_epoch=<k>.pt``;
    6. with ``track_drift``, logs the rank correlation of the probe's maps (and of the global maps) with the
       previous monitored epoch's, so a change in the model's reasoning shows.

    The model is left as found: explainers and metrics run in eval mode on clones of the batch, outside
    inference mode, without writing any parameter ``.grad``, with hooks removed and the global RNG restored,
    so training with and without the monitor produces bitwise-identical weights.

    Logged keys (``<explainer>`` is the dict key or the explainer's class name, ``<metric>`` the metric's
    ``name``):

    * ``xai/<explainer>/heatmaps`` (image): probe inputs beside heatmap overlays.
    * ``xai/<explainer>/<metric>`` (scalar): the metric's mean over the evaluated samples, for example
      ``xai/GradCAM/deletion_auc``; plus the extra scalars a metric reports in ``summary()`` such as
      ``xai/GradCAM/mif_auc``.
    * ``xai/<explainer>/<metric>_stderr`` (scalar): standard error of that mean, read by the gate's
      ``confidence`` option.
    * ``xai/<explainer>/<metric>_curve`` (image): the metric's mean curves with AUC and 95 % band, where it has curves.
    * ``xai/<explainer>/relevance_mass_<region>``, ``..._<region>_stderr`` and
      ``xai/<explainer>/pointing_game_<region>`` (scalars, with ``regions``): mean share of attribution mass
      inside the region, its standard error, and how often the map's maximum lies inside.
    * ``xai/<explainer>/global/per_label``, ``.../global/overall``, ``.../global/std`` (images, with
      ``num_labels``): the global maps.
    * ``xai/<explainer>/global_relevance_mass_<region>/<label>`` and ``..._<region>_max`` (scalars, with
      ``num_labels`` and ``regions``): share of each label's global map inside the region, and the largest
      over the labels seen (what a "must not look at the overlay" gate monitors).
    * ``xai/<explainer>/peppr/<key>`` (scalars, with ``peppr_steps``): ``erasing_auc``, ``restoration_auc``,
      ``peppr`` and the same for the random ranking (``random_...``); figure ``xai/<explainer>/peppr_curve``.
    * ``xai/<explainer>/drift_probe`` and ``xai/<explainer>/drift_global`` (scalars, with ``track_drift``, from
      the second monitored epoch on): Spearman correlation with the previous monitored epoch's maps.

    Args:
        explainer: an :class:`~lightning_xai.explainers.Explainer`, or a dict ``name -> explainer``.
        metrics: faithfulness metrics evaluated for each explainer (deep-copied per explainer; a
            ``MaxSensitivity`` built without an explainer re-runs the explainer whose maps it measures).
        probe_size: number of validation samples kept as the fixed probe.
        class_balanced: pick the probe round-robin over classes (needs labels) from the first
            ``4 * probe_size`` validation samples, instead of taking the first ``probe_size``.
        every_n_epochs: run on epochs ``0, n, 2n, ...``.
        max_samples: when positive, explain up to this many validation samples per epoch (and rank) as the
            batches pass and evaluate the metrics (and regions) on them instead of on the probe; ``None`` explains
            every validation sample. ``0`` (default) explains the probe only.
        target: ``"predicted"`` (the model's argmax, default), ``"label"`` (the ground truth) or a callable
            ``(outputs) -> (B,)`` scores for regression or embedding models.
        batch_transform: ``batch -> (inputs, labels)``; the default handles tensors, tuples and dicts.
        forward_fn: ``(module, inputs) -> outputs`` when ``module(inputs)`` is not how the model predicts.
        stages: in which trainer functions to run: any of ``"fit"``, ``"validate"``, ``"test"``.
        log_heatmaps: log the heatmap grids.
        log_curves: log the metrics' curve figures.
        heatmap_samples: how many probe samples appear in the heatmap grid.
        regions: named 0/1 ``(H, W)`` masks of the image regions domain knowledge cares about: tensors, nested
            lists, or paths to ``.pt``, ``.npy`` or PNG masks (so a LightningCLI YAML file can state them).
        num_labels: enables global maps over the explained validation samples (needs ``max_samples != 0``).
        global_labels: aggregate by the ground-truth ``"label"`` (default) or by the ``"predicted"`` class.
        global_normalize: how each map is normalised before aggregation: ``"mass"`` (sums to 1), ``"max"`` or None.
        peppr_steps: when set (with ``num_labels``), run PEPPR with this many steps on the probe each epoch.
        track_drift: log the rank correlation of the maps with the previous monitored epoch's.
        save_global_maps: save the global maps as ``.pt`` next to the logs each epoch (global zero).
        on_error: ``"raise"`` to fail the run when explaining or measuring fails (including non-finite
            attributions), ``"warn"`` to warn and skip that explainer for the epoch.
        analyses: further per-epoch analyses (:class:`~lightning_xai.callbacks.analyses.Analysis`), deep-copied per
            explainer like ``metrics``, each fed that explainer's maps and logging under ``xai/<explainer>/``.

    Example:
        >>> from lightning_xai.explainers import Saliency
        >>> monitor = ExplanationMonitor(Saliency(), probe_size=8)
        >>> monitor.explainers
        {'Saliency': Saliency(channel_reduction='abs_sum')}
    """

    def __init__(
        self,
        explainer: Explainer | Mapping[str, Explainer],
        metrics: Sequence[FaithfulnessMetric] | None = None,
        probe_size: int = 16,
        class_balanced: bool = False,
        every_n_epochs: int = 1,
        max_samples: int | None = 0,
        target: Literal["predicted", "label"] | Callable[[Tensor], Tensor] = "predicted",
        batch_transform: BatchTransform | None = None,
        forward_fn: ForwardFn | None = None,
        stages: Sequence[str] = ("fit",),
        log_heatmaps: bool = True,
        log_curves: bool = True,
        heatmap_samples: int = 16,
        regions: Mapping[str, Tensor | str | list[Any]] | None = None,
        num_labels: int | None = None,
        global_labels: Literal["label", "predicted"] = "label",
        global_normalize: Literal["mass", "max"] | None = "mass",
        peppr_steps: int | None = None,
        track_drift: bool = True,
        save_global_maps: bool = True,
        on_error: Literal["raise", "warn"] = "raise",
        analyses: Sequence[Analysis] | None = None,
    ) -> None:
        super().__init__(
            every_n_epochs=every_n_epochs,
            stages=stages,
            batch_transform=batch_transform,
            forward_fn=forward_fn,
            on_error=on_error,
        )
        self.explainers = self._check_explainers(explainer)
        self.metric_templates = list(metrics or [])
        for index, metric in enumerate(self.metric_templates):
            if not isinstance(metric, FaithfulnessMetric):
                raise TypeError(
                    f"`metrics[{index}]` must be a lightning_xai FaithfulnessMetric, got {type(metric).__name__}."
                )
        check_positive_int(probe_size, "probe_size")
        if max_samples is not None:
            check_positive_int(max_samples, "max_samples", minimum=0)
        check_positive_int(heatmap_samples, "heatmap_samples")
        if not callable(target):
            check_choice(target, "target", ("predicted", "label"))
        self.regions = {
            self._check_name(name, "regions"): check_region(region, f"regions[{name!r}]", ndim=(2,))
            for name, region in (regions or {}).items()
        }
        if num_labels is not None:
            check_positive_int(num_labels, "num_labels")
            if max_samples == 0:
                raise ValueError(
                    "`num_labels` enables global maps over the explained validation samples, but `max_samples=0` "
                    "explains the probe only; set `max_samples` to a positive number or None (every sample)."
                )
        elif peppr_steps is not None:
            raise ValueError("`peppr_steps` ranks pixels by the global maps and needs `num_labels`.")
        if peppr_steps is not None:
            check_positive_int(peppr_steps, "peppr_steps")
        check_choice(global_labels, "global_labels", ("label", "predicted"))
        check_choice(global_normalize, "global_normalize", ("mass", "max", None))
        self.num_labels = num_labels
        self.global_labels = global_labels
        self.global_normalize = global_normalize
        self.peppr_steps = peppr_steps
        self.track_drift = track_drift
        self.save_global_maps = save_global_maps
        self.probe_size = probe_size
        self.class_balanced = class_balanced
        self.max_samples = max_samples
        self.target = target
        self.log_heatmaps = log_heatmaps
        self.log_curves = log_curves
        self.heatmap_samples = heatmap_samples

        self.analysis_templates = list(analyses or [])
        seen_names: set[str] = set()
        for index, analysis in enumerate(self.analysis_templates):
            if not isinstance(analysis, Analysis):
                raise TypeError(f"`analyses[{index}]` must be a lightning_xai Analysis, got {type(analysis).__name__}.")
            if analysis.name in seen_names:
                raise ValueError(
                    f"`analyses` holds two analyses named {analysis.name!r}; each may appear once per monitor."
                )
            seen_names.add(analysis.name)
        self.analyses: dict[str, list[Analysis]] = {
            name: [copy.deepcopy(analysis) for analysis in self.analysis_templates] for name in self.explainers
        }
        self.metrics: dict[str, list[FaithfulnessMetric]] = {
            name: [self._metric_for(metric, explainer) for metric in self.metric_templates]
            for name, explainer in self.explainers.items()
        }
        self.region_metrics: dict[str, dict[str, RelevanceMass]] = {
            name: {region: RelevanceMass(mask) for region, mask in self.regions.items()} for name in self.explainers
        }
        self.global_metrics: dict[str, GlobalAttribution] = (
            {name: GlobalAttribution(num_labels, normalize=global_normalize) for name in self.explainers}
            if num_labels is not None
            else {}
        )
        self.global_maps: dict[str, dict[str, Tensor]] = {}
        self.drift: dict[str, dict[str, ExplanationDrift]] = {
            name: {"probe": ExplanationDrift(), "global": ExplanationDrift()} for name in self.explainers
        }
        self._probe_inputs: Tensor | None = None
        self._probe_labels: Tensor | None = None
        self._candidates: list[tuple[Tensor, Tensor | None]] = []
        self._samples_seen = 0
        self._failed: set[str] = set()
        self._notice = PictureLoggerNotice(type(self).__name__)

    # ------------------------------------------------------------------ configuration
    @staticmethod
    def _check_explainers(explainer: Explainer | Mapping[str, Explainer]) -> dict[str, Explainer]:
        if isinstance(explainer, Explainer):
            return {explainer.name: explainer}
        if isinstance(explainer, Mapping) and explainer:
            for name, value in explainer.items():
                ExplanationMonitor._check_name(name, "explainer")
                if not isinstance(value, Explainer):
                    raise TypeError(
                        f"`explainer[{name!r}]` must be a lightning_xai Explainer, got {type(value).__name__}."
                    )
            return dict(explainer)
        raise TypeError(
            "`explainer` must be a lightning_xai Explainer or a non-empty dict name -> Explainer, "
            f"got {type(explainer).__name__}."
        )

    @staticmethod
    def _metric_for(template: FaithfulnessMetric, explainer: Explainer) -> FaithfulnessMetric:
        """A fresh copy of ``template`` for one explainer.

        Metrics that re-run an explainer (``MaxSensitivity``) and were given none are bound to this one.
        """
        metric = copy.deepcopy(template)
        if hasattr(metric, "explainer") and metric.explainer is None:
            metric.explainer = explainer
        return metric

    @staticmethod
    def _check_name(name: object, argument: str) -> str:
        """Names become parts of logged keys: non-empty strings without '/'."""
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"`{argument}` dict keys must be non-empty names without '/', got {name!r}.")
        return name

    @property
    def state_key(self) -> str:
        """Distinguishes monitors with different explainers and metrics in a checkpoint."""
        return self._generate_state_key(
            explainers=sorted(self.explainers), metrics=[metric.name for metric in self.metric_templates]
        )

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Move the metrics to the module's device."""
        for metric in self._all_metrics():
            metric.to(pl_module.device)

    def _all_metrics(self) -> list[Any]:
        """Every torchmetrics state the monitor keeps for one epoch."""
        metrics: list[Any] = [metric for metrics in self.metrics.values() for metric in metrics]
        metrics += [metric for regions in self.region_metrics.values() for metric in regions.values()]
        metrics += [metric for analyses in self.analyses.values() for a in analyses for metric in a.metrics()]
        return metrics + list(self.global_metrics.values())

    # ------------------------------------------------------------------ the work
    def _on_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._samples_seen = 0
        self._failed = set()
        for metric in self._all_metrics():
            metric.reset()
        for analyses in self.analyses.values():
            for analysis in analyses:
                analysis.reset()

    def _unpack(self, batch: Any, limit: int) -> tuple[Tensor, Tensor | None]:
        """The first ``limit`` samples of a batch as ``(inputs, labels)``, cloned out of inference mode."""
        inputs, labels = self.batch_transform(batch)
        if not isinstance(inputs, Tensor):
            raise TypeError(
                f"`batch_transform` must return (inputs: Tensor, labels), got inputs {type(inputs).__name__}."
            )
        if labels is not None and (not isinstance(labels, Tensor) or labels.shape[0] != inputs.shape[0]):
            raise ValueError(
                "`batch_transform` must return labels as a tensor with one row per input, or None; got "
                f"{type(labels).__name__} {tuple(getattr(labels, 'shape', ()))} for inputs {tuple(inputs.shape)}."
            )
        with torch.inference_mode(False):
            inputs = inputs[:limit].detach().clone()
            labels = labels[:limit].detach().clone() if labels is not None else None
        return inputs, labels

    def _resolve_target(self, model: nn.Module, inputs: Tensor, labels: Tensor | None) -> TargetType:
        if callable(self.target):
            return self.target
        if self.target == "label":
            if labels is None:
                raise ValueError(
                    "`target='label'` needs labels, but `batch_transform` returned none; use target='predicted' "
                    "or a `batch_transform` that returns (inputs, labels)."
                )
            return labels.long()
        with explanation_mode(model, grad=False):
            outputs = model(inputs)
        if not isinstance(outputs, Tensor) or outputs.ndim != 2:
            shape = tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__
            raise ValueError(
                f"`target='predicted'` needs model outputs of shape (B, num_classes), got {shape}; pass "
                "`forward_fn` to pick the logits or a callable `target` for other outputs."
            )
        return outputs.argmax(dim=1)

    def _handle_error(self, name: str, error: Exception) -> None:
        if self.on_error == "raise":
            raise error
        self._failed.add(name)
        rank_zero_warn(f"ExplanationMonitor: explainer {name!r} failed this epoch and is skipped: {error}")

    def _on_batch_end(self, trainer: Trainer, pl_module: LightningModule, batch: Any, dataloader_idx: int) -> None:
        if self._should_skip(trainer):
            return
        probe_wanted = 0
        if self._probe_inputs is None:
            pool = 4 * self.probe_size if self.class_balanced else self.probe_size
            probe_wanted = pool - sum(x.shape[0] for x, _ in self._candidates)
        everything = 1 << 62
        samples_wanted = everything if self.max_samples is None else self.max_samples - self._samples_seen
        if probe_wanted <= 0 and samples_wanted <= 0:
            return
        inputs, labels = self._unpack(batch, max(probe_wanted, samples_wanted))
        if probe_wanted > 0:
            if self.class_balanced and labels is None:
                raise ValueError("`class_balanced=True` needs labels, but `batch_transform` returned none.")
            self._candidates.append((inputs[:probe_wanted], labels[:probe_wanted] if labels is not None else None))
        if samples_wanted > 0:
            inputs, labels = inputs[:samples_wanted], labels[:samples_wanted] if labels is not None else None
            self._samples_seen += inputs.shape[0]
            self._explain_and_measure(pl_module, inputs, labels, from_batches=True)

    def _finalize_probe(self) -> None:
        if self._probe_inputs is not None or not self._candidates:
            return
        inputs = torch.cat([x for x, _ in self._candidates])
        labels = (
            None if self._candidates[0][1] is None else torch.cat([y for _, y in self._candidates if y is not None])
        )
        order = torch.arange(inputs.shape[0], device=inputs.device)
        if self.class_balanced and labels is not None:
            # Round-robin over classes: the k-th sample of every class before the (k+1)-th of any.
            rank_in_class = torch.zeros_like(labels)
            for value in labels.unique():
                members = (labels == value).nonzero().flatten()
                rank_in_class[members] = torch.arange(members.numel(), device=labels.device)
            order = torch.argsort(rank_in_class * (int(labels.max()) + 1) + labels, stable=True)
        order = order[: self.probe_size]
        self._probe_inputs = inputs[order]
        self._probe_labels = labels[order] if labels is not None else None
        self._candidates = []

    def _explain_and_measure(
        self, pl_module: LightningModule, inputs: Tensor, labels: Tensor | None, from_batches: bool
    ) -> dict[str, Tensor]:
        """Explain ``inputs`` with every explainer and feed the epoch's metrics.

        Faithfulness and region metrics take the samples the monitor measures on (the streamed batches with
        ``max_samples``, the probe otherwise); global maps take the streamed batches only.
        """
        model = self._model(pl_module)
        maps: dict[str, Tensor] = {}
        measure = from_batches == (self.max_samples != 0)
        try:
            target = self._resolve_target(model, inputs, labels)
            group_labels = self._aggregation_labels(target, labels) if from_batches and self.global_metrics else None
        except Exception as error:
            for name in self.explainers:
                self._handle_error(name, error)
            return maps
        for name, explainer in self.explainers.items():
            if name in self._failed:
                continue
            try:
                maps[name] = explainer(model, inputs, target)
                if measure:
                    for metric in self.metrics[name]:
                        metric.update(model, inputs, maps[name], target)
                    for region_metric in self.region_metrics[name].values():
                        region_metric.update(maps[name])
                if group_labels is not None:
                    self.global_metrics[name].update(maps[name], group_labels)
                self._update_analyses(name, model, inputs, maps[name], target, labels, from_batches, measure)
            except Exception as error:
                maps.pop(name, None)
                self._handle_error(name, error)
        return maps

    def _update_analyses(
        self,
        name: str,
        model: nn.Module,
        inputs: Tensor,
        maps: Tensor,
        target: TargetType,
        labels: Tensor | None,
        from_batches: bool,
        measure: bool,
    ) -> None:
        wanted = {"streamed": from_batches, "measured": measure, "probe": not from_batches}
        analyses = [analysis for analysis in self.analyses[name] if wanted[analysis.samples]]
        if not analyses:
            return
        try:
            groups: Tensor | None = self._aggregation_labels(target, labels)
        except ValueError:
            groups = None
        batch = ExplainedBatch(model, inputs, maps, target, labels, groups, probe=not from_batches)
        for analysis in analyses:
            analysis.update(batch)

    def _aggregation_labels(self, target: TargetType, labels: Tensor | None) -> Tensor:
        if self.global_labels == "label":
            if labels is None:
                raise ValueError(
                    "`global_labels='label'` needs labels, but `batch_transform` returned none; use "
                    "global_labels='predicted' or a `batch_transform` that returns (inputs, labels)."
                )
            return labels
        if not isinstance(target, Tensor):
            raise ValueError("`global_labels='predicted'` needs class predictions, but `target` is a callable.")
        return target

    def _on_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._should_skip(trainer):
            return
        self._finalize_probe()
        if self._probe_inputs is None:
            rank_zero_warn("ExplanationMonitor: no validation samples were seen this epoch; nothing to explain.")
            return
        self._notice.maybe_notify(trainer)
        inputs = self._probe_inputs.to(pl_module.device)
        labels = self._probe_labels.to(pl_module.device) if self._probe_labels is not None else None
        probe_maps = self._explain_and_measure(pl_module, inputs, labels, from_batches=False)
        pictures = PictureLogger(trainer, owner=type(self).__name__)
        step = trainer.global_step
        shown = slice(0, self.heatmap_samples)
        captions = (  # predicted class and probability for the captions: one no-grad forward of the probe
            caption_predictions(self._model(pl_module), inputs[shown])
            if self.log_heatmaps and pictures.active and probe_maps
            else None
        )
        for name, maps in probe_maps.items():
            if self.log_heatmaps and pictures.active:
                grid = heatmap_grid(
                    inputs[shown].detach().cpu(),
                    maps[shown].cpu(),
                    labels=labels[shown].cpu() if labels is not None else None,
                    predictions=captions[0] if captions else None,
                    probabilities=captions[1] if captions else None,
                    explainer=name,
                )
                pictures.image(f"xai/{name}/heatmaps", grid, step)
        for name in self.explainers:
            # Every rank must take part in the metrics' synchronisation, or none: agree first.
            if not trainer.strategy.reduce_boolean_decision(name not in self._failed, all=True):
                continue
            try:
                if self.track_drift:
                    self._log_drift(trainer, pl_module, name, "probe", probe_maps[name])
                for metric in self.metrics[name]:
                    self._log_metric(pl_module, pictures, step, name, metric)
                for region, region_metric in self.region_metrics[name].items():
                    values = region_metric.summary()
                    self._log_scalars(pl_module, name, {f"{key}_{region}": value for key, value in values.items()})
                if name in self.global_metrics:
                    self._log_global(trainer, pl_module, pictures, step, name, model=self._model(pl_module))
                if self.analyses[name]:
                    context = EpochContext(
                        trainer=trainer,
                        pl_module=pl_module,
                        explainer_name=name,
                        explainer=self.explainers[name],
                        model=self._model(pl_module),
                        pictures=pictures,
                        regions=self.regions,
                        probe_inputs=inputs,
                        probe_labels=labels,
                        probe_maps=probe_maps.get(name),
                    )
                    for analysis in self.analyses[name]:
                        analysis.log(context)
            except Exception as error:
                self._handle_error(name, error)
        for metric in self._all_metrics():
            metric.reset()

    @staticmethod
    def _log_scalars(
        pl_module: LightningModule, name: str, values: Mapping[str, Tensor], sync_dist: bool = False
    ) -> None:
        """Log ``xai/<name>/<key>``; metric values are already synchronised, per-rank values ask for ``sync_dist``."""
        for key, value in values.items():
            pl_module.log(f"xai/{name}/{key}", value.float(), on_step=False, on_epoch=True, sync_dist=sync_dist)

    def _log_metric(
        self, pl_module: LightningModule, pictures: PictureLogger, step: int, name: str, metric: Any, prefix: str = ""
    ) -> None:
        """Log a metric's ``summary()`` as ``xai/<name>/<prefix><key>`` and its ``curves()`` as one figure."""
        self._log_scalars(pl_module, name, {f"{prefix}{key}": value for key, value in metric.summary().items()})
        curves = metric.curves() if self.log_curves else {}
        bands = metric.curve_bands() if curves and hasattr(metric, "curve_bands") else {}  # every rank: it syncs
        if curves and pictures.active:
            figure = metric_curve_figure(metric, title=f"{name}: {metric.name}", curves=curves, bands=bands)
            pictures.figure(f"xai/{name}/{metric.name}_curve", figure, step)
            plt.close(figure)

    def _log_drift(self, trainer: Trainer, pl_module: LightningModule, name: str, kind: str, maps: Tensor) -> None:
        correlation = self.drift[name][kind].update(maps.detach().cpu())
        if kind == "global":  # the synchronised global maps are the same on every rank
            if correlation is not None:
                self._log_scalars(pl_module, name, {"drift_global": correlation})
        # Each rank has its own probe: the drift is averaged over the ranks, logged only when every rank has one.
        elif trainer.strategy.reduce_boolean_decision(correlation is not None, all=True):
            assert correlation is not None
            self._log_scalars(pl_module, name, {"drift_probe": correlation}, sync_dist=True)

    def _log_global(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        pictures: PictureLogger,
        step: int,
        name: str,
        model: nn.Module,
    ) -> None:
        """Compute the synchronised global maps, log them, their region masses, drift and PEPPR; save them."""
        result = {key: value.detach() for key, value in self.global_metrics[name].compute().items()}
        self.global_maps[name] = {key: value.cpu() for key, value in result.items()}
        seen = (result["count"] > 0).nonzero().flatten().tolist()
        for region, mask in self.regions.items():
            masses = relevance_mass(result["per_label"], mask.to(result["per_label"].device))
            values = {f"global_relevance_mass_{region}/{label}": masses[label] for label in seen}
            if seen:
                values[f"global_relevance_mass_{region}_max"] = masses[seen].max()
            self._log_scalars(pl_module, name, values)
        if self.track_drift:
            self._log_drift(trainer, pl_module, name, "global", result["per_label"])
        if pictures.active:
            counts = result["count"].cpu()
            grids = {
                "per_label": map_grid(result["per_label"], counts=counts, title=f"{name}: global map per label"),
                "overall": map_grid(result["overall"].unsqueeze(0), titles=[f"all labels (n={int(counts.sum())})"]),
                "std": map_grid(result["std"], counts=counts, title=f"{name}: std of the maps per label"),
            }
            for key, grid in grids.items():
                pictures.image(f"xai/{name}/global/{key}", grid, step)
        if self.peppr_steps is not None and self._probe_inputs is not None and seen:
            inputs = self._probe_inputs.to(pl_module.device)
            labels = self._probe_labels.to(pl_module.device) if self._probe_labels is not None else None
            group = self._aggregation_labels(self._resolve_target(model, inputs, labels), labels)
            peppr = PEPPR(result["per_label"], steps=self.peppr_steps).to(pl_module.device)
            peppr.update(model, inputs, group)
            self._log_metric(pl_module, pictures, step, name, peppr, prefix="peppr/")
        if self.save_global_maps:
            # ``trainer.log_dir`` broadcasts from rank zero: every rank asks, only global zero writes.
            directory = os.path.join(trainer.log_dir or trainer.default_root_dir, "global_maps")
        if self.save_global_maps and trainer.is_global_zero:
            os.makedirs(directory, exist_ok=True)
            payload = {"epoch": trainer.current_epoch, "global_step": step, **self.global_maps[name]}
            torch.save(payload, os.path.join(directory, f"{name}_epoch={trainer.current_epoch}.pt"))

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The probe (on the CPU), the latest global maps and the drift references, for an identical resume."""
        return {
            "probe_inputs": None if self._probe_inputs is None else self._probe_inputs.detach().cpu(),
            "probe_labels": None if self._probe_labels is None else self._probe_labels.detach().cpu(),
            "global_maps": self.global_maps,
            "drift": {
                name: {kind: d.state_dict() for kind, d in drifts.items()} for name, drifts in self.drift.items()
            },
            "analyses": {
                name: {analysis.name: analysis.state_dict() for analysis in analyses}
                for name, analyses in self.analyses.items()
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the probe, the global maps and the drift references (keys missing in old checkpoints are skipped)."""
        self._probe_inputs = state_dict.get("probe_inputs")
        self._probe_labels = state_dict.get("probe_labels")
        self.global_maps = dict(state_dict.get("global_maps", {}))
        for name, drifts in state_dict.get("drift", {}).items():
            for kind, drift_state in drifts.items():
                if name in self.drift and kind in self.drift[name]:
                    self.drift[name][kind].load_state_dict(drift_state)
        for name, states in state_dict.get("analyses", {}).items():
            for analysis in self.analyses.get(name, []):
                if analysis.name in states:
                    analysis.load_state_dict(states[analysis.name])
