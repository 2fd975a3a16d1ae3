"""Where pictures go: every TensorBoardLogger of the trainer, on global zero only."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info


def tensorboard_writers(trainer: Trainer) -> list[Any]:
    """The ``SummaryWriter`` of every ``TensorBoardLogger`` attached to ``trainer`` (empty off global zero)."""
    if not trainer.is_global_zero:
        return []
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


class ImageLoggerNotice:
    """Says once, per callback, that loggers other than TensorBoard get scalars but no pictures."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.given = False

    def maybe_notify(self, trainer: Trainer) -> None:
        """Log the notice once if a logger other than ``TensorBoardLogger`` is attached."""
        if self.given:
            return
        others = [type(logger).__name__ for logger in trainer.loggers if not isinstance(logger, TensorBoardLogger)]
        if others or not trainer.loggers:
            rank_zero_info(
                f"{self.owner}: images and figures go to TensorBoardLogger only; "
                f"{others or 'no logger'} get the scalars (through pl_module.log) and no pictures."
            )
        self.given = True
