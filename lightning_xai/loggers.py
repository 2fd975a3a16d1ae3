"""One place that sends pictures (images, figures, text) to the loggers that can show them.

Scalars never come through here: callbacks log them with ``pl_module.log``, which reaches every logger and
``trainer.callback_metrics``. Pictures go to each logger of the trainer that has a way to show them, on global zero
only; :class:`PictureLogger` is the one dispatch the callbacks use.
"""

from __future__ import annotations

from typing import Any

import matplotlib.figure
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor


def _tensorboard_image(logger: Any, tag: str, image: Tensor, step: int) -> None:
    logger.experiment.add_image(tag, image, global_step=step)


def _tensorboard_figure(logger: Any, tag: str, figure: matplotlib.figure.Figure, step: int) -> None:
    logger.experiment.add_figure(tag, figure, global_step=step, close=False)


def _tensorboard_text(logger: Any, tag: str, text: str, step: int) -> None:
    logger.experiment.add_text(tag, text, global_step=step)
    logger.experiment.flush()  # a gate report is written just before the run raises


#: logger class -> (image, figure, text) writers. Each takes ``(logger, tag, picture, step)``; images are float
#: ``(3, H, W)`` tensors in ``[0, 1]`` on the CPU.
_BACKENDS: dict[type, tuple[Any, Any, Any]] = {
    TensorBoardLogger: (_tensorboard_image, _tensorboard_figure, _tensorboard_text),
}


def _backend(logger: Any) -> tuple[Any, Any, Any] | None:
    for kind, writers in _BACKENDS.items():
        if isinstance(logger, kind):
            return writers
    return None


class PictureLogger:
    """Sends images, figures and text to every logger of ``trainer`` that can show them (global zero only).

    Args:
        trainer: the trainer whose loggers receive the pictures.
        owner: the callback's name, used in the one-time notice for loggers that get no pictures.

    Example:
        >>> import lightning as L
        >>> pictures = PictureLogger(L.Trainer(logger=False, enable_progress_bar=False), owner="Doc")
        >>> pictures.active
        False
    """

    def __init__(self, trainer: Trainer, owner: str = "lightning_xai") -> None:
        self.trainer = trainer
        self.owner = owner
        loggers = trainer.loggers if trainer.is_global_zero else []
        self._targets = [(logger, writers) for logger in loggers if (writers := _backend(logger)) is not None]

    @property
    def active(self) -> bool:
        """Whether any logger will receive pictures (so callers can skip drawing them)."""
        return bool(self._targets)

    def image(self, tag: str, image: Tensor, step: int) -> None:
        """Log a float ``(3, H, W)`` image in ``[0, 1]`` under ``tag``."""
        for logger, (write, _, _) in self._targets:
            write(logger, tag, image, step)

    def figure(self, tag: str, figure: matplotlib.figure.Figure, step: int) -> None:
        """Log a matplotlib figure under ``tag`` (the caller closes it)."""
        for logger, (_, write, _) in self._targets:
            write(logger, tag, figure, step)

    def text(self, tag: str, text: str, step: int) -> None:
        """Log a Markdown text under ``tag``."""
        for logger, (_, _, write) in self._targets:
            write(logger, tag, text, step)


class PictureLoggerNotice:
    """Says once, per callback, which loggers get scalars but no pictures."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.given = False

    def maybe_notify(self, trainer: Trainer) -> None:
        """Log the notice once if a logger without a picture backend is attached (or none at all)."""
        if self.given:
            return
        others = [type(logger).__name__ for logger in trainer.loggers if _backend(logger) is None]
        if others or not trainer.loggers:
            shown = sorted(kind.__name__ for kind in _BACKENDS)
            rank_zero_info(
                f"{self.owner}: images and figures go to {', '.join(shown)}; "
                f"{others or 'no logger'} get the scalars (through pl_module.log) and no pictures."
            )
        self.given = True
