"""Shared plumbing of the callbacks that work during validation and testing: one schedule, one set of hooks."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback

STAGES = ("fit", "validate", "test")


class EvaluationCallback(Callback):
    """Routes the validation and test hooks to one implementation and decides in one place which epochs run.

    Subclasses set ``stages`` and ``every_n_epochs`` and override :meth:`_on_batch_end`,
    :meth:`_on_epoch_start` and :meth:`_on_epoch_end`, each of which is called for validation (inside ``fit`` or
    ``trainer.validate()``) and for ``trainer.test()`` alike.
    """

    stages: tuple[str, ...] = ("fit",)
    every_n_epochs: int = 1

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
