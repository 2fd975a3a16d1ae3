"""Shared plumbing of the callbacks that work during validation and testing: one schedule, one set of hooks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from lightning_xai._checks import check_choice, check_positive_int
from lightning_xai._typing import ForwardFn
from lightning_xai.callbacks._batches import ForwardWrapper, default_batch_transform

STAGES = ("fit", "validate", "test")
BatchTransform = Callable[[Any], tuple[Tensor, Tensor | None]]


class EvaluationCallback(Callback):
    """Routes the validation and test hooks to one implementation and decides in one place which epochs run.

    It also checks and keeps the arguments every such callback takes (when to run, how to read a batch and call
    the model, what to do on errors). Subclasses override :meth:`_on_batch_end`, :meth:`_on_epoch_start` and
    :meth:`_on_epoch_end`, each of which is called for validation (inside ``fit`` or ``trainer.validate()``) and for
    ``trainer.test()`` alike, always outside inference mode (``trainer.validate()`` and ``trainer.test()`` run their
    hooks inside it, and metric states created there could not be updated by the explainers' work).

    Schedule: inside ``fit``, ``every_n_epochs`` counts the epochs in which validation runs, not epoch numbers: the
    callback runs in the 1st, ``(n+1)``-th, ``(2n+1)``-th ... epoch that validates, on every validation run of that
    epoch. With ``check_val_every_n_epoch=2`` (validation after epochs 1, 3, 5, ...) and ``every_n_epochs=2`` it runs
    after epochs 1, 5, 9, ...; counting epoch numbers would never meet that schedule. ``trainer.validate()`` and
    ``trainer.test()`` run whenever their stage is in ``stages``. The count is kept in the checkpoint.

    Args:
        every_n_epochs: inside ``fit``, run on every ``n``-th epoch that validates, starting with the first.
        stages: in which trainer functions to run: a list of any of ``"fit"``, ``"validate"``, ``"test"``.
        batch_transform: ``batch -> (inputs, labels)``; the default handles tensors, tuples and dicts.
        forward_fn: ``(module, inputs) -> outputs`` when ``module(inputs)`` is not how the model predicts.
        on_error: ``"raise"`` or ``"warn"`` when the monitoring work fails.
    """

    def __init__(
        self,
        *,
        every_n_epochs: int,
        stages: Sequence[str],
        batch_transform: BatchTransform | None,
        forward_fn: ForwardFn | None,
        on_error: Literal["raise", "warn"],
    ) -> None:
        super().__init__()
        check_positive_int(every_n_epochs, "every_n_epochs")
        if isinstance(stages, str) or not isinstance(stages, Sequence):
            raise TypeError(f"`stages` must be a list of any of {STAGES}, such as ['fit'], got {stages!r}.")
        if not stages:
            raise ValueError(f"`stages` must name at least one of {STAGES}, got an empty {type(stages).__name__}.")
        for stage in stages:
            check_choice(stage, "stages", STAGES)
        if batch_transform is not None and not callable(batch_transform):
            raise TypeError(f"`batch_transform` must be a callable batch -> (inputs, labels), got {batch_transform!r}.")
        if forward_fn is not None and not callable(forward_fn):
            raise TypeError(f"`forward_fn` must be a callable (module, inputs) -> outputs, got {forward_fn!r}.")
        check_choice(on_error, "on_error", ("raise", "warn"))
        self.every_n_epochs = every_n_epochs
        self.stages = tuple(stages)
        self.batch_transform: BatchTransform = batch_transform or default_batch_transform
        self.forward_fn = forward_fn
        self.on_error = on_error
        self._validated_epochs = 0  # epochs of the fit in which validation ran (outside the sanity check)
        self._last_validated_epoch: int | None = None

    def _model(self, pl_module: LightningModule) -> nn.Module:
        """The module to explain or probe: ``pl_module`` itself, or wrapped so that it calls ``forward_fn``."""
        return pl_module if self.forward_fn is None else ForwardWrapper(pl_module, self.forward_fn)

    def _should_skip(self, trainer: Trainer) -> bool:
        """Skip the sanity check, the trainer functions not in ``stages`` and the validated epochs off the schedule."""
        stage = trainer.state.fn.value if trainer.state.fn is not None else None
        if trainer.sanity_checking or stage not in self.stages:
            return True
        return stage == "fit" and (self._validated_epochs - 1) % self.every_n_epochs != 0

    def _count_validation(self, trainer: Trainer) -> None:
        """Count the fit's epochs that validate, once per epoch, at the start of its first validation run."""
        fitting = trainer.state.fn is not None and trainer.state.fn.value == "fit"
        if fitting and not trainer.sanity_checking and trainer.current_epoch != self._last_validated_epoch:
            self._validated_epochs += 1
            self._last_validated_epoch = trainer.current_epoch

    def _schedule_state(self) -> dict[str, Any]:
        """The schedule's count, for the subclass's ``state_dict``."""
        return {"validated_epochs": self._validated_epochs, "last_validated_epoch": self._last_validated_epoch}

    def _load_schedule_state(self, state_dict: dict[str, Any]) -> None:
        self._validated_epochs = state_dict.get("validated_epochs", 0)
        self._last_validated_epoch = state_dict.get("last_validated_epoch")

    def _on_batch_end(self, trainer: Trainer, pl_module: LightningModule, batch: Any, dataloader_idx: int) -> None:
        """Called after every validation or test batch."""

    def _on_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Called at the start of every validation or test epoch."""

    def _on_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Called at the end of every validation or test epoch."""

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Route to :meth:`_on_batch_end`."""
        with torch.inference_mode(False):
            self._on_batch_end(trainer, pl_module, batch, dataloader_idx)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Route to :meth:`_on_batch_end`."""
        with torch.inference_mode(False):
            self._on_batch_end(trainer, pl_module, batch, dataloader_idx)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Count the validated epoch, then route to :meth:`_on_epoch_start`."""
        self._count_validation(trainer)
        with torch.inference_mode(False):
            self._on_epoch_start(trainer, pl_module)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Route to :meth:`_on_epoch_start`."""
        with torch.inference_mode(False):
            self._on_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Route to :meth:`_on_epoch_end`."""
        with torch.inference_mode(False):
            self._on_epoch_end(trainer, pl_module)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Route to :meth:`_on_epoch_end`."""
        with torch.inference_mode(False):
            self._on_epoch_end(trainer, pl_module)
