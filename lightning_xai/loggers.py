"""One place that sends pictures (images, figures, text) to the loggers that can show them.

Backends: ``TensorBoardLogger`` (``add_image``, ``add_text``), ``WandbLogger`` (``log_image`` with ``wandb.Image``,
``log_text`` as a one-cell table) and ``MLFlowLogger`` (``log_image`` and ``log_text`` on its client and
``run_id``: PNGs under the run's ``images/`` artefacts, texts under ``text/``). Any other logger gets the scalars and
a one-time notice (:class:`PictureLoggerNotice`).

Clips (:meth:`PictureLogger.video`) become TensorBoard video summaries (animated GIFs, written by ``add_video``,
which needs ``moviepy<2``'s ``moviepy.editor``); without it, and on W&B and MLflow (whose video types need
``moviepy`` as well), they are logged as a frame grid image under the same tag.

Scalars never come through here: callbacks log them with ``pl_module.log``, which reaches every logger and
``trainer.callback_metrics``. Pictures go to each logger of the trainer that has a way to show them, on global zero
only; :class:`PictureLogger` is the one dispatch the callbacks use.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import struct
import zlib
from collections.abc import Callable
from typing import Any

import matplotlib.figure
import numpy as np
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_xai.visualize import image_grid, render

__all__ = ["PictureLogger", "PictureLoggerNotice", "png_bytes", "video_summaries_available"]


def _hwc_uint8(image: Tensor) -> np.ndarray:
    """A ``(3, H, W)`` image, uint8 or float in ``[0, 1]``, as the contiguous ``(H, W, 3)`` uint8 array loggers take."""
    image = image.detach().cpu()
    if image.dtype != torch.uint8:
        image = image.clamp(0, 1).mul(255).add_(0.5).byte()
    return np.ascontiguousarray(image.permute(1, 2, 0).numpy())


def png_bytes(image: np.ndarray) -> bytes:
    """A lossless PNG of an ``(H, W, 3)`` uint8 image: every row "Up"-filtered, deflated at zlib level 3.

    One fixed filter instead of Pillow's per-row choice: about 3 times faster than Pillow at level 1 on a heatmap
    grid (2 ms for 852 x 490), and smaller, since grid tiles upscaled by repetition repeat their rows. Level 3
    costs 0.05 - 0.1 ms more than level 1 per picture and makes the monitor's pictures 7 % smaller (a grid 3 kB),
    which TensorBoard's pure-Python checksum (about 0.11 ms per kB) more than pays back: 0.4 ms less per epoch of
    the quickstart monitor, encoding and checksum together; levels 4 and up cost 4 ms more.

    Example:
        >>> import io; from PIL import Image
        >>> pixels = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
        >>> bool((np.asarray(Image.open(io.BytesIO(png_bytes(pixels)))) == pixels).all())
        True
    """
    height, width, channels = image.shape
    if image.dtype != np.uint8 or channels != 3:
        raise ValueError(f"`image` must be an (H, W, 3) uint8 array, got {image.dtype} {image.shape}.")
    rows = np.ascontiguousarray(image).reshape(height, width * 3)
    raw = np.empty((height, width * 3 + 1), dtype=np.uint8)
    raw[:, 0] = 2  # filter type Up: each byte minus the byte above it (modulo 256)
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    body = zlib.compress(raw.data, 3)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def _tensorboard_image(logger: Any, tag: str, image: np.ndarray, step: int) -> None:
    """One image summary of the uint8 pixels, PNG-encoded by :func:`png_bytes`.

    ``add_image`` would copy the pixels to float and back and let Pillow encode at level 6: about 4 times the CPU
    for a grid. Writers without ``_get_file_writer`` (tensorboardX) go through ``add_image``. The record itself
    is written by TensorBoard's own writer (its pure-Python CRC-32C costs about 0.11 ms per kB; we leave it alone).
    """
    writer = logger.experiment
    if not hasattr(writer, "_get_file_writer"):
        writer.add_image(tag, image, global_step=step, dataformats="HWC")
        return
    from tensorboard.compat.proto.summary_pb2 import Summary

    height, width, channels = image.shape
    encoded = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=png_bytes(image))
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=encoded)]), step)


def _tensorboard_text(logger: Any, tag: str, text: str, step: int) -> None:
    logger.experiment.add_text(tag, text, global_step=step)
    logger.experiment.flush()  # a gate report is written just before the run raises


def _wandb_image(logger: Any, tag: str, image: np.ndarray, step: int) -> None:
    logger.log_image(key=tag, images=[image], step=step)


def _wandb_text(logger: Any, tag: str, text: str, step: int) -> None:
    logger.log_text(key=tag, columns=["report"], data=[[text]], step=step)


def _mlflow_key(tag: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_\-./ ]", "_", tag)  # the characters MLflow accepts in an image key


def _mlflow_image(logger: Any, tag: str, image: np.ndarray, step: int) -> None:
    logger.experiment.log_image(logger.run_id, image, key=_mlflow_key(tag), step=step, synchronous=True)


def _mlflow_text(logger: Any, tag: str, text: str, step: int) -> None:
    logger.experiment.log_text(logger.run_id, text, artifact_file=f"text/{_mlflow_key(tag)}/step={step}.md")


#: logger class -> (image, text) writers, each ``(logger, tag, picture, step)``; images are ``(H, W, 3)`` uint8
#: arrays, converted once for every logger. Figures are drawn once (:func:`~lightning_xai.visualize.render`) and
#: sent to every logger as images.
_BACKENDS: dict[type, tuple[Any, Any]] = {
    TensorBoardLogger: (_tensorboard_image, _tensorboard_text),
    WandbLogger: (_wandb_image, _wandb_text),
    MLFlowLogger: (_mlflow_image, _mlflow_text),
}


def _tensorboard_video(logger: Any, tag: str, frames: Tensor, step: int, fps: int) -> None:
    logger.experiment.add_video(tag, frames, global_step=step, fps=fps)


#: logger class -> video writer ``(logger, tag, frames (N, T, 3, H, W), step, fps)``; loggers without one get the
#: frame grid through their image writer.
_VIDEO_BACKENDS: dict[type, Any] = {TensorBoardLogger: _tensorboard_video}


@functools.cache
def video_summaries_available() -> bool:
    """Whether TensorBoard's ``add_video`` can encode a clip here: it needs ``moviepy.editor`` (``moviepy<2``)."""
    try:
        return (
            importlib.util.find_spec("moviepy") is not None and importlib.util.find_spec("moviepy.editor") is not None
        )
    except (ImportError, ValueError):  # pragma: no cover - a broken moviepy install
        return False


def _video_backend(logger: Any) -> Any | None:
    if not video_summaries_available():
        return None
    for kind, writer in _VIDEO_BACKENDS.items():
        if isinstance(logger, kind):
            return writer
    return None


def _backend(logger: Any) -> tuple[Any, Any] | None:
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
        """Log a ``(3, H, W)`` image under ``tag``: float in ``[0, 1]``, or uint8 (as the grids draw it, no copy)."""
        if not self._targets:
            return
        pixels = _hwc_uint8(image)
        for logger, (write, _) in self._targets:
            write(logger, tag, pixels, step)

    def figure(self, tag: str, figure: matplotlib.figure.Figure, step: int) -> None:
        """Draw a matplotlib figure once and log its pixels under ``tag`` on every logger (the caller closes it)."""
        if self._targets:
            self.image(tag, render(figure), step)

    def video(
        self,
        tag: str,
        frames: Tensor,
        step: int,
        *,
        grid: Tensor | Callable[[], Tensor] | None = None,
        fps: int = 4,
    ) -> None:
        """Log clips under ``tag``: a video summary where the logger can write one, else a frame grid image.

        Args:
            tag: the tag (``xai/<explainer>/heatmaps``).
            frames: float ``(N, T, 3, H, W)`` in ``[0, 1]``: ``N`` clips of ``T`` frames.
            step: the global step.
            grid: the float ``(3, H', W')`` frame grid logged where no video can be (or a callable building it, called
                at most once and only when needed); None tiles ``frames`` with samples along the rows and frames along
                the columns.
            fps: frames per second of the video summary.
        """
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"`frames` must be (N, T, 3, H, W) floats in [0, 1], got shape {tuple(frames.shape)}.")
        built: list[Tensor] = []

        def frame_grid() -> Tensor:
            if not built:
                if grid is None:
                    built.append(image_grid(frames.flatten(0, 1), nrow=frames.shape[1]))
                else:
                    built.append(grid() if callable(grid) else grid)
            return built[0]

        for logger, (write_image, _) in self._targets:
            write_video = _video_backend(logger)
            if write_video is not None:
                write_video(logger, tag, frames.detach().cpu().clamp(0, 1), step, fps)
            else:
                write_image(logger, tag, _hwc_uint8(frame_grid()), step)

    def text(self, tag: str, text: str, step: int) -> None:
        """Log a Markdown text under ``tag`` (TensorBoard text, a one-cell W&B table, an MLflow ``.md`` artefact)."""
        for logger, (_, write) in self._targets:
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
