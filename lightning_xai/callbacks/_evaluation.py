"""Shared plumbing of the callbacks that work during validation and testing: one schedule, one set of hooks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

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
    ``trainer.test()`` alike.

    Args:
        every_n_epochs: run on epochs ``0, n, 2n, ...``.
        stages: in which trainer functions to run: any of ``"fit"``, ``"validate"``, ``"test"``.
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

    def _model(self, pl_module: LightningModule) -> nn.Module:
        """The module to explain or probe: ``pl_module`` itself, or wrapped so that it calls ``forward_fn``."""
        return pl_module if self.forward_fn is None else ForwardWrapper(pl_module, self.forward_fn)

    def _should_skip(self, trainer: Trainer) -> bool:
        """Skip the sanity check, the trainer functions not in ``stages`` and the epochs off the schedule."""
        stage = trainer.state.fn.value if trainer.state.fn is not None else None
        return trainer.sanity_checking or stage not in self.stages or trainer.current_epoch % self.every_n_epochs != 0

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
        self._on_batch_end(trainer, pl_module, batch, dataloader_idx)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Route to :meth:`_on_epoch_start`."""
        self._on_epoch_start(trainer, pl_module)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Route to :meth:`_on_epoch_start`."""
        self._on_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Route to :meth:`_on_epoch_end`."""
        self._on_epoch_end(trainer, pl_module)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Route to :meth:`_on_epoch_end`."""
        self._on_epoch_end(trainer, pl_module)
