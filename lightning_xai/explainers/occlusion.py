"""Occlusion: how much the target score drops when a sliding window of the image is replaced by a baseline."""

from __future__ import annotations

import math
from typing import cast

import captum.attr
from torch import Tensor, nn

from lightning_xai._checks import check_in_range, check_positive_int
from lightning_xai._typing import TargetType
from lightning_xai.explainers.base import Explainer, captum_forward


def _window(value: object, name: str) -> tuple[int, ...]:
    """An ``int``, a pair ``(height, width)`` or a triple ``(frames, height, width)`` of ints >= 1 (lists from YAML)."""
    if isinstance(value, (tuple, list)):
        if len(value) not in (2, 3):
            raise ValueError(
                f"`{name}` must be an int, a pair (height, width) for images or a triple (frames, height, width) for "
                f"clips, of ints >= 1, got {value!r}."
            )
        for side in value:
            check_positive_int(side, name)
        return tuple(int(side) for side in value)
    check_positive_int(value, name)
    side = cast(int, value)
    return side, side


def _for_inputs(value: tuple[int, ...], name: str, inputs: Tensor) -> tuple[int, ...]:
    """The window or stride over the inputs' non-channel dimensions: ``(h, w)`` for images, ``(t, h, w)`` for clips.

    A pair (or an int) given for a clip spans one frame (time stride 1); a triple given for an image is refused.
    """
    if inputs.ndim == 4 and len(value) == 3:
        raise ValueError(
            f"`{name}` {value} is a spatio-temporal (frames, height, width) triple, but the inputs are images of "
            f"shape {tuple(inputs.shape)}; give an int or a pair (height, width) for images."
        )
    if inputs.ndim == 5 and len(value) == 2:
        return (1, *value)
    return value


class Occlusion(Explainer):
    """Occlusion sensitivity: slide a patch of ``baseline`` over the image and record the target score's drop.

    Wraps ``captum.attr.Occlusion`` with a window that spans all channels: for each window position the drop
    ``S(x) - S(x with the window replaced by baseline)`` is credited to every pixel of the window, and each
    pixel's value is the mean over the windows that cover it (Captum places a last window flush with the border,
    so every pixel is covered). Higher means occluding that pixel's neighbourhood lowers the target score more;
    negative values mean occlusion raises it. Needs only forward passes: ``((H - h) / s_h + 1) * ((W - w) / s_w
    + 1)`` (rounded up) occluded copies per image.

    Because the window spans the channels, Captum's map is the same in every channel; it is returned once,
    ``(B, 1, H, W)``, with no channel reduction.

    Clips ``(B, C, T, H, W)``: ``window`` and ``stride`` as ``(frames, height, width)`` slide a spatio-temporal
    box (Captum's ``sliding_window_shapes=(C, t, h, w)``), giving ``(B, 1, T, H, W)``; an int or a pair given for
    clips is a spatial window one frame long, slid frame by frame (time stride 1). A triple for images, or a
    window larger than the clip, is refused with the value and the inputs' size.

    Paper: M. D. Zeiler, R. Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014
    (arXiv:1311.2901).

    Args:
        window: side of the square occluding patch in pixels, ``(height, width)``, or ``(frames, height, width)``
            for clips.
        stride: step between window positions, int, ``(height, width)`` or ``(frames, height, width)`` for clips.
        baseline: the value painted into the window (0 = black for inputs in [0, 1]).
        internal_batch_size: at most this many occluded images per forward (rounded down to whole multiples of
            the batch); None runs one occluded copy of the batch per forward.

    Returns (when called):
        float32 ``(B, 1, H, W)``; ``(B, 1, T, H, W)`` for clips.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
        >>> Occlusion(window=1, stride=1)(model, torch.rand(2, 3, 2, 2), torch.tensor([0, 1])).shape
        torch.Size([2, 1, 2, 2])
    """

    needs_grad = False
    supports_video = True

    def __init__(
        self,
        window: int | tuple[int, int] | tuple[int, int, int] = 8,
        stride: int | tuple[int, int] | tuple[int, int, int] = 4,
        baseline: float = 0.0,
        internal_batch_size: int | None = None,
    ) -> None:
        self.window = _window(window, "window")
        self.stride = _window(stride, "stride")
        check_in_range(baseline, "baseline", -math.inf, math.inf, low_inclusive=False, high_inclusive=False)
        if internal_batch_size is not None:
            check_positive_int(internal_batch_size, "internal_batch_size")
        self.baseline = float(baseline)
        self.internal_batch_size = internal_batch_size

    def attribute(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        """Captum's Occlusion with a window over all channels; one channel of its (channel-constant) map."""
        batch, channels, *size = inputs.shape
        window = _for_inputs(self.window, "window", inputs)
        stride = _for_inputs(self.stride, "stride", inputs)
        if any(side > extent for side, extent in zip(window, size, strict=True)):
            kind = "clips' (T, H, W) =" if inputs.ndim == 5 else "images"
            raise ValueError(f"`window` {window} is larger than the {kind} {tuple(size)}; use a window that fits.")
        per_eval = 1 if self.internal_batch_size is None else max(1, self.internal_batch_size // batch)
        forward, captum_target = captum_forward(model, target)
        attributions: Tensor = captum.attr.Occlusion(forward).attribute(
            inputs,
            sliding_window_shapes=(channels, *window),
            strides=(channels, *stride),
            baselines=self.baseline,
            target=captum_target,
            perturbations_per_eval=per_eval,
        )
        return attributions[:, :1].detach()
