"""ProbeMonitor: run the global probes (fill-in-the-blanks, prototype generation) every few epochs and log them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from lightning_xai._checks import check_choice, check_image_batch, check_positive_int
from lightning_xai._model_state import explanation_mode
from lightning_xai._typing import ForwardFn
from lightning_xai.callbacks._evaluation import BatchTransform, EvaluationCallback
from lightning_xai.loggers import PictureLogger, PictureLoggerNotice
from lightning_xai.probes.activation_similarity import activation_similarity
from lightning_xai.probes.fill_in_the_blanks import FillInTheBlanks, class_mean_fills
from lightning_xai.probes.prototype_generation import PrototypeGeneration
from lightning_xai.visualize import image_grid, upscale

PROBES: tuple[str, ...] = ("fill_in_the_blanks", "prototype_generation")
BASELINE = "prototype_baseline"


class ProbeMonitor(EvaluationCallback):
    r"""Run global, model-level probes on a fixed set of samples every few epochs and log what they show.

    Probes (``probes``):

    * ``"fill_in_the_blanks"``: :class:`~lightning_xai.probes.FillInTheBlanks` on the fixed samples, each
      filled for its target (``target``): how the model fills a masked region, and how much that raises the
      target score.
    * ``"prototype_generation"``: :class:`~lightning_xai.probes.PrototypeGeneration` of one prototype per class
      (``classes``, default all), of the fixed samples' shape; with ``layers`` (default the last ``Conv2d``) their
      :func:`~lightning_xai.probes.activation_similarity` to the fixed samples of their class, and with
      ``baseline=True`` the same for the unregularised baseline (:meth:`PrototypeGeneration.unregularised`).

    The fixed set is ``inputs``/``labels`` when given, else the first ``num_samples`` samples of the first
    validation dataloader, collected on the first monitored validation epoch and stored in the ``state_dict`` so
    a resumed run probes the same samples. Probes run in ``on_validation_epoch_end`` (and
    ``on_test_epoch_end``) on epochs ``0, n, 2n, ...`` (``every_n_epochs``), in the ``stages`` asked for, never
    during the sanity check; each reports its start and its duration through ``rank_zero_info``.

    The model is left as found: probes optimise inputs only, in eval mode with the parameters'
    ``requires_grad`` off, without writing any parameter ``.grad``, with hooks removed and the global RNG
    restored, so training with and without the monitor produces the same weights.

    Logged keys (scalars through ``pl_module.log`` with ``sync_dist=True``, so ``trainer.callback_metrics``,
    ``EarlyStopping`` and ``ModelCheckpoint`` see them; images to every ``TensorBoardLogger`` on global zero,
    other loggers get a one-time notice):

    * ``xai/probes/fill_in_the_blanks/score_before`` (scalar): mean target score (``FillInTheBlanks.score``,
      default probability) of the images with their initial fill.
    * ``xai/probes/fill_in_the_blanks/score_after`` (scalar): the same after filling.
    * ``xai/probes/fill_in_the_blanks/score_gain`` (scalar): mean of ``score_after - score_before``.
    * ``xai/probes/fill_in_the_blanks/filled`` (image): three rows, the inputs, the masked inputs with their
      initial fill, the filled images (jointly scaled).
    * ``xai/probes/fill_in_the_blanks/class_mean_fills`` (image): the mean fill of each target class present,
      in class order (:func:`~lightning_xai.probes.class_mean_fills`, masked region only).
    * ``xai/probes/prototype_generation/probability`` (scalar): mean probability of the prototypes' classes.
    * ``xai/probes/prototype_generation/<layer>/l1`` (scalar): mean over classes of the L1 distance of the
      prototypes' activations at ``<layer>`` to the mean activation of the fixed samples of their class (lower
      is more natural; only classes present in the fixed set).
    * ``xai/probes/prototype_generation/<layer>/spearman`` (scalar): the same with Spearman rank correlation
      (higher is more natural).
    * ``xai/probes/prototype_generation/prototypes`` (image): the prototypes, in class order, each scaled to its
      own range.
    * ``xai/probes/prototype_baseline/probability``, ``xai/probes/prototype_baseline/<layer>/l1``,
      ``xai/probes/prototype_baseline/<layer>/spearman`` (scalars) and ``xai/probes/prototype_baseline/prototypes``
      (image): the same for the unregularised baseline, with ``baseline=True``.

    Args:
        probes: which probes to run, any of ``"fill_in_the_blanks"`` and ``"prototype_generation"``.
        fill_in_the_blanks: the configured probe (default ``FillInTheBlanks()``).
        prototype_generation: the configured probe (default ``PrototypeGeneration()``; set its ``input_range``
            to the range of the model's inputs for natural prototypes).
        classes: the classes to generate prototypes for (default: all the model's outputs; pass a few for
            models with many classes, since each class costs ``steps`` forward and backward passes).
        layers: dotted module names for the activation similarity (default: the last ``nn.Conv2d``; an empty
            list turns the similarity off).
        baseline: also generate and score the unregularised baseline prototypes.
        num_samples: size of the fixed set collected from the validation dataloader.
        inputs: a fixed set ``(N, C, H, W)`` to use instead of collecting one.
        labels: its labels ``(N,)`` (optional).
        every_n_epochs: run on epochs ``0, n, 2n, ...``.
        target: what fill-in-the-blanks fills for, ``"predicted"`` (the model's argmax, default) or ``"label"``.
            Natural images of a class are the fixed samples labelled with it (predicted without labels).
        batch_transform: ``batch -> (inputs, labels)``; the default handles tensors, tuples and dicts.
        forward_fn: ``(module, inputs) -> outputs`` when ``module(inputs)`` is not how the model predicts.
        stages: in which trainer functions to run: any of ``"fit"``, ``"validate"``, ``"test"``.
        image_samples: how many fixed samples appear in the filled-image grid.
        on_error: ``"raise"`` to fail the run when a probe fails, ``"warn"`` to warn and skip it for the epoch.

    Example:
        >>> from lightning_xai.probes import FillInTheBlanks
        >>> monitor = ProbeMonitor(probes=["fill_in_the_blanks"], fill_in_the_blanks=FillInTheBlanks(steps=50))
        >>> monitor.probes
        ('fill_in_the_blanks',)
        >>> repr(monitor).startswith("ProbeMonitor(probes=['fill_in_the_blanks'], fill_in_the_blanks=FillInTheBlanks(")
        True
    """

    def __init__(
        self,
        probes: Sequence[str] = PROBES,
        fill_in_the_blanks: FillInTheBlanks | None = None,
        prototype_generation: PrototypeGeneration | None = None,
        classes: Sequence[int] | None = None,
        layers: Sequence[str] | None = None,
        baseline: bool = True,
        num_samples: int = 32,
        inputs: Tensor | None = None,
        labels: Tensor | None = None,
        every_n_epochs: int = 1,
        target: Literal["predicted", "label"] = "predicted",
        batch_transform: BatchTransform | None = None,
        forward_fn: ForwardFn | None = None,
        stages: Sequence[str] = ("fit",),
        image_samples: int = 16,
        on_error: Literal["raise", "warn"] = "raise",
    ) -> None:
        super().__init__(
            every_n_epochs=every_n_epochs,
            stages=stages,
            batch_transform=batch_transform,
            forward_fn=forward_fn,
            on_error=on_error,
        )
        if isinstance(probes, str) or not isinstance(probes, Sequence) or not probes:
            raise ValueError(f"`probes` must be a non-empty list drawn from {PROBES}, got {probes!r}.")
        for probe in probes:
            check_choice(probe, "probes", PROBES)
        if fill_in_the_blanks is not None and not isinstance(fill_in_the_blanks, FillInTheBlanks):
            raise TypeError(f"`fill_in_the_blanks` must be a FillInTheBlanks, got {type(fill_in_the_blanks).__name__}.")
        if prototype_generation is not None and not isinstance(prototype_generation, PrototypeGeneration):
            raise TypeError(
                f"`prototype_generation` must be a PrototypeGeneration, got {type(prototype_generation).__name__}."
            )
        if classes is not None and (
            isinstance(classes, str)
            or not classes
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes)
        ):
            raise ValueError(f"`classes` must be None or a non-empty list of class indices >= 0, got {classes!r}.")
        if layers is not None and (isinstance(layers, str) or not all(isinstance(name, str) for name in layers)):
            raise ValueError(f"`layers` must be None or a list of dotted module names, got {layers!r}.")
        check_positive_int(num_samples, "num_samples")
        if inputs is not None:
            check_image_batch(inputs, "inputs", method=type(self).__name__)
        if labels is not None:
            if inputs is None:
                raise ValueError("`labels` were given without `inputs`; pass both or neither.")
            if not isinstance(labels, Tensor) or labels.shape != (inputs.shape[0],) or labels.is_floating_point():
                got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
                raise ValueError(f"`labels` must be an integer tensor of shape ({inputs.shape[0]},), got {got}.")
        check_choice(target, "target", ("predicted", "label"))
        check_positive_int(image_samples, "image_samples")

        self.probes = tuple(dict.fromkeys(probes))
        self.fill_in_the_blanks = fill_in_the_blanks or FillInTheBlanks()
        self.prototype_generation = prototype_generation or PrototypeGeneration()
        self.classes = None if classes is None else list(classes)
        self.layers = None if layers is None else list(layers)
        self.baseline = baseline
        self.num_samples = num_samples
        self.target = target
        self.image_samples = image_samples

        self._given = inputs is not None
        self._inputs: Tensor | None = None if inputs is None else inputs.detach().cpu().clone()
        self._labels: Tensor | None = None if labels is None else labels.detach().cpu().long().clone()
        self._pending: list[tuple[Tensor, Tensor | None]] = []
        self._notice = PictureLoggerNotice(type(self).__name__)

    def __repr__(self) -> str:
        """The probes with their settings, and the monitor's own arguments (a fixed set by its shape)."""
        parts = [f"probes={list(self.probes)!r}"]
        for name in self.probes:
            parts.append(f"{name}={getattr(self, name)!r}")
        fixed = f"inputs=<{tuple(self._inputs.shape)}>" if self._given and self._inputs is not None else None
        parts += [
            f"classes={self.classes!r}",
            f"layers={self.layers!r}",
            f"baseline={self.baseline!r}",
            fixed or f"num_samples={self.num_samples}",
            f"every_n_epochs={self.every_n_epochs}",
            f"target={self.target!r}",
            f"stages={list(self.stages)!r}",
            f"on_error={self.on_error!r}",
        ]
        return f"{type(self).__name__}({', '.join(parts)})"

    @property
    def state_key(self) -> str:
        """Distinguishes monitors running different probes in a checkpoint."""
        return self._generate_state_key(probes=self.probes, every_n_epochs=self.every_n_epochs)

    # ------------------------------------------------------------------ the fixed set
    def _on_batch_end(self, trainer: Trainer, pl_module: LightningModule, batch: Any, dataloader_idx: int) -> None:
        """Collect the fixed set from the first batches of the first dataloader."""
        if self._inputs is not None or dataloader_idx != 0 or self._should_skip(trainer):
            return
        have = sum(x.shape[0] for x, _ in self._pending)
        if have >= self.num_samples:
            return
        try:
            inputs, labels = self.batch_transform(batch)
            if not isinstance(inputs, Tensor):
                raise TypeError(f"`batch_transform` must return (inputs: Tensor, labels), got {type(inputs).__name__}.")
            check_image_batch(inputs, "inputs (from `batch_transform`)", method=type(self).__name__)
        except Exception as error:
            self._handle_error("fixed set", error)
            return
        take = self.num_samples - have
        with torch.inference_mode(False):
            kept = inputs[:take].detach().cpu().clone()
            kept_labels = labels[:take].detach().cpu().long().clone() if isinstance(labels, Tensor) else None
        self._pending.append((kept, kept_labels))

    def _finalize_fixed_set(self) -> None:
        if self._inputs is not None or not self._pending:
            return
        self._inputs = torch.cat([x for x, _ in self._pending])
        labels = [y for _, y in self._pending if y is not None]
        self._labels = torch.cat(labels) if len(labels) == len(self._pending) else None
        self._pending = []

    # ------------------------------------------------------------------ the work
    def _handle_error(self, name: str, error: Exception) -> None:
        if self.on_error == "raise":
            raise error
        rank_zero_warn(f"ProbeMonitor: {name} failed and is skipped this epoch: {type(error).__name__}: {error}")

    def _on_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._should_skip(trainer):
            return
        self._finalize_fixed_set()
        if self._inputs is None:
            rank_zero_warn("ProbeMonitor: no validation samples were seen; the probes have nothing to run on.")
            return
        self._notice.maybe_notify(trainer)
        model = self._model(pl_module)
        inputs = self._inputs.to(pl_module.device)
        labels = None if self._labels is None else self._labels.to(pl_module.device)
        pictures = PictureLogger(trainer, owner=type(self).__name__)
        for name in self.probes:
            scalars: dict[str, Tensor] = {}
            images: dict[str, Tensor] = {}
            started = time.perf_counter()
            rank_zero_info(f"ProbeMonitor: running {name} on epoch {trainer.current_epoch}.")
            try:
                if name == "fill_in_the_blanks":
                    self._run_fill_in_the_blanks(model, inputs, labels, scalars, images)
                else:
                    self._run_prototype_generation(model, inputs, labels, scalars, images)
                ok = True
            except Exception as error:
                self._handle_error(f"probe {name!r}", error)
                ok = False
            rank_zero_info(
                f"ProbeMonitor: {name} {'done' if ok else 'failed'} in {time.perf_counter() - started:.1f} s."
            )
            # Every rank must log the same keys (sync_dist reduces them): agree first.
            if not trainer.strategy.reduce_boolean_decision(ok, all=True):
                continue
            for key, value in scalars.items():
                pl_module.log(key, value.float(), on_step=False, on_epoch=True, sync_dist=True)
            for key, image in images.items():
                pictures.image(key, image, trainer.global_step)

    @staticmethod
    def _logits(model: nn.Module, inputs: Tensor) -> Tensor:
        with explanation_mode(model, grad=False):
            outputs = model(inputs)
        if not isinstance(outputs, Tensor) or outputs.ndim != 2:
            got = tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__
            raise ValueError(f"The probes need model outputs of shape (B, num_classes), got {got}; pass `forward_fn`.")
        return outputs

    def _run_fill_in_the_blanks(
        self,
        model: nn.Module,
        inputs: Tensor,
        labels: Tensor | None,
        scalars: dict[str, Tensor],
        images: dict[str, Tensor],
    ) -> None:
        prefix = "xai/probes/fill_in_the_blanks"
        if self.target == "predicted":
            target = self._logits(model, inputs).argmax(1)
        elif labels is None:
            raise ValueError(
                "`target='label'` needs labels, but the fixed set has none; use target='predicted', pass `labels`, "
                "or a `batch_transform` that returns (inputs, labels)."
            )
        else:
            target = labels
        result = self.fill_in_the_blanks(model, inputs, target)
        scalars[f"{prefix}/score_before"] = result["score_before"].mean()
        scalars[f"{prefix}/score_after"] = result["score_after"].mean()
        scalars[f"{prefix}/score_gain"] = (result["score_after"] - result["score_before"]).mean()
        shown = slice(0, self.image_samples)
        rows = torch.cat([inputs[shown], result["masked"][shown], result["filled"][shown]])
        images[f"{prefix}/filled"] = _display_grid(rows, nrow=rows.shape[0] // 3, joint=True)
        present = target.unique()
        means = class_mean_fills(result, target, int(present.max()) + 1)[present]
        images[f"{prefix}/class_mean_fills"] = _display_grid(means, nrow=8, joint=True)

    def _run_prototype_generation(
        self,
        model: nn.Module,
        inputs: Tensor,
        labels: Tensor | None,
        scalars: dict[str, Tensor],
        images: dict[str, Tensor],
    ) -> None:
        generator = self.prototype_generation
        classes = self.classes if self.classes is not None else list(range(self._logits(model, inputs[:1]).shape[1]))
        runs = {generator.name: generator}
        if self.baseline:
            runs[BASELINE] = generator.unregularised()
        results = {
            key: probe(model, classes, input_shape=tuple(inputs.shape[1:]), device=inputs.device)
            for key, probe in runs.items()
        }
        for key, result in results.items():
            scalars[f"xai/probes/{key}/probability"] = result["probabilities"].mean()
            images[f"xai/probes/{key}/prototypes"] = _display_grid(result["prototypes"], nrow=10, joint=False)
        layers = self.layers if self.layers is not None else _default_layers(model)
        if not layers:
            return
        natural_labels = labels if labels is not None else self._logits(model, inputs).argmax(1)
        class_tensor = results[generator.name]["classes"]
        present = torch.isin(class_tensor, natural_labels)
        if not bool(present.any()):
            rank_zero_info(
                "ProbeMonitor: no fixed sample belongs to the prototypes' classes; no activation similarity."
            )
            return
        similarity = activation_similarity(
            model,
            results[generator.name]["prototypes"][present],
            inputs,
            layers,
            natural_labels=natural_labels,
            classes=class_tensor[present],
            baseline=results[BASELINE]["prototypes"][present] if self.baseline else None,
        )
        for layer, values in similarity.items():
            for metric, scores in values.items():
                key = BASELINE if metric.startswith("baseline_") else generator.name
                scalars[f"xai/probes/{key}/{layer}/{metric.removeprefix('baseline_')}"] = scores.nanmean()

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The fixed set (on the CPU) and the schedule's count, so a resumed run probes the same samples alike."""
        return {"inputs": self._inputs, "labels": self._labels, **self._schedule_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the fixed set (given ``inputs`` take precedence) and the schedule's count."""
        self._load_schedule_state(state_dict)
        if self._given:
            return
        self._inputs = state_dict.get("inputs")
        self._labels = state_dict.get("labels")


def _default_layers(model: nn.Module) -> list[str]:
    root = getattr(model, "wrapped_module", model)
    names = [name for name, module in root.named_modules() if isinstance(module, nn.Conv2d)]
    return names[-1:]


def _display_grid(images: Tensor, nrow: int, joint: bool, min_side: int = 64) -> Tensor:
    """A ``(3, H', W')`` grid in ``[0, 1]``: scaled jointly (one range for all tiles) or per tile; grey unless RGB."""
    images = images.detach().float().cpu()
    flat = images.flatten(1)
    if joint:
        low, high = flat.min(), flat.max()
    else:
        low, high = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
    scaled = ((images - low) / (high - low).clamp_min(1e-12)).clamp(0, 1)
    if scaled.shape[1] != 3:
        scaled = scaled.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    return image_grid(upscale(scaled, min_side), nrow=max(1, nrow))
