"""ExplanationMonitor: explain, measure and picture the model's explanations during validation."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_xai._checks import check_bool, check_choice, check_image_batch, check_positive_int
from lightning_xai._model_state import explanation_mode
from lightning_xai._targets import class_index_labels, multi_hot_labels
from lightning_xai._typing import ForwardFn, TargetType
from lightning_xai.callbacks._evaluation import BatchTransform, EvaluationCallback
from lightning_xai.callbacks.analyses.base import Analysis, EpochContext, ExplainedBatch
from lightning_xai.callbacks.analyses.drift import ProbeDrift
from lightning_xai.callbacks.analyses.global_maps import GlobalMaps
from lightning_xai.callbacks.analyses.regions import RegionMasses
from lightning_xai.explainers.base import Explainer
from lightning_xai.functional.relevance_mass import check_region
from lightning_xai.loggers import PictureLogger, PictureLoggerNotice
from lightning_xai.metrics.base import FaithfulnessMetric
from lightning_xai.visualize import (
    caption_predictions,
    heatmap_grid,
    predicted_classes,
    upscale,
    video_heatmap_frames,
    video_heatmap_grid,
)

#: What the monitor explains when ``target`` is not a callable (see the class docstring).
TargetMode = Literal["predicted", "label", "positive_labels", "predicted_labels"]
TARGET_MODES: tuple[str, ...] = ("predicted", "label", "positive_labels", "predicted_labels")


class _PredictedClass:
    """A callable target for the ``"predicted"`` mode that an explainer's own forward resolves.

    Given to an explainer whose :attr:`~lightning_xai.explainers.base.Explainer.scores_one_forward` is set, it picks
    each sample's argmax class from the outputs of that one forward, keeps them (``indices``, ``outputs``) and
    returns their scores, so the explainer explains the predicted class without the monitor forwarding the batch
    once more. The maps are those of the class-index target (the same scores, the same gradients).
    """

    def __init__(self) -> None:
        self.indices: Tensor | None = None
        self.outputs: Tensor | None = None

    def __call__(self, outputs: Tensor) -> Tensor:
        if self.indices is not None:
            raise RuntimeError(
                "The monitor's predicted-class target was applied to a second forward; only explainers with "
                "`scores_one_forward = True` (one forward of the inputs as given) may resolve it."
            )
        _check_class_outputs(outputs, "predicted")
        self.outputs = outputs.detach()
        self.indices = self.outputs.argmax(dim=1)
        return outputs.gather(1, self.indices.view(-1, 1)).squeeze(1)

    def picked(self) -> tuple[Tensor, Tensor]:
        """``(indices, outputs)``: the classes picked and the outputs they came from (after the forward)."""
        if self.indices is None or self.outputs is None:
            raise RuntimeError("The predicted class has not been picked yet: no forward has applied the target.")
        return self.indices, self.outputs


def _check_class_outputs(outputs: Any, mode: str) -> None:
    """Raise unless ``outputs`` are ``(B, num_classes)`` logits, as the ``"predicted*"`` target modes need."""
    if not isinstance(outputs, Tensor) or outputs.ndim != 2:
        shape = tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__
        raise ValueError(
            f"`target={mode!r}` needs model outputs of shape (B, num_classes), got {shape}; pass "
            "`forward_fn` to pick the logits or a callable `target` for other outputs."
        )


@dataclass
class _Explained:
    """What one round of explaining gave: the maps of each explainer that succeeded, and the rows they explain.

    The multi-label target modes repeat a sample once per label, so ``inputs`` are rows, ``labels`` the label each row
    explains, and ``rows`` the index of each row's sample; ``target`` is None when it could not be resolved.
    """

    maps: dict[str, Tensor]
    inputs: Tensor
    target: TargetType | None
    labels: Tensor | None
    groups: Tensor | None
    rows: Tensor | None
    outputs: Tensor | None = None  # the (detached) outputs the predicted target came from, reused for captions


_T = TypeVar("_T")


def _per_label_scores(component: _T) -> _T:
    """A copy of a metric or explainer whose ``score="probability"`` is ``"sigmoid"`` (per label); others as given.

    In a multi-label head the probability of a label is its own sigmoid; the softmax over labels that
    ``"probability"`` means for a multi-class head would make the labels compete.
    """
    if getattr(component, "score", None) != "probability":
        return component if isinstance(component, Explainer) else copy.deepcopy(component)
    copied = copy.deepcopy(component)
    copied.score = "sigmoid"  # type: ignore[attr-defined]
    return copied


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
       previous monitored epoch's, so a change in the model's reasoning shows;
    7. runs every further :class:`~lightning_xai.callbacks.analyses.Analysis` given in ``analyses`` (SpRAy clusters,
       concepts, ...), each on the samples it asks for, logging under ``xai/<explainer>/``.

    Steps 4 to 6 are built-in analyses (:class:`~lightning_xai.callbacks.analyses.RegionMasses`,
    :class:`~lightning_xai.callbacks.analyses.GlobalMaps`, :class:`~lightning_xai.callbacks.analyses.ProbeDrift`)
    that the arguments of the same names configure; the monitor holds one copy of each analysis per explainer, as a
    ``MetricCollection`` holds metrics, and keeps their states in its checkpoint.

    What is explained (``target``): ``"predicted"``, the argmax class of a ``(B, num_classes)`` head (index 0 of a
    single-logit ``(B, 1)`` head, i.e. the logit), picked by the first explainer's own forward where it has one
    (Grad-CAM, Grad-CAM++, Saliency, Input x Gradient: ``scores_one_forward``) and else by one no-grad forward;
    ``"label"``, the ground-truth class index (integer labels, or floats that are whole numbers; anything else is
    refused rather than truncated); ``"positive_labels"``, every positive label of multi-hot ``(B, L)`` labels;
    ``"predicted_labels"``, every label of a multi-label head whose logit is above 0 (sigmoid probability above 0.5); or
    a callable ``(outputs) -> (B,)`` for regression or embedding heads. The two multi-label modes explain a sample once
    per label, so the maps, metrics and global maps count explanations (sample, label), and global maps aggregate each
    map under the label it explains; there the monitor's copies of the metrics and black-box explainers that score
    ``"probability"`` score each label's sigmoid instead (``score="sigmoid"``), as does PEPPR. A single-logit head's
    ``"probability"`` is its sigmoid anyway.

    Clips ``(B, C, T, H, W)`` (video classifiers) are monitored the same way with the explainers and metrics that
    have a spatio-temporal meaning (``supports_video``: the gradient methods, Grad-CAM(++) on a spatio-temporal layer,
    Occlusion, RISE; DeletionAUC, InsertionAUC); any other is refused by name on the first clip batch. The heatmaps
    are logged as a video summary (TensorBoard's ``add_video``, where ``moviepy<2`` is importable) or else as a
    frame grid image (samples along the rows, frames along the columns,
    :func:`~lightning_xai.visualize.video_heatmap_grid`) under the same ``xai/<explainer>/heatmaps`` tag. The probe
    drift runs on the ``(T, H, W)`` maps; the analyses defined for image maps (global maps and PEPPR, region
    masses, SpRAy, concepts) are skipped for clips with a one-time warning.

    Under DDP, the probe and ``max_samples`` are per rank: each rank keeps ``probe_size`` samples of its own shard
    (the heatmaps show global zero's), and the synchronised metrics and global maps cover the samples of every rank,
    so with ``N`` processes they average over ``N`` times as many samples as one process would.

    The model is left as found: explainers and metrics run in eval mode on clones of the batch, outside
    inference mode, without writing any parameter ``.grad``, with hooks removed and the global RNG restored,
    so training with and without the monitor produces bitwise-identical weights.

    Logged keys (``<explainer>`` is the dict key or the explainer's class name, ``<metric>`` the metric's
    ``name``):

    * ``xai/<explainer>/heatmaps`` (image): probe inputs beside heatmap overlays; for clips a video summary where
      TensorBoard can write one (``moviepy<2``), else a frame grid (clips along rows, frames along columns).
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
        every_n_epochs: inside ``fit``, run in every ``n``-th epoch that validates, starting with the first (it counts
            validated epochs, so it meets ``check_val_every_n_epoch``); ``validate()`` and ``test()`` always run.
        max_samples: when positive, explain up to this many validation samples per epoch (and rank) as the
            batches pass and evaluate the metrics (and regions) on them instead of on the probe; ``None`` explains
            every validation sample. ``0`` (default) explains the probe only.
        target: ``"predicted"`` (the model's argmax, default), ``"label"`` (the ground truth),
            ``"positive_labels"`` or ``"predicted_labels"`` (multi-label: one explanation per label), or a callable
            ``(outputs) -> (B,)`` scores for regression or embedding models (see above).
        batch_transform: ``batch -> (inputs, labels)``; the default handles tensors, tuples and dicts.
        forward_fn: ``(module, inputs) -> outputs`` when ``module(inputs)`` is not how the model predicts.
        stages: in which trainer functions to run: a list of any of ``"fit"``, ``"validate"``, ``"test"``.
        log_heatmaps: log the heatmap grids.
        log_curves: log the metrics' curve figures.
        heatmap_samples: how many probe samples appear in the heatmap grid.
        regions: named 0/1 ``(H, W)`` masks of the image regions domain knowledge cares about (not all zero):
            tensors, nested lists, or paths to ``.pt``, ``.npy`` or PNG masks (so a LightningCLI YAML file can state
            them).
        num_labels: enables global maps over the explained validation samples (needs ``max_samples != 0``).
        global_labels: aggregate by the ground-truth ``"label"`` (default) or by the ``"predicted"`` class.
        global_normalize: how each map is normalised before aggregation: ``"mass"`` (sums to 1), ``"max"`` or None.
        peppr_steps: when set (with ``num_labels``), run PEPPR with this many steps on the probe each epoch.
        track_drift: log the rank correlation of the maps with the previous monitored epoch's.
        save_global_maps: save the global maps as ``.pt`` next to the logs each epoch (global zero; not under
            ``fast_dev_run``; a failure to write warns with the path and never stops training).
        on_error: ``"raise"`` to fail the run when explaining or measuring fails (including non-finite
            attributions), ``"warn"`` to warn and skip that explainer for the epoch. Validation inputs holding NaN or
            infinite values raise, or are skipped with a warning.
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
        target: TargetMode | Callable[[Tensor], Tensor] = "predicted",
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
        multi_label = target in ("positive_labels", "predicted_labels")
        if multi_label:  # each label of a multi-label head is scored by its own sigmoid, not a softmax over labels
            self.explainers = {name: _per_label_scores(value) for name, value in self.explainers.items()}
        self.metric_templates = self._check_list(metrics, "metrics", FaithfulnessMetric, "FaithfulnessMetric")
        self._check_unique([metric.name for metric in self.metric_templates], "metrics", "metric `name`")
        analysis_templates = self._check_list(analyses, "analyses", Analysis, "Analysis")
        check_positive_int(probe_size, "probe_size")
        if max_samples is not None:
            check_positive_int(max_samples, "max_samples", minimum=0)
        check_positive_int(heatmap_samples, "heatmap_samples")
        if not callable(target):
            check_choice(target, "target", TARGET_MODES)
        for flag in ("class_balanced", "log_heatmaps", "log_curves", "track_drift", "save_global_maps"):
            check_bool(locals()[flag], flag)
        self.regions = self._check_regions(regions)
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

        # The built-in analyses the arguments above ask for, then the user's; one copy of each per explainer.
        builtin: list[Analysis] = []
        if self.regions:
            builtin.append(RegionMasses(self.regions))
        if track_drift:
            builtin.append(ProbeDrift())
        if num_labels is not None:
            builtin.append(
                GlobalMaps(
                    num_labels,
                    global_normalize,
                    peppr_steps,
                    track_drift,
                    save_global_maps,
                    peppr_score="sigmoid" if multi_label else "probability",
                )
            )
        self.analysis_templates = builtin + analysis_templates
        self._check_unique([analysis.name for analysis in self.analysis_templates], "analyses", "analysis `name`")
        self.analyses: dict[str, list[Analysis]] = {
            name: [copy.deepcopy(analysis) for analysis in self.analysis_templates] for name in self.explainers
        }
        self.metrics: dict[str, list[FaithfulnessMetric]] = {
            name: [self._metric_for(metric, explainer, multi_label) for metric in self.metric_templates]
            for name, explainer in self.explainers.items()
        }
        self._probe_inputs: Tensor | None = None
        self._probe_labels: Tensor | None = None
        self._candidates: list[tuple[Tensor, Tensor | None]] = []
        self._samples_seen = 0
        self._failed: set[str] = set()
        self._warned_inputs = False
        self._clips_checked = False
        self._warned_clip_analyses = False
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
    def _check_list(values: Any, argument: str, kind: type, kind_name: str) -> list[Any]:
        """``values`` as a list of ``kind`` instances; a lone instance or another type is refused by name."""
        if values is None:
            return []
        if isinstance(values, kind):
            raise TypeError(
                f"`{argument}` must be a list of lightning_xai {kind_name}s, got a single {type(values).__name__}; "
                f"wrap it in a list: {argument}=[{type(values).__name__}(...)]."
            )
        if not isinstance(values, Sequence) or isinstance(values, str):
            raise TypeError(f"`{argument}` must be a list of lightning_xai {kind_name}s, got {type(values).__name__}.")
        for index, value in enumerate(values):
            if not isinstance(value, kind):
                raise TypeError(
                    f"`{argument}[{index}]` must be a lightning_xai {kind_name}, got {type(value).__name__}."
                )
        return list(values)

    @staticmethod
    def _check_unique(names: list[str], argument: str, what: str) -> None:
        """Two entries with one name would be logged under one key: refuse them."""
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(
                f"`{argument}` holds more than one entry with the {what} {repeated[0]!r}; their values would be logged "
                "under one key. Keep one, or give each a distinct name (the `name` attribute of a copy)."
            )

    @classmethod
    def _check_regions(cls, regions: Mapping[str, Tensor | str | list[Any]] | None) -> dict[str, Tensor]:
        if regions is None:
            return {}
        if not isinstance(regions, Mapping):
            raise TypeError(
                "`regions` must be a dict name -> (H, W) 0/1 mask, such as {'watermark': mask}, got "
                f"{type(regions).__name__}."
            )
        checked = {}
        for name, region in regions.items():
            mask = check_region(region, f"regions[{name!r}]", ndim=(2,))
            if not mask.any():
                raise ValueError(
                    f"`regions[{name!r}]` is all zero: its relevance mass would be 0 forever and a gate on it would "
                    "always pass. Give a 0/1 mask with the region's pixels set to 1."
                )
            checked[cls._check_name(name, "regions")] = mask
        return checked

    @staticmethod
    def _metric_for(
        template: FaithfulnessMetric, explainer: Explainer, multi_label: bool = False
    ) -> FaithfulnessMetric:
        """A fresh copy of ``template`` for one explainer.

        Metrics that re-run an explainer (``MaxSensitivity``, the robustness and sanity metrics) and were given none
        are bound to this one; in the multi-label target modes, a ``score="probability"`` becomes ``"sigmoid"``.
        """
        metric = _per_label_scores(template) if multi_label else copy.deepcopy(template)
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

    def analysis(self, explainer: str, name: str) -> Analysis:
        """The copy of the analysis called ``name`` that runs for ``explainer`` (its states, its ``latest`` results).

        Example:
            >>> from lightning_xai.explainers import Saliency
            >>> ExplanationMonitor(Saliency()).analysis("Saliency", "drift_probe")
            ProbeDrift()
        """
        for analysis in self.analyses.get(explainer, []):
            if analysis.name == name:
                return analysis
        available = {key: [analysis.name for analysis in value] for key, value in self.analyses.items()}
        raise KeyError(f"No analysis {name!r} for explainer {explainer!r}; the monitor holds {available}.")

    @property
    def global_maps(self) -> dict[str, dict[str, Tensor]]:
        """The latest global maps per explainer: ``per_label``, ``overall``, ``std`` and ``count``."""
        return {
            name: analysis.latest
            for name, analyses in self.analyses.items()
            for analysis in analyses
            if isinstance(analysis, GlobalMaps) and analysis.latest
        }

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Move the metrics to the module's device."""
        for metric in self._all_metrics():
            metric.to(pl_module.device)

    def _all_metrics(self) -> list[Any]:
        """Every torchmetrics state the monitor keeps for one epoch."""
        metrics: list[Any] = [metric for metrics in self.metrics.values() for metric in metrics]
        return metrics + [metric for analyses in self.analyses.values() for a in analyses for metric in a.metrics()]

    # ------------------------------------------------------------------ the work
    def _on_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._samples_seen = 0
        self._failed = set()
        self._warned_inputs = False
        for metric in self.metrics.values():
            for faithfulness in metric:
                faithfulness.reset()
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
        check_image_batch(inputs, "inputs (from `batch_transform`)", video=True, method=type(self).__name__)
        if inputs.ndim == 5:
            self._check_clip_support(inputs)
        if labels is not None and (not isinstance(labels, Tensor) or labels.shape[0] != inputs.shape[0]):
            raise ValueError(
                "`batch_transform` must return labels as a tensor with one row per input, or None; got "
                f"{type(labels).__name__} {tuple(getattr(labels, 'shape', ()))} for inputs {tuple(inputs.shape)}."
            )
        with torch.inference_mode(False):
            inputs = inputs[:limit].detach().clone()
            labels = labels[:limit].detach().clone() if labels is not None else None
        return inputs, labels

    def _check_clip_support(self, inputs: Tensor) -> None:
        """On the first clip batch: refuse explainers and metrics without a spatio-temporal meaning, by name."""
        if self._clips_checked:
            return
        explainers = [name for name, explainer in self.explainers.items() if not explainer.supports_video]
        metrics = sorted({type(metric).__name__ for metric in self.metric_templates if not metric.supports_video})
        if explainers or metrics:
            raise ValueError(
                f"ExplanationMonitor: the validation inputs are clips (B, C, T, H, W) of shape {tuple(inputs.shape)}, "
                f"but explainers {explainers} and metrics {metrics} have no spatio-temporal meaning (they accept "
                "images only). For clips use explainers and metrics with `supports_video = True`: Saliency, "
                "InputXGradient, IntegratedGradients, SmoothGrad, GradCAM, GradCAMPlusPlus (on a spatio-temporal "
                "layer), Occlusion, RISE, ExtremalPerturbation, MeaningfulPerturbation; DeletionAUC, InsertionAUC."
            )
        self._clips_checked = True

    def _clip_analyses(self, analyses: Sequence[Analysis], clips: bool) -> list[Analysis]:
        """The analyses that run on this batch: on clips, those with ``supports_video`` (the others, once, warned)."""
        if not clips:
            return list(analyses)
        skipped = [analysis.name for analysis in analyses if not analysis.supports_video]
        if skipped and not self._warned_clip_analyses:
            rank_zero_warn(
                f"ExplanationMonitor: the inputs are clips (B, C, T, H, W); the analyses {skipped} are defined for "
                "image maps (global maps and PEPPR, region masses, SpRAy, concepts) and are skipped for clips. "
                "The probe's heatmaps, the faithfulness metrics and the probe drift run on the (T, H, W) maps."
            )
            self._warned_clip_analyses = True
        return [analysis for analysis in analyses if analysis.supports_video]

    def _resolve(
        self, model: nn.Module, inputs: Tensor, labels: Tensor | None, deferred: bool = False
    ) -> tuple[Tensor, TargetType, Tensor | None, Tensor, Tensor | None]:
        """What to explain: ``(inputs, target, labels, rows, outputs)``, one row per explanation.

        The multi-label modes repeat a sample once per label explained, so the rows returned may outnumber the
        samples; ``labels`` are then the label explained by each row (class indices), and ``rows`` the index of each
        row's sample in ``inputs``. ``outputs`` are the no-grad outputs of ``"predicted"`` (None otherwise). With
        ``deferred``, ``"predicted"`` returns a :class:`_PredictedClass` for the first explainer's forward to
        resolve, and no outputs yet.
        """
        every = torch.arange(inputs.shape[0], device=inputs.device)
        if callable(self.target):
            return inputs, self.target, labels, every, None
        if self.target == "label":
            return inputs, class_index_labels(labels, "target='label'"), labels, every, None
        if self.target == "positive_labels":
            positives = multi_hot_labels(labels, "target='positive_labels'")
        elif self.target == "predicted" and deferred:
            return inputs, _PredictedClass(), labels, every, None
        else:
            with explanation_mode(model, grad=False):
                outputs = model(inputs)
            _check_class_outputs(outputs, self.target)
            if self.target == "predicted":
                return inputs, outputs.argmax(dim=1), labels, every, outputs
            positives = outputs > 0  # "predicted_labels": every label whose sigmoid probability exceeds 0.5
        rows, columns = positives.nonzero(as_tuple=True)
        return inputs[rows], columns, columns, rows, None

    def _resolver(self) -> str | None:
        """The explainer whose own forward picks the predicted class this round, or None (the monitor forwards).

        That is the first explainer still running, when it has
        :attr:`~lightning_xai.explainers.base.Explainer.scores_one_forward`.
        """
        active = [name for name in self.explainers if name not in self._failed]
        first = active[0] if active else None
        return first if first is not None and self.explainers[first].scores_one_forward else None

    def _handle_error(self, name: str, error: Exception) -> None:
        if self.on_error == "raise":
            raise error
        self._failed.add(name)
        rank_zero_warn(f"ExplanationMonitor: explainer {name!r} failed this epoch and is skipped: {error}")

    def _finite_inputs(self, inputs: Tensor) -> bool:
        """Whether the inputs are finite; under ``on_error="warn"`` non-finite samples are skipped with a warning."""
        if bool(torch.isfinite(inputs).all()):
            return True
        bad = int((~torch.isfinite(inputs.flatten(1))).any(dim=1).sum())
        message = (
            f"ExplanationMonitor: {bad} of {inputs.shape[0]} validation inputs hold NaN or infinite values; explaining "
            "them would give NaN metrics. Check the data pipeline (or `batch_transform`)."
        )
        if self.on_error == "raise":
            raise ValueError(message)
        if not self._warned_inputs:
            rank_zero_warn(message + " Those batches are skipped this epoch (on_error='warn').")
            self._warned_inputs = True
        return False

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
        if not self._finite_inputs(inputs):
            return
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
            # Round-robin over classes (over the first positive label of multi-hot labels): the k-th sample of
            # every class before the (k+1)-th of any.
            classes = labels.long() if labels.ndim == 1 else labels.float().argmax(dim=1)
            rank_in_class = torch.zeros_like(classes)
            for value in classes.unique():
                members = (classes == value).nonzero().flatten()
                rank_in_class[members] = torch.arange(members.numel(), device=classes.device)
            order = torch.argsort(rank_in_class * (int(classes.max()) + 1) + classes, stable=True)
        order = order[: self.probe_size]
        self._probe_inputs = inputs[order]
        self._probe_labels = labels[order] if labels is not None else None
        self._candidates = []

    def _explain_and_measure(
        self, pl_module: LightningModule, inputs: Tensor, labels: Tensor | None, from_batches: bool
    ) -> _Explained:
        """Explain ``inputs`` with every explainer and feed the epoch's metrics and analyses.

        Faithfulness metrics take the samples the monitor measures on (the streamed batches with ``max_samples``,
        the probe otherwise); each analysis takes the samples its ``samples`` names.
        """
        model = self._model(pl_module)
        maps: dict[str, Tensor] = {}
        measure = from_batches == (self.max_samples != 0)
        resolver = self._resolver()
        try:
            inputs, target, labels, rows, outputs = self._resolve(model, inputs, labels, deferred=resolver is not None)
        except Exception as error:
            for name in self.explainers:
                self._handle_error(name, error)
            return _Explained(maps, inputs, None, labels, None, None)
        groups = self._aggregation_labels(target, labels)
        if inputs.shape[0] == 0:  # a multi-label batch with no label to explain
            return _Explained(maps, inputs, target, labels, groups, rows, outputs)
        wanted = {"streamed": from_batches, "measured": measure, "probe": not from_batches}
        for name, explainer in self.explainers.items():
            if name in self._failed:
                continue
            try:
                if isinstance(target, _PredictedClass) and name != resolver:  # the resolving explainer failed
                    if target.indices is None:  # before its forward: the monitor forwards after all
                        inputs, target, labels, rows, outputs = self._resolve(model, inputs, labels)
                    else:
                        target, outputs = target.picked()
                    groups = self._aggregation_labels(target, labels)
                maps[name] = explainer(model, inputs, target)
                if isinstance(target, _PredictedClass):  # resolved by this explainer's forward
                    target, outputs = target.picked()
                    groups = self._aggregation_labels(target, labels)
                if measure:
                    for metric in self.metrics[name]:
                        metric.update(model, inputs, maps[name], target)
                explained = ExplainedBatch(model, inputs, maps[name], target, labels, groups, probe=not from_batches)
                for analysis in self._clip_analyses(self.analyses[name], inputs.ndim == 5):
                    if wanted[analysis.samples]:
                        analysis.update(explained)
            except Exception as error:
                maps.pop(name, None)
                self._handle_error(name, error)
        explained_target: TargetType | None = target
        if isinstance(target, _PredictedClass):  # every explainer failed: the classes, if a forward picked them
            explained_target, outputs = target.indices, target.outputs
        return _Explained(maps, inputs, explained_target, labels, groups, rows, outputs)

    def _aggregation_labels(self, target: TargetType, labels: Tensor | None) -> Tensor | None:
        """The labels global maps aggregate by (``global_labels``), or None when there are none to give."""
        if self.global_labels == "label":
            return labels
        return target if isinstance(target, Tensor) else None

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
        probe = self._explain_and_measure(pl_module, inputs, labels, from_batches=False)
        probe_maps, inputs = probe.maps, probe.inputs
        pictures = PictureLogger(trainer, owner=type(self).__name__)
        shown = slice(0, self.heatmap_samples)
        per_label_rows = self.target in ("positive_labels", "predicted_labels")  # captions: class-index heads only
        captions = None  # predicted class and probability: from the target's forward, or one no-grad forward
        if self.log_heatmaps and pictures.active and probe_maps and not per_label_rows:
            predicted = predicted_classes(probe.outputs[shown]) if probe.outputs is not None else None
            captions = (
                (predicted[0].cpu(), predicted[1].cpu())
                if predicted is not None
                else caption_predictions(self._model(pl_module), inputs[shown])
            )
        for name, maps in probe_maps.items():
            if self.log_heatmaps and pictures.active:
                shown_labels = probe.labels[shown].cpu() if probe.labels is not None and not per_label_rows else None
                predictions, probabilities = captions if captions else (None, None)
                clips, clip_maps = inputs[shown].detach().cpu(), maps[shown].cpu()
                if inputs.ndim == 5:  # a video summary where the logger can write one, else a frame grid
                    frame_grid = functools.partial(
                        video_heatmap_grid,
                        clips,
                        clip_maps,
                        labels=shown_labels,
                        predictions=predictions,
                        probabilities=probabilities,
                        explainer=name,
                    )
                    frames = video_heatmap_frames(clips, clip_maps)  # (N, T, 3, H, W), small frames enlarged
                    frames = upscale(frames.flatten(0, 1), min_side=64).unflatten(0, frames.shape[:2])
                    pictures.video(f"xai/{name}/heatmaps", frames, trainer.global_step, grid=frame_grid)
                    continue
                grid = heatmap_grid(
                    clips,
                    clip_maps,
                    labels=shown_labels,
                    predictions=predictions,
                    probabilities=probabilities,
                    explainer=name,
                    dtype=torch.uint8,
                )
                pictures.image(f"xai/{name}/heatmaps", grid, trainer.global_step)
        for name in self.explainers:
            # Every rank must take part in the metrics' synchronisation, or none: agree first.
            if not trainer.strategy.reduce_boolean_decision(name not in self._failed, all=True):
                continue
            context = EpochContext(
                trainer=trainer,
                pl_module=pl_module,
                explainer_name=name,
                explainer=self.explainers[name],
                model=self._model(pl_module),
                pictures=pictures,
                regions=self.regions,
                probe_inputs=inputs,
                probe_labels=probe.labels,
                probe_maps=probe_maps.get(name),
                probe_groups=probe.groups,
                probe_rows=probe.rows,
                probe_target=probe.target,
                log_curves=self.log_curves,
            )
            try:
                for metric in self.metrics[name]:
                    context.metric(metric)
                for analysis in self._clip_analyses(self.analyses[name], inputs.ndim == 5):
                    analysis.log(context)
            except Exception as error:
                self._handle_error(name, error)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The probe (on the CPU), each analysis' state (global maps, drift references) and the schedule's count."""
        return {
            "probe_inputs": None if self._probe_inputs is None else self._probe_inputs.detach().cpu(),
            "probe_labels": None if self._probe_labels is None else self._probe_labels.detach().cpu(),
            "analyses": {
                name: {analysis.name: analysis.state_dict() for analysis in analyses}
                for name, analyses in self.analyses.items()
            },
            **self._schedule_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the probe, the analyses' states and the schedule (keys missing in old checkpoints are skipped)."""
        self._probe_inputs = state_dict.get("probe_inputs")
        self._probe_labels = state_dict.get("probe_labels")
        self._load_schedule_state(state_dict)
        for name, states in state_dict.get("analyses", {}).items():
            for analysis in self.analyses.get(name, []):
                if analysis.name in states:
                    analysis.load_state_dict(states[analysis.name])
