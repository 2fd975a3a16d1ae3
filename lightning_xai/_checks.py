"""Argument checks with uniform messages: every error names the argument, the value and what is accepted."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return repr(value)


def check_choice(value: Any, name: str, choices: Iterable[Any]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")


def check_bool(value: Any, name: str) -> None:
    """Raise a ``TypeError`` unless ``value`` is ``True`` or ``False`` (a string such as ``"no"`` is refused)."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False, got {value!r}.")


def check_positive_int(value: Any, name: str, minimum: int = 1) -> None:
    """Raise unless ``value`` is an ``int`` greater than or equal to ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int >= {minimum}, got {_describe(value)}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value}.")


def check_in_range(
    value: Any, name: str, low: float, high: float, *, low_inclusive: bool = True, high_inclusive: bool = True
) -> None:
    """Raise unless ``value`` is a real number within the given interval."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number, got {_describe(value)}.")
    above = value >= low if low_inclusive else value > low
    below = value <= high if high_inclusive else value < high
    if not (above and below):
        interval = f"{'[' if low_inclusive else '('}{low}, {high}{']' if high_inclusive else ')'}"
        raise ValueError(f"`{name}` must lie in {interval}, got {value}.")


def check_image_batch(inputs: Any, name: str = "inputs", *, video: bool = False, method: str | None = None) -> None:
    """Raise unless ``inputs`` is a floating-point ``(B, C, H, W)`` batch with ``B >= 1``.

    With ``video=True`` a clip batch ``(B, C, T, H, W)`` is accepted as well. Without it, a 5-D batch is refused
    with a message saying that ``method`` (the explainer or metric) has no meaning for clips.
    """
    accepted = "(B, C, H, W) or (B, C, T, H, W)" if video else "(B, C, H, W)"
    if not isinstance(inputs, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape {accepted}, got {type(inputs).__name__}.")
    if inputs.ndim == 5 and not video:
        who = method or "this method"
        raise ValueError(
            f"`{name}` is a clip batch (B, C, T, H, W) of shape {tuple(inputs.shape)}, but {who} has no "
            "spatio-temporal meaning and accepts images (B, C, H, W) only (the explainers and metrics that "
            "accept clips have `supports_video = True`)."
        )
    if inputs.ndim not in ((4, 5) if video else (4,)):
        raise ValueError(
            f"`{name}` must have shape {accepted} ({'4 or 5' if video else '4'} dimensions), "
            f"got shape {tuple(inputs.shape)}."
        )
    if not inputs.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {inputs.dtype}.")
    if inputs.shape[0] == 0:
        raise ValueError(f"`{name}` must hold at least one sample, got shape {tuple(inputs.shape)}.")


def check_attributions(attributions: Any, inputs: Tensor, name: str = "attributions") -> None:
    """Raise unless ``attributions`` is a finite map matching ``inputs``.

    Accepted: ``(B, 1, H, W)`` or ``(B, C, H, W)`` for images, ``(B, 1, T, H, W)`` or ``(B, C, T, H, W)`` for
    clips ``(B, C, T, H, W)``.
    """
    if not isinstance(attributions, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(attributions).__name__}.")
    batch, channels, *rest = inputs.shape
    shape = tuple(attributions.shape)
    accepted = {(batch, 1, *rest), (batch, channels, *rest)}
    if shape not in accepted:
        dims = "T, H, W" if inputs.ndim == 5 else "H, W"
        raise ValueError(
            f"`{name}` must have shape (B, 1, {dims}) or (B, C, {dims}) matching the inputs' "
            f"{tuple(inputs.shape)}, got {shape}."
        )
    check_finite(attributions, name)


def check_finite(values: Tensor, name: str) -> None:
    """Raise ``ValueError`` naming the samples (first dimension) that hold NaN or infinite values."""
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        bad = (~finite).flatten(1).any(1).nonzero().flatten().tolist() if values.ndim > 1 else []
        raise ValueError(
            f"`{name}` holds non-finite values (NaN or inf)" + (f" in samples {bad[:10]}" if bad else "") + "."
        )
