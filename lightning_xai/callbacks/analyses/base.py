"""The contract of a per-epoch analysis that :class:`~lightning_xai.ExplanationMonitor` holds and runs.

The monitor explains samples; an analysis turns one explainer's maps into what is logged for an epoch (global
maps, region masses, drift, SpRAy clusters, concepts). The monitor holds analyses as a ``MetricCollection`` holds
metrics: it deep-copies each template once per explainer, feeds every copy the maps of its explainer, asks it to log
at the end of each monitored epoch, resets its torchmetrics states, and keeps its ``state_dict`` in the checkpoint.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import matplotlib.figure
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_xai._typing import TargetType
from lightning_xai.explainers.base import Explainer
from lightning_xai.loggers import PictureLogger
from lightning_xai.visualize import metric_curve_image

#: Which explained samples feed an analysis: ``"streamed"``, the validation batches the monitor explains as they
#: pass (``max_samples``; what global maps aggregate); ``"measured"``, the samples the faithfulness metrics see (the
#: streamed ones with ``max_samples != 0``, else the probe); ``"probe"``, the fixed probe, once per epoch.
Samples = Literal["streamed", "measured", "probe"]


@dataclass(frozen=True)
class ExplainedBatch:
    """One batch of samples explained by one explainer.

    Attributes:
        model: the module that was explained (``pl_module``, or its ``forward_fn`` wrapper).
        inputs: images ``(B, C, H, W)`` (clips ``(B, C, T, H, W)`` reach only analyses with ``supports_video``).
        maps: their attributions ``(B, 1, H, W)`` (``(B, 1, T, H, W)`` for clips).
        target: what was explained: class indices ``(B,)`` or a callable ``(outputs) -> (B,)``.
        labels: the ground truth as the batch gave it, ``(B,)`` class indices, ``(B, L)`` multi-hot, or None.
        groups: the labels the monitor aggregates by (``global_labels``): ``(B,)`` or ``(B, L)``, or None when it has
            none to give.
        probe: whether these are the fixed probe samples.
    """

    model: nn.Module
    inputs: Tensor
    maps: Tensor
    target: TargetType
    labels: Tensor | None
    groups: Tensor | None
    probe: bool


@dataclass
class EpochContext:
    """What an analysis needs at the end of a monitored epoch, for one explainer.

    Attributes:
        trainer: the trainer.
        pl_module: the module being trained.
        explainer_name: the explainer's key; every logged tag starts with ``xai/<explainer_name>/``.
        explainer: the explainer itself (to re-explain, as PEPPR or concept analyses may).
        model: the module to explain (``pl_module`` or its ``forward_fn`` wrapper).
        pictures: the one dispatch of images, figures and text to the loggers.
        regions: the monitor's named ``(H, W)`` 0/1 masks of the regions domain knowledge cares about.
        probe_inputs: the fixed probe ``(P, C, H, W)`` on the module's device, or None.
        probe_labels: its labels, or None.
        probe_maps: this epoch's maps of the probe by this explainer ``(P, 1, H, W)``, or None if it failed.
        probe_groups: the probe's aggregation labels, or None.
        probe_rows: the index of each probe row's sample ``(P,)``: the multi-label target modes explain a sample once
            per label, so rows and samples differ there (and which rows exist follows the predictions).
        probe_target: what the monitor explained on the probe this epoch (class indices ``(P,)`` or its callable),
            or None when the probe could not be resolved.
        log_curves: whether metrics' curves are drawn as figures (the monitor's ``log_curves``).
    """

    trainer: Trainer
    pl_module: LightningModule
    explainer_name: str
    explainer: Explainer
    model: nn.Module
    pictures: PictureLogger
    regions: Mapping[str, Tensor] = field(default_factory=dict)
    probe_inputs: Tensor | None = None
    probe_labels: Tensor | None = None
    probe_maps: Tensor | None = None
    probe_groups: Tensor | None = None
    probe_rows: Tensor | None = None
    probe_target: TargetType | None = None
    log_curves: bool = True

    @property
    def step(self) -> int:
        """The global step pictures are logged at."""
        return self.trainer.global_step

    def tag(self, key: str) -> str:
        """The full tag ``xai/<explainer>/<key>``."""
        return f"xai/{self.explainer_name}/{key}"

    def log(self, values: Mapping[str, Tensor], sync_dist: bool = False) -> None:
        """Log scalars ``xai/<explainer>/<key>`` through ``pl_module.log`` (every logger, ``callback_metrics``).

        Synchronised values (a torchmetrics ``compute()``) are the same on every rank: leave ``sync_dist`` off.
        Per-rank values ask for ``sync_dist=True`` (averaged), and then every rank must log the same keys.
        """
        for key, value in values.items():
            self.pl_module.log(self.tag(key), value.float(), on_step=False, on_epoch=True, sync_dist=sync_dist)

    def metric(self, metric: Any, prefix: str = "") -> None:
        """Log a metric's ``summary()`` as ``xai/<explainer>/<prefix><key>`` and its ``curves()`` as one figure.

        The figure is tagged ``xai/<explainer>/<metric.name>_curve`` and drawn only when some logger shows it.
        """
        self.log({f"{prefix}{key}": value for key, value in metric.summary().items()})
        if not (self.log_curves and hasattr(metric, "curves")):
            return
        # curves() and curve_bands() synchronise across processes: every rank computes them, global zero draws.
        curves = metric.curves()
        bands = metric.curve_bands() if curves and hasattr(metric, "curve_bands") else {}
        if curves and self.pictures.active:
            title = f"{self.explainer_name}: {metric.name}"
            image = metric_curve_image(metric, title=title, curves=curves, bands=bands, dtype=torch.uint8)
            self.image(f"{metric.name}_curve", image)

    def image(self, key: str, image: Tensor) -> None:
        """Log a ``(3, H, W)`` image (float in ``[0, 1]`` or uint8) as ``xai/<explainer>/<key>`` (global zero only)."""
        self.pictures.image(self.tag(key), image, self.step)

    def figure(self, key: str, figure: matplotlib.figure.Figure) -> None:
        """Log a matplotlib figure as ``xai/<explainer>/<key>``; the caller closes it."""
        self.pictures.figure(self.tag(key), figure, self.step)

    def text(self, key: str, text: str) -> None:
        """Log a Markdown text as ``xai/<explainer>/<key>``."""
        self.pictures.text(self.tag(key), text, self.step)


class Analysis(ABC):
    """One per-epoch analysis of one explainer's maps: update on the explained samples, compute, log.

    Subclasses set :attr:`name` (unique within a monitor, used in the checkpoint) and :attr:`samples`, implement
    :meth:`update` and :meth:`log`, and return their torchmetrics states from :meth:`metrics` so that the monitor
    moves them to the module's device and resets them at the start of every monitored epoch. Values that must
    outlive an epoch (a previous epoch's reference, say) belong in :meth:`state_dict`.

    Every rank calls :meth:`log` (a torchmetrics ``compute()`` inside it synchronises); pictures are only written on
    global zero, by :class:`~lightning_xai.loggers.PictureLogger`.
    """

    name: ClassVar[str] = "analysis"
    samples: ClassVar[Samples] = "streamed"
    #: Whether the analysis has a meaning for clip maps ``(B, 1, T, H, W)``; on clips the monitor skips the others
    #: (with a one-time warning naming them).
    supports_video: ClassVar[bool] = False

    def metrics(self) -> list[Metric]:
        """The torchmetrics states of this analysis (moved to the device, reset each monitored epoch)."""
        return []

    @abstractmethod
    def update(self, batch: ExplainedBatch) -> None:
        """Take one explained batch (of the kind :attr:`samples` names)."""

    @abstractmethod
    def log(self, context: EpochContext) -> None:
        """Compute (synchronised) and log this epoch's results for one explainer."""

    def reset(self) -> None:
        """Forget the epoch's samples (the default resets :meth:`metrics`)."""
        for metric in self.metrics():
            metric.reset()

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to log the same (default: nothing)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore :meth:`state_dict`."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
