"""Pixel-space gradient attributions wrapping Captum: Saliency, InputXGradient, IntegratedGradients, SmoothGrad."""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable
from typing import Literal

import captum.attr
from torch import Tensor, nn

from lightning_xai._checks import check_choice, check_in_range, check_positive_int
from lightning_xai._typing import TargetType
from lightning_xai.explainers.base import (
    ChannelReduction,
    Explainer,
    captum_forward,
    check_channel_reduction,
    reduce_channels,
)
from lightning_xai.explainers.captum_adapter import seeded_rng

IntegrationMethod = Literal["gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"]
INTEGRATION_METHODS: tuple[str, ...] = (
    "gausslegendre",
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
)
SmoothGradBase = Literal["Saliency", "InputXGradient", "IntegratedGradients"]
SMOOTHGRAD_BASES: tuple[str, ...] = ("Saliency", "InputXGradient", "IntegratedGradients")


def _check_optional_batch_size(value: int | None) -> None:
    if value is not None:
        check_positive_int(value, "internal_batch_size")


class _PixelGradientExplainer(Explainer):
    """A Captum primary attribution ``(B, C, H, W)`` followed by the channel reduction.

    Clips ``(B, C, T, H, W)`` are accepted as they are (the gradient of the score w.r.t. every voxel), giving
    ``(B, 1, T, H, W)`` maps (``(B, C, T, H, W)`` with ``channel_reduction=None``).
    """

    supports_video = True

    def __init__(self, channel_reduction: ChannelReduction | None) -> None:
        check_channel_reduction(channel_reduction)
        self.channel_reduction = channel_reduction

    def attribute(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        """Run the Captum method on a forward implementing the target, then reduce the channels."""
        forward, captum_target = captum_forward(model, target)
        inputs.requires_grad_(True)  # our clone; saves Captum's "did not already require gradients" warning per call
        attributions = self._captum_attribute(forward, inputs, captum_target)
        return reduce_channels(attributions.detach(), self.channel_reduction)

    @abstractmethod
    def _captum_attribute(self, forward: Callable[[Tensor], Tensor], inputs: Tensor, target: Tensor | None) -> Tensor:
        """Captum's raw attributions ``(B, C, H, W)``."""


class Saliency(_PixelGradientExplainer):
    """Vanilla gradient saliency: the magnitude of the target score's gradient w.r.t. each input pixel.

    Wraps ``captum.attr.Saliency`` with ``abs=True`` (its default): the raw map is ``|dS/dx|``, shape
    ``(B, C, H, W)``, and ``"abs_sum"`` sums it over channels. Higher means a small change of that pixel moves
    the target score more (sensitivity, not sign).

    Paper: K. Simonyan, A. Vedaldi, A. Zisserman, "Deep Inside Convolutional Networks: Visualising Image
    Classification Models and Saliency Maps", ICLR Workshop 2014 (arXiv:1312.6034). The paper takes the max
    over channels of ``|dS/dx|``, which is ``channel_reduction="max_abs"``.

    Args:
        channel_reduction: ``"abs_sum"`` (default), ``"sum"``, ``"max_abs"`` or None to keep ``(B, C, H, W)``,
            then identical to ``captum.attr.Saliency(...).attribute(inputs, target)``.

    Returns (when called):
        float32 ``(B, 1, H, W)`` (``(B, C, H, W)`` with ``channel_reduction=None``); for clips ``(B, C, T, H, W)``,
        ``(B, 1, T, H, W)``, non-negative.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
        >>> maps = Saliency()(model, torch.rand(2, 3, 2, 2), torch.tensor([0, 1]))
        >>> maps.shape, bool((maps >= 0).all())
        (torch.Size([2, 1, 2, 2]), True)
    """

    scores_one_forward = True  # Captum runs the forward once, on the inputs as given

    def __init__(self, channel_reduction: ChannelReduction | None = "abs_sum") -> None:
        super().__init__(channel_reduction)

    def _captum_attribute(self, forward: Callable[[Tensor], Tensor], inputs: Tensor, target: Tensor | None) -> Tensor:
        return captum.attr.Saliency(forward).attribute(inputs, target=target, abs=True)


class InputXGradient(_PixelGradientExplainer):
    """Input times gradient: ``x * dS/dx``, each pixel's first-order contribution to the target score.

    Wraps ``captum.attr.InputXGradient``. Signed: positive pixels push the target score up, negative ones down;
    for a linear model the map sums (with the bias) to the score.

    Paper: A. Shrikumar, P. Greenside, A. Shcherbina, A. Kundaje, "Not Just a Black Box: Learning Important
    Features Through Propagating Activation Differences", arXiv:1605.01713, 2016.

    Args:
        channel_reduction: ``"sum"`` (default, signed), ``"abs_sum"``, ``"max_abs"`` or None to keep
            ``(B, C, H, W)``, then identical to ``captum.attr.InputXGradient(...).attribute(inputs, target)``.

    Returns (when called):
        float32 ``(B, 1, H, W)`` (``(B, C, H, W)`` with ``channel_reduction=None``); for clips ``(B, C, T, H, W)``,
        ``(B, 1, T, H, W)``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
        >>> InputXGradient()(model, torch.rand(2, 3, 2, 2), torch.tensor([0, 1])).shape
        torch.Size([2, 1, 2, 2])
    """

    scores_one_forward = True  # Captum runs the forward once, on the inputs as given

    def __init__(self, channel_reduction: ChannelReduction | None = "sum") -> None:
        super().__init__(channel_reduction)

    def _captum_attribute(self, forward: Callable[[Tensor], Tensor], inputs: Tensor, target: Tensor | None) -> Tensor:
        return captum.attr.InputXGradient(forward).attribute(inputs, target=target)


class IntegratedGradients(_PixelGradientExplainer):
    """Integrated Gradients: ``(x - x') * ∫_0^1 dS/dx(x' + a (x - x')) da`` along the straight path from a baseline.

    Wraps ``captum.attr.IntegratedGradients``. Signed; by completeness the map sums to
    ``S(x) - S(x')`` (up to the integration error, which shrinks with ``n_steps``). Positive pixels raise the
    target score relative to the baseline.

    Paper: M. Sundararajan, A. Taly, Q. Yan, "Axiomatic Attribution for Deep Networks", ICML 2017
    (arXiv:1703.01365).

    Args:
        n_steps: integration points (Captum's default 50); cost is ``n_steps`` forward+backward passes per image.
        baseline: the reference image ``x'``: a number (constant image, 0 = black) or a tensor broadcastable to
            the inputs.
        internal_batch_size: at most this many path points per forward/backward (bounds memory, PEERS: captum
            #245); None runs all ``B * n_steps`` at once.
        method: Captum's integration rule, ``"gausslegendre"`` (default) or a ``"riemann_*"`` rule.
        channel_reduction: ``"sum"`` (default, signed), ``"abs_sum"``, ``"max_abs"`` or None to keep
            ``(B, C, H, W)``, then identical to Captum's output for the same settings.

    Returns (when called):
        float32 ``(B, 1, H, W)`` (``(B, C, H, W)`` with ``channel_reduction=None``); for clips ``(B, C, T, H, W)``,
        ``(B, 1, T, H, W)``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
        >>> IntegratedGradients(n_steps=8)(model, torch.rand(2, 3, 2, 2), torch.tensor([0, 1])).shape
        torch.Size([2, 1, 2, 2])
    """

    def __init__(
        self,
        n_steps: int = 50,
        baseline: float | Tensor = 0.0,
        internal_batch_size: int | None = None,
        method: IntegrationMethod = "gausslegendre",
        channel_reduction: ChannelReduction | None = "sum",
    ) -> None:
        super().__init__(channel_reduction)
        check_positive_int(n_steps, "n_steps")
        _check_optional_batch_size(internal_batch_size)
        check_choice(method, "method", INTEGRATION_METHODS)
        if isinstance(baseline, Tensor):
            if not baseline.is_floating_point() or not bool(baseline.isfinite().all()):
                raise ValueError(f"`baseline` must be a finite floating-point tensor, got {baseline.dtype} values.")
        else:
            check_in_range(baseline, "baseline", -math.inf, math.inf, low_inclusive=False, high_inclusive=False)
        self.n_steps = n_steps
        self.baseline = baseline
        self.internal_batch_size = internal_batch_size
        self.method = method

    def _baseline_for(self, inputs: Tensor) -> float | Tensor:
        if not isinstance(self.baseline, Tensor):
            return float(self.baseline)
        try:
            return self.baseline.to(device=inputs.device, dtype=inputs.dtype).expand_as(inputs)
        except RuntimeError as error:
            raise ValueError(
                f"`baseline` of shape {tuple(self.baseline.shape)} does not broadcast to the inputs' shape "
                f"{tuple(inputs.shape)}."
            ) from error

    def _captum_attribute(self, forward: Callable[[Tensor], Tensor], inputs: Tensor, target: Tensor | None) -> Tensor:
        attributions: Tensor = captum.attr.IntegratedGradients(forward).attribute(
            inputs,
            baselines=self._baseline_for(inputs),
            target=target,
            n_steps=self.n_steps,
            method=self.method,
            internal_batch_size=self.internal_batch_size,
        )
        return attributions


class SmoothGrad(_PixelGradientExplainer):
    """SmoothGrad: a gradient map averaged over noisy copies of the image, ``mean_n M(x + N(0, stdev^2))``.

    Wraps ``captum.attr.NoiseTunnel`` (``nt_type="smoothgrad"``) around ``base``. With the default
    ``base="Saliency"`` the averaged map is the *signed* gradient (Captum's Saliency with ``abs=False``), as in
    the paper's Eq. 2; ``"abs_sum"`` then sums its magnitude over channels. Higher means a larger smoothed
    sensitivity of the target score to that pixel.

    The noise comes from the global RNG (Captum's NoiseTunnel); the call runs in :func:`seeded_rng` with
    ``seed``, so the map is the same on every call and the caller's random stream is left untouched.

    Paper: D. Smilkov, N. Thorat, B. Kim, F. Viégas, M. Wattenberg, "SmoothGrad: removing noise by adding
    noise", ICML Workshop 2017 (arXiv:1706.03825).

    Args:
        n_samples: noisy copies per image (the paper finds 50 enough; cost is one backward pass each).
        stdev: standard deviation of the Gaussian noise, in the inputs' units (Captum's ``stdevs``); the paper
            recommends 10-20 % of the input range, so 0.15 for inputs in [0, 1].
        base: the map averaged: ``"Saliency"`` (default), ``"InputXGradient"`` or ``"IntegratedGradients"``
            (Captum's defaults, 50 steps).
        internal_batch_size: at most this many noisy images per forward/backward (rounded down to whole
            multiples of the batch); None runs all ``B * n_samples`` at once.
        seed: seed of the noise.
        channel_reduction: ``"abs_sum"`` (default), ``"sum"``, ``"max_abs"`` or None to keep ``(B, C, H, W)``,
            then identical to ``NoiseTunnel`` called after ``torch.manual_seed(seed)`` with the same settings.

    Returns (when called):
        float32 ``(B, 1, H, W)`` (``(B, C, H, W)`` with ``channel_reduction=None``); for clips ``(B, C, T, H, W)``,
        ``(B, 1, T, H, W)``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2), nn.Tanh())
        >>> explainer = SmoothGrad(n_samples=4, stdev=0.1)
        >>> x, target = torch.rand(2, 3, 2, 2), torch.tensor([0, 1])
        >>> torch.equal(explainer(model, x, target), explainer(model, x, target))
        True
    """

    def __init__(
        self,
        n_samples: int = 25,
        stdev: float = 0.15,
        base: SmoothGradBase = "Saliency",
        internal_batch_size: int | None = None,
        seed: int = 0,
        channel_reduction: ChannelReduction | None = "abs_sum",
    ) -> None:
        super().__init__(channel_reduction)
        check_positive_int(n_samples, "n_samples")
        check_in_range(stdev, "stdev", 0.0, math.inf, low_inclusive=False, high_inclusive=False)
        check_choice(base, "base", SMOOTHGRAD_BASES)
        _check_optional_batch_size(internal_batch_size)
        check_positive_int(seed, "seed", minimum=0)
        self.n_samples = n_samples
        self.stdev = stdev
        self.base = base
        self.internal_batch_size = internal_batch_size
        self.seed = seed

    def _captum_attribute(self, forward: Callable[[Tensor], Tensor], inputs: Tensor, target: Tensor | None) -> Tensor:
        base = getattr(captum.attr, self.base)(forward)
        extra = {"abs": False} if self.base == "Saliency" else {}
        samples_per_batch = None
        if self.internal_batch_size is not None:
            samples_per_batch = max(1, self.internal_batch_size // inputs.shape[0])
        with seeded_rng(self.seed, inputs.device):
            attributions: Tensor = captum.attr.NoiseTunnel(base).attribute(
                inputs,
                nt_type="smoothgrad",
                nt_samples=self.n_samples,
                nt_samples_batch_size=samples_per_batch,
                stdevs=float(self.stdev),
                target=target,
                **extra,
            )
        return attributions
