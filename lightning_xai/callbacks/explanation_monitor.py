"""ExplanationMonitor: explain, measure and picture the model's explanations during validation."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import matplotlib.pyplot as plt
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_xai._checks import check_choice, check_positive_int
from lightning_xai._model_state import explanation_mode
from lightning_xai._typing import ForwardFn, TargetType
from lightning_xai.callbacks._batches import ForwardWrapper, default_batch_transform
from lightning_xai.callbacks._logging import ImageLoggerNotice, tensorboard_writers
from lightning_xai.explainers.base import Explainer
from lightning_xai.metrics.base import FaithfulnessMetric
from lightning_xai.visualize import curve_figure, heatmap_grid

BatchTransform = Callable[[Any], tuple[Tensor, Tensor | None]]
STAGES = ("fit", "validate", "test")


class ExplanationMonitor(Callback):
    r"""Explain a fixed probe of validation samples every few epochs, measure faithfulness, log it all.

    On the first validation epoch it runs, the monitor keeps ``probe_size`` validation samples (optionally
    class-balanced) as a fixed probe; it stores them in its ``state_dict`` so a resumed run explains the
    same images. On every epoch it runs (``every_n_epochs``, never in the sanity check, only in the
    ``stages`` asked for) it:

    1. explains the probe with each explainer and logs an image grid of the inputs beside their heatmap
       overlays to every ``TensorBoardLogger`` (global zero only; other loggers get a one-time notice);
    2. updates each faithfulness metric (one copy per explainer) on the probe, or, with ``max_samples > 0``,
       on up to ``max_samples`` validation samples per epoch and rank, explained as the batches pass;
    3. logs the metrics' synchronised values through ``pl_module.log`` (so ``EarlyStopping``,
       ``ModelCheckpoint`` and :class:`~lightning_xai.FaithfulnessGate` can monitor them) and their mean curves
       as figures, then resets them.

    The model is left as found: explainers and metrics run in eval mode on clones of the batch, outside
    inference mode, without writing any parameter ``.grad``, with hooks removed and the global RNG restored,
    so training with and without the monitor produces bitwise-identical weights.

    Logged keys (``<explainer>`` is the dict key or the explainer's class name, ``<metric>`` the metric's
    ``name``):

    * ``xai/<explainer>/heatmaps`` (TensorBoard image): probe inputs beside heatmap overlays.
    * ``xai/<explainer>/<metric>`` (scalar): the metric's mean over the evaluated samples, for example
      ``xai/GradCAM/deletion_auc``; plus the extra scalars a metric reports in ``summary()`` such as
      ``xai/GradCAM/mif_auc``.
    * ``xai/<explainer>/<metric>_stderr`` (scalar): standard error of that mean, read by the gate's
      ``confidence`` option.
    * ``xai/<explainer>/<metric>_curve`` (TensorBoard figure): the metric's mean curves, where it has curves.

    Args:
        explainer: an :class:`~lightning_xai.explainers.Explainer`, or a dict ``name -> explainer``.
        metrics: faithfulness metrics evaluated for each explainer (deep-copied per explainer).
        probe_size: number of validation samples kept as the fixed probe.
        class_balanced: pick the probe round-robin over classes (needs labels) from the first
            ``4 * probe_size`` validation samples, instead of taking the first ``probe_size``.
        every_n_epochs: run on epochs ``0, n, 2n, ...``.
        max_samples: when positive, evaluate the metrics on up to this many validation samples per epoch
            (and rank) instead of on the probe.
        target: ``"predicted"`` (the model's argmax, default), ``"label"`` (the ground truth) or a callable
            ``(outputs) -> (B,)`` scores for regression or embedding models.
        batch_transform: ``batch -> (inputs, labels)``; the default handles tensors, tuples and dicts.
        forward_fn: ``(module, inputs) -> outputs`` when ``module(inputs)`` is not how the model predicts.
        stages: in which trainer functions to run: any of ``"fit"``, ``"validate"``, ``"test"``.
        log_heatmaps: log the heatmap grids.
        log_curves: log the metrics' curve figures.
        heatmap_samples: how many probe samples appear in the heatmap grid.
        on_error: ``"raise"`` to fail the run when explaining or measuring fails (including non-finite
            attributions), ``"warn"`` to warn and skip that explainer for the epoch.

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
        max_samples: int = 0,
        target: Literal["predicted", "label"] | Callable[[Tensor], Tensor] = "predicted",
        batch_transform: BatchTransform | None = None,
        forward_fn: ForwardFn | None = None,
        stages: Sequence[str] = ("fit",),
        log_heatmaps: bool = True,
        log_curves: bool = True,
        heatmap_samples: int = 16,
        on_error: Literal["raise", "warn"] = "raise",
    ) -> None:
        super().__init__()
        self.explainers = self._check_explainers(explainer)
        self.metric_templates = list(metrics or [])
        for index, metric in enumerate(self.metric_templates):
            if not isinstance(metric, FaithfulnessMetric):
                raise TypeError(
                    f"`metrics[{index}]` must be a lightning_xai FaithfulnessMetric, got {type(metric).__name__}."
                )
        check_positive_int(probe_size, "probe_size")
        check_positive_int(every_n_epochs, "every_n_epochs")
        check_positive_int(max_samples, "max_samples", minimum=0)
        check_positive_int(heatmap_samples, "heatmap_samples")
        if not callable(target):
            check_choice(target, "target", ("predicted", "label"))
        for stage in stages:
            check_choice(stage, "stages", STAGES)
        check_choice(on_error, "on_error", ("raise", "warn"))
        if batch_transform is not None and not callable(batch_transform):
            raise TypeError(f"`batch_transform` must be a callable batch -> (inputs, labels), got {batch_transform!r}.")
        if forward_fn is not None and not callable(forward_fn):
            raise TypeError(f"`forward_fn` must be a callable (module, inputs) -> outputs, got {forward_fn!r}.")
        self.probe_size = probe_size
        self.class_balanced = class_balanced
        self.every_n_epochs = every_n_epochs
        self.max_samples = max_samples
        self.target = target
        self.batch_transform: BatchTransform = batch_transform or default_batch_transform
        self.forward_fn = forward_fn
        self.stages = tuple(stages)
        self.log_heatmaps = log_heatmaps
        self.log_curves = log_curves
        self.heatmap_samples = heatmap_samples
        self.on_error = on_error

        self.metrics: dict[str, list[FaithfulnessMetric]] = {
            name: [copy.deepcopy(metric) for metric in self.metric_templates] for name in self.explainers
        }
        self._probe_inputs: Tensor | None = None
        self._probe_labels: Tensor | None = None
        self._candidates: list[tuple[Tensor, Tensor | None]] = []
        self._samples_seen = 0
        self._failed: set[str] = set()
        self._notice = ImageLoggerNotice(type(self).__name__)

    # ------------------------------------------------------------------ configuration
    @staticmethod
    def _check_explainers(explainer: Explainer | Mapping[str, Explainer]) -> dict[str, Explainer]:
        if isinstance(explainer, Explainer):
            return {explainer.name: explainer}
        if isinstance(explainer, Mapping) and explainer:
            for name, value in explainer.items():
                if not isinstance(name, str) or not name or "/" in name:
                    raise ValueError(f"`explainer` dict keys must be non-empty names without '/', got {name!r}.")
                if not isinstance(value, Explainer):
                    raise TypeError(
                        f"`explainer[{name!r}]` must be a lightning_xai Explainer, got {type(value).__name__}."
                    )
            return dict(explainer)
        raise TypeError(
            "`explainer` must be a lightning_xai Explainer or a non-empty dict name -> Explainer, "
            f"got {type(explainer).__name__}."
        )

    @property
    def state_key(self) -> str:
        """Distinguishes monitors with different explainers and metrics in a checkpoint."""
        return self._generate_state_key(
            explainers=sorted(self.explainers), metrics=[metric.name for metric in self.metric_templates]
        )

    # ------------------------------------------------------------------ when to run
    def _should_skip(self, trainer: Trainer) -> bool:
        """The one place that decides whether this epoch is monitored."""
        stage = trainer.state.fn.value if trainer.state.fn is not None else None
        return (
            trainer.sanity_checking
            or stage not in self.stages
            or trainer.current_epoch % self.every_n_epochs != 0
        )

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Move the metrics to the module's device."""
        for metrics in self.metrics.values():
            for metric in metrics:
                metric.to(pl_module.device)

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Collect the probe and, with ``max_samples``, explain and measure this batch."""
        self._on_batch_end(trainer, pl_module, batch)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """As :meth:`on_validation_batch_end`, for ``trainer.test()``."""
        self._on_batch_end(trainer, pl_module, batch)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start a fresh epoch of samples."""
        self._start_epoch()

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start a fresh epoch of samples."""
        self._start_epoch()

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Explain the probe, compute and log the metrics, log the pictures."""
        self._on_epoch_end(trainer, pl_module)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """As :meth:`on_validation_epoch_end`, for ``trainer.test()``."""
        self._on_epoch_end(trainer, pl_module)

    # ------------------------------------------------------------------ the work
    def _start_epoch(self) -> None:
        self._samples_seen = 0
        self._failed = set()
        for metrics in self.metrics.values():
            for metric in metrics:
                metric.reset()

    def _model(self, pl_module: LightningModule) -> nn.Module:
        return pl_module if self.forward_fn is None else ForwardWrapper(pl_module, self.forward_fn)

    def _unpack(self, batch: Any, limit: int) -> tuple[Tensor, Tensor | None]:
        """The first ``limit`` samples of a batch as ``(inputs, labels)``, cloned out of inference mode."""
        inputs, labels = self.batch_transform(batch)
        if not isinstance(inputs, Tensor):
            raise TypeError(f"`batch_transform` must return (inputs: Tensor, labels), got inputs {type(inputs).__name__}.")
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

    def _on_batch_end(self, trainer: Trainer, pl_module: LightningModule, batch: Any) -> None:
        if self._should_skip(trainer):
            return
        probe_wanted = 0
        if self._probe_inputs is None:
            pool = 4 * self.probe_size if self.class_balanced else self.probe_size
            probe_wanted = pool - sum(x.shape[0] for x, _ in self._candidates)
        samples_wanted = self.max_samples - self._samples_seen if self.max_samples > 0 else 0
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
            self._explain_and_measure(pl_module, inputs, labels, update_metrics=True)

    def _finalize_probe(self) -> None:
        if self._probe_inputs is not None or not self._candidates:
            return
        inputs = torch.cat([x for x, _ in self._candidates])
        labels = None if self._candidates[0][1] is None else torch.cat([y for _, y in self._candidates if y is not None])
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
        self, pl_module: LightningModule, inputs: Tensor, labels: Tensor | None, update_metrics: bool
    ) -> dict[str, Tensor]:
        model = self._model(pl_module)
        maps: dict[str, Tensor] = {}
        try:
            target = self._resolve_target(model, inputs, labels)
        except Exception as error:  # noqa: BLE001 - routed through on_error
            for name in self.explainers:
                self._handle_error(name, error)
            return maps
        for name, explainer in self.explainers.items():
            if name in self._failed:
                continue
            try:
                maps[name] = explainer(model, inputs, target)
                if update_metrics:
                    for metric in self.metrics[name]:
                        metric.update(model, inputs, maps[name], target)
            except Exception as error:  # noqa: BLE001 - routed through on_error
                maps.pop(name, None)
                self._handle_error(name, error)
        return maps

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
        probe_maps = self._explain_and_measure(pl_module, inputs, labels, update_metrics=self.max_samples == 0)
        writers = tensorboard_writers(trainer)
        step = trainer.global_step
        for name, maps in probe_maps.items():
            if self.log_heatmaps and writers:
                shown = slice(0, self.heatmap_samples)
                grid = heatmap_grid(inputs[shown].detach().cpu(), maps[shown].cpu())
                for writer in writers:
                    writer.add_image(f"xai/{name}/heatmaps", grid, global_step=step)
        self._log_metrics(trainer, pl_module, writers, step)

    def _log_metrics(self, trainer: Trainer, pl_module: LightningModule, writers: list[Any], step: int) -> None:
        for name, metrics in self.metrics.items():
            if not metrics:
                continue
            # Every rank must take part in the metrics' synchronisation, or none: agree first.
            healthy = trainer.strategy.reduce_boolean_decision(name not in self._failed, all=True)
            if not healthy:
                continue
            for metric in metrics:
                try:
                    values = metric.summary()
                    curves = metric.curves() if self.log_curves and writers else {}
                except Exception as error:  # noqa: BLE001 - routed through on_error
                    self._handle_error(name, error)
                    continue
                for key, value in values.items():
                    pl_module.log(f"xai/{name}/{key}", value.float(), on_step=False, on_epoch=True, sync_dist=False)
                if curves:
                    figure = curve_figure(curves, title=f"{name}: {metric.name}")
                    for writer in writers:
                        writer.add_figure(f"xai/{name}/{metric.name}_curve", figure, global_step=step, close=False)
                    plt.close(figure)
                metric.reset()

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The probe (on the CPU), so a resumed run explains the same samples."""
        return {
            "probe_inputs": None if self._probe_inputs is None else self._probe_inputs.detach().cpu(),
            "probe_labels": None if self._probe_labels is None else self._probe_labels.detach().cpu(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the probe."""
        self._probe_inputs = state_dict.get("probe_inputs")
        self._probe_labels = state_dict.get("probe_labels")
