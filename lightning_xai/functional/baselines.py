"""Baselines that perturbation metrics put in place of removed pixels: numbers, "mean", "blur", "noise"."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_xai._checks import check_finite
from lightning_xai.functional._common import local_generator

#: A baseline: a number (constant image), ``"mean"``, ``"blur"``, ``"noise"``, a tensor broadcastable to the inputs
#: or a callable ``(inputs) -> Tensor`` of the inputs' shape.
BaselineType = float | str | Tensor | Callable[[Tensor], Tensor]
BASELINE_NAMES: tuple[str, ...] = ("mean", "blur", "noise")


def check_baseline(baseline: object, name: str = "baseline") -> None:
    """Raise unless ``baseline`` is a number, one of ``"mean"``, ``"blur"``, ``"noise"``, a tensor or a callable."""
    if isinstance(baseline, bool):
        raise TypeError(f"`{name}` must be a number, {BASELINE_NAMES}, a tensor or a callable, got {baseline!r}.")
    if isinstance(baseline, (int, float)):
        if not math.isfinite(baseline):
            raise ValueError(f"`{name}` must be a finite number, got {baseline}.")
        return
    if isinstance(baseline, str):
        if baseline not in BASELINE_NAMES:
            raise ValueError(
                f"`{name}` must be a number, a tensor, a callable or one of {BASELINE_NAMES}, got {baseline!r}."
            )
        return
    if isinstance(baseline, Tensor) or callable(baseline):
        return
    raise TypeError(
        f"`{name}` must be a number, one of {BASELINE_NAMES}, a tensor or a callable, got {type(baseline).__name__}."
    )


def _reflect_index(index: int, length: int) -> int:
    """Map ``index`` into ``[0, length)`` by half-sample symmetric reflection (scipy's ``mode="reflect"``)."""
    index %= 2 * length
    return index if index < length else 2 * length - 1 - index


def gaussian_kernel(kernel_size: int = 11, sigma: float = 5.0) -> Tensor:
    """RISE's blur kernel ``gkern(klen, nsig)``: scipy's ``gaussian_filter`` of a centred delta, shape ``(k, k)``.

    ``scipy.ndimage.gaussian_filter`` samples a Gaussian truncated at ``4 sigma`` (radius ``int(4 sigma + 0.5)``),
    normalises it, and filters the ``k x k`` delta with reflected borders; since the truncated Gaussian is wider
    than the kernel for RISE's ``klen=11, nsig=5``, the reflections fold its tails back in, so the kernel is
    flatter than a sampled Gaussian and sums to 1. The filter is separable: the kernel is an outer product.

    Example:
        >>> kernel = gaussian_kernel(11, 5.0)
        >>> kernel.shape, round(kernel.sum().item(), 6)
        (torch.Size([11, 11]), 1.0)
    """
    radius = int(4.0 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * offsets**2 / sigma**2)
    weights /= weights.sum()
    centre = kernel_size // 2
    profile = torch.zeros(kernel_size, dtype=torch.float64)
    for position in range(kernel_size):
        for offset, weight in zip(range(-radius, radius + 1), weights.tolist(), strict=True):
            if _reflect_index(position + offset, kernel_size) == centre:
                profile[position] += weight
    return torch.outer(profile, profile).to(torch.float32)


def gaussian_blur(inputs: Tensor, kernel_size: int = 11, sigma: float = 5.0) -> Tensor:
    """Blur each channel of ``(B, C, H, W)`` with :func:`gaussian_kernel`, zero-padded (RISE's insertion start).

    Example:
        >>> blurred = gaussian_blur(torch.ones(1, 3, 16, 16))
        >>> blurred.shape, round(blurred[0, 0, 8, 8].item(), 4)
        (torch.Size([1, 3, 16, 16]), 1.0)
    """
    channels = inputs.shape[1]
    kernel = gaussian_kernel(kernel_size, sigma).to(device=inputs.device, dtype=inputs.dtype)
    weight = kernel.expand(channels, 1, kernel_size, kernel_size)
    return F.conv2d(inputs, weight, padding=kernel_size // 2, groups=channels)


def make_baseline(inputs: Tensor, baseline: BaselineType, *, seed: int = 0, name: str = "baseline") -> Tensor:
    """Build the baseline image for every input, shape ``(B, C, H, W)``, on the inputs' device and dtype.

    Args:
        inputs: images ``(B, C, H, W)``.
        baseline: a number (a constant image, e.g. 0 = the normalisation mean); ``"mean"`` (each image's own
            per-channel mean); ``"blur"`` (RISE's Gaussian blur, ``klen=11, nsig=5``); ``"noise"`` (one standard
            normal noise image from a local generator seeded with ``seed``, shared by every sample, so a sample's
            baseline does not depend on the rest of the batch); a tensor broadcastable to the inputs; or a callable
            ``(inputs) -> Tensor`` returning one.
        seed: seed of the ``"noise"`` baseline.
        name: the argument name used in error messages.

    Example:
        >>> x = torch.arange(4.0).view(1, 1, 2, 2)
        >>> make_baseline(x, "mean").flatten().tolist()
        [1.5, 1.5, 1.5, 1.5]
    """
    check_baseline(baseline, name)
    if isinstance(baseline, (int, float)):
        return torch.full_like(inputs, float(baseline))
    if isinstance(baseline, str):
        if baseline == "mean":
            return inputs.mean(dim=(2, 3), keepdim=True).expand_as(inputs).clone()
        if baseline == "blur":
            return gaussian_blur(inputs)
        generator = local_generator(seed, inputs.device)
        noise = torch.randn((1, *inputs.shape[1:]), generator=generator, device=inputs.device, dtype=inputs.dtype)
        return noise.expand_as(inputs)
    values = baseline if isinstance(baseline, Tensor) else baseline(inputs)
    if not isinstance(values, Tensor):
        raise TypeError(f"The callable `{name}` must return a tensor, got {type(values).__name__}.")
    try:
        values = torch.broadcast_to(values.to(device=inputs.device, dtype=inputs.dtype), inputs.shape)
    except RuntimeError as error:
        raise ValueError(
            f"`{name}` must be broadcastable to the inputs' shape {tuple(inputs.shape)}, got {tuple(values.shape)}."
        ) from error
    check_finite(values, name)
    return values
