"""Masks learnt by optimisation: meaningful perturbation (2017) and extremal perturbation (2019), images and clips.

Both methods look for a mask ``m`` over the image (or the clip) whose blurred complement changes the model's
target score, by gradient descent on the mask alone: the model is run inside
:func:`~lightning_xai._model_state.explanation_mode` (parameters frozen, eval mode, flags and the global RNG
restored) and every gradient is taken with ``torch.autograd.grad`` with respect to the mask parameters only, so no
parameter ``.grad`` is ever written.

- :class:`MeaningfulPerturbation` (Fong and Vedaldi, ICCV 2017): the smallest deletion (blur) that destroys the
  target score, traded off against its L1 size and total variation.
- :class:`ExtremalPerturbation` (Fong, Patrick and Vedaldi, ICCV 2019): for each fixed area ``a``, the smooth
  mask of that area that best preserves (or, deleted, best destroys) the target score; for clips, with Li et al.'s
  (WACV 2021) temporal smoothness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_xai._checks import check_bool, check_choice, check_in_range, check_positive_int
from lightning_xai._targets import ScoreKind, target_scores
from lightning_xai._typing import TargetType
from lightning_xai.explainers.base import Explainer

Variant = Literal["preserve", "delete"]
VARIANTS: tuple[str, ...] = ("preserve", "delete")
MASK_SCORES: tuple[str, ...] = ("logit", "probability", "log_probability", "softmax", "sigmoid")

#: TorchRay's schedule: the area weight is multiplied by 1.0035 at each of its 800 steps (x16.4 overall).
TORCHRAY_STEPS = 800
TORCHRAY_GROWTH = 1.0035


# ----------------------------------------------------------------------------------------------------------------
# Shared pieces: the blur, the blur pyramid, frames in and out of the model's layout.
# ----------------------------------------------------------------------------------------------------------------


BlurPadding = Literal["replicate", "zeros"]
BLUR_PADDINGS: tuple[str, ...] = ("replicate", "zeros")


def sigma_blur(images: Tensor, sigma: float, padding: BlurPadding = "replicate") -> Tensor:
    """Blur ``(N, C, H, W)`` images with a normalised Gaussian of standard deviation ``sigma`` (pixels).

    The masks' perturbation (TorchRay's ``imsmooth``, with a choice of padding). Not the baselines' blurs of
    :mod:`lightning_xai.functional.baselines` (RISE's fixed kernel, zero-padded; the reflected blur scaled to the
    image), whose kernels and borders differ.

    Separable, truncated at ``ceil(4 sigma)`` pixels on each side; ``sigma = 0`` returns the images. ``padding``:
    ``"replicate"`` repeats the border pixels (the default: the blurred image keeps the colours of the image's
    borders whatever the inputs' normalisation), ``"zeros"`` pads with 0 as TorchRay's ``imsmooth`` does (its
    borders fade towards 0, the mean colour of ImageNet-normalised inputs but a grey frame around digits scaled to
    [-1, 1], which the preserve game then learns to keep: measured, the masks hugged the borders).

    Example:
        >>> import torch
        >>> x = torch.zeros(1, 1, 9, 9); x[..., 4, 4] = 1.0
        >>> round(sigma_blur(x, 1.0).sum().item(), 4)
        1.0
    """
    if sigma <= 0:
        return images
    radius = math.ceil(4 * sigma)
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    vertical = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    horizontal = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    if padding == "zeros":
        blurred = F.conv2d(images, vertical, padding=(radius, 0), groups=channels)
        return F.conv2d(blurred, horizontal, padding=(0, radius), groups=channels)
    blurred = F.conv2d(F.pad(images, (0, 0, radius, radius), mode="replicate"), vertical, groups=channels)
    return F.conv2d(F.pad(blurred, (radius, radius, 0, 0), mode="replicate"), horizontal, groups=channels)


def blur_pyramid(frames: Tensor, max_blur: float, levels: int, padding: BlurPadding = "replicate") -> Tensor:
    """``(N, L, C, H, W)``: each frame blurred with ``sigma_l = max_blur * (1 - l / (L - 1))``, ``l = 0..L-1``.

    Level 0 is the most blurred, level ``L - 1`` the frame itself (TorchRay's ``Perturbation`` pyramid).
    """
    sigmas = torch.linspace(0, 1, levels).tolist()
    return torch.stack([sigma_blur(frames, max_blur * (1.0 - s), padding) for s in sigmas], dim=1)


def apply_pyramid(pyramid: Tensor, masks: Tensor) -> Tensor:
    """Perturb frames by their mask: ``m = 1`` keeps the frame, ``m = 0`` takes the most blurred level.

    Args:
        pyramid: ``(N, L, C, H, W)`` from :func:`blur_pyramid`.
        masks: ``(N, H, W)`` in ``[0, 1]``; level ``m (L - 1)`` is read, interpolating linearly between levels.

    Returns:
        ``(N, C, H, W)``.
    """
    levels, channels = pyramid.shape[1], pyramid.shape[2]
    position = masks * (levels - 1)
    lower = position.detach().floor().clamp(0, levels - 2)
    fraction = (position - lower)[:, None]
    index = lower.long()[:, None, None].expand(-1, 1, channels, -1, -1)
    below = pyramid.gather(1, index).squeeze(1)
    above = pyramid.gather(1, index + 1).squeeze(1)
    return below + fraction * (above - below)


def _frames(inputs: Tensor) -> Tensor:
    """``(B, F, C, H, W)``: an image batch as clips of one frame, a clip batch ``(B, C, T, H, W)`` frame-major."""
    return inputs[:, None] if inputs.ndim == 4 else inputs.transpose(1, 2)


def _model_layout(frames: Tensor, video: bool) -> Tensor:
    """Back from ``(N, F, C, H, W)`` to the model's ``(N, C, H, W)`` or ``(N, C, T, H, W)``."""
    return frames.transpose(1, 2) if video else frames[:, 0]


def _scaled(value: float | None, side: int, at_224: float) -> float:
    """``value``, or TorchRay's / the paper's value at 224 pixels scaled to an image whose short side is ``side``."""
    return float(value) if value is not None else at_224 * side / 224.0


def _check_optional_positive(value: object, name: str, integer: bool = False) -> None:
    if value is None:
        return
    if integer:
        check_positive_int(value, name)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a positive finite number or None (scaled to the image), got {value!r}.")


def _check_positive(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}.")


def _check_non_negative(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")


def _row_scores(model: nn.Module, perturbed: Tensor, target: TargetType, rows: Tensor, score: ScoreKind) -> Tensor:
    """Scores ``(n,)`` of the perturbed images, row ``i`` belonging to sample ``rows[i]``."""
    outputs = model(perturbed)
    row_target = target[rows] if isinstance(target, Tensor) else target
    return target_scores(outputs, row_target, score)


# ----------------------------------------------------------------------------------------------------------------
# Extremal perturbation: smooth masks (the smooth-max parametrisation), area by ranking, batched over areas.
# ----------------------------------------------------------------------------------------------------------------


class SmoothMaskGenerator:
    """Smooth masks from a coarse grid of parameters, by a smooth maximum of radial kernels.

    A parameter ``p_k`` in ``[0, 1]`` sits every ``step`` pixels; the mask at pixel ``u`` is the smooth maximum
    (the softmax-weighted mean, coldness 20) over the grid points ``k`` near ``u`` of ``p_k * g(|u - u_k| /
    sigma)``, with ``g(z) = exp(-2 max(z - 1/2, 0)^2)`` flat up to half a ``sigma``: a union of smooth discs, not a
    sum, so a mask value never exceeds its parameters (Fong, Patrick and Vedaldi 2019, Sec. 3.2). The window of
    grid points, the kernel and the margin of ``M = round(sigma)`` pixels around the image follow TorchRay's
    ``MaskGenerator`` (grid points outside the parameter grid count as zeros). The margin matters: without it a
    parameter on the image's border touches fewer pixels than one inside, the ranking penalty pushes it down less,
    and the masks drift to the borders (measured on the digits model: all of them did).

    Args:
        height, width: the image's size in pixels.
        step: pixels between grid points (the grid is ``ceil(H / step) x ceil(W / step)``).
        sigma: the kernel's scale in pixels.
        device: where the kernel weights live.
    """

    coldness = 20.0

    def __init__(self, height: int, width: int, step: int, sigma: float, device: torch.device) -> None:
        self.height, self.width, self.step, self.sigma = height, width, step, sigma
        self.grid = (math.ceil(height / step), math.ceil(width / step))
        self.margin = margin = round(sigma)
        self.shift = 1 + math.ceil(2 * sigma / step)  # the window of pixel u starts at grid index q(u) - shift
        self.window = 2 * (1 + math.ceil(sigma / step)) + 1
        # Along each axis, pixel u (from -M to size + M - 1) reads the grid indices q(u) - shift + k, k < window,
        # q(u) = (u + M) // step. ``F.unfold`` (zero padding ``shift``) lays the window of q at column q; q(u) is
        # constant over runs of ``step`` pixels, so the pixels' windows are those columns repeated ``step`` times.
        axes = []
        self.columns: list[int] = []
        for size, cells in ((height, self.grid[0]), (width, self.grid[1])):
            pixels = torch.arange(-margin, size + margin, dtype=torch.float64)
            first = torch.div(pixels + margin, step, rounding_mode="floor") - self.shift
            index = first[:, None] + torch.arange(self.window, dtype=torch.float64)[None]  # (size + 2M, window)
            distance = pixels[:, None] - (step * index + (sigma - margin))
            valid = (index >= 0) & (index < cells)
            axes.append((distance, valid))
            self.columns.append((size + 2 * margin - 1) // step + 1)
        (dy, valid_y), (dx, valid_x) = axes
        radius = torch.sqrt(dy[:, None, :, None] ** 2 + dx[None, :, None, :] ** 2) / sigma  # (H', W', k, k)
        weight = torch.exp(-2 * (radius - 0.5).clamp(min=0) ** 2)
        weight = weight * (valid_y[:, None, :, None] & valid_x[None, :, None, :])  # outside the grid: p = 0
        self.weight = weight.flatten(2).permute(2, 0, 1).to(device=device, dtype=torch.float32)  # (k*k, H', W')

    def full(self, parameters: Tensor) -> Tensor:
        """Masks with their margin, ``(N, H + 2M, W + 2M)``, from parameters ``(N, h, w)`` (``(h, w) = grid``)."""
        count = parameters.shape[0]
        columns = F.unfold(parameters[:, None], self.window, padding=self.shift)
        available = [g + 2 * self.shift - self.window + 1 for g in self.grid]
        windows = columns.view(count, self.window**2, *available)
        missing = [max(0, need - have) for need, have in zip(self.columns, available, strict=True)]
        if any(missing):  # windows of columns past the grid's padding hold zeros only
            windows = F.pad(windows, (0, missing[1], 0, missing[0]))
        windows = windows[:, :, : self.columns[0], : self.columns[1]]
        if self.step > 1:
            windows = windows.repeat_interleave(self.step, dim=2).repeat_interleave(self.step, dim=3)
        windows = windows[:, :, : self.weight.shape[1], : self.weight.shape[2]]
        # a softmax-weighted mean of values in [0, 1] lies in [0, 1]: no clamp (whose gradient vanishes at 0 and 1)
        return _SmoothMax.apply(windows * self.weight, self.coldness)

    def crop(self, masks: Tensor) -> Tensor:
        """The image's part ``(..., H, W)`` of masks with their margin."""
        m = self.margin
        return masks[..., m : m + self.height, m : m + self.width]

    def __call__(self, parameters: Tensor) -> Tensor:
        """Masks on the image, ``(N, H, W)``, from parameters ``(N, h, w)``."""
        return self.crop(self.full(parameters))


class _SmoothMax(torch.autograd.Function):
    """``sum_k v_k softmax(c v)_k`` over dim 1, with its gradient ``s_k (1 + c (v_k - m))`` in one expression."""

    @staticmethod
    def forward(ctx: Any, values: Tensor, coldness: float) -> Tensor:
        weights = torch.softmax(coldness * values, dim=1)
        result = (values * weights).sum(1)
        ctx.save_for_backward(values, weights, result)
        ctx.coldness = coldness
        return result

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        values, weights, result = ctx.saved_tensors
        factor = (values - result[:, None]).mul_(ctx.coldness).add_(1.0).mul_(weights)
        return factor.mul_(grad[:, None]), None


def area_reference(areas: Sequence[float], size: int, image_size: int, device: torch.device) -> Tensor:
    """``(A, size)``: each area's sorted 0/1 ranking target, ``int(a * image_size)`` ones at the end.

    ``size`` counts the mask's pixels with its margin, ``image_size`` the image's: the ones are a fraction ``a`` of
    the image (TorchRay makes them a fraction ``a`` of the mask with its margin, so its masks hold more than ``a``
    of the image: 1.6x on 32 px images, measured).
    """
    reference = torch.zeros(len(areas), size, device=device)
    for i, area in enumerate(areas):
        reference[i, size - int(area * image_size) :] = 1
    return reference


def temporal_smoothness(masks: Tensor, orders: int = 3) -> Tensor:
    """``(N,)``: the mean over ``k = 1..orders`` of the mean squared k-th time difference of masks ``(N, T, H, W)``.

    Li et al.'s spatio-temporal smoothness (reconstructed from their public code: differences of order 1 to 3);
    orders beyond ``T - 1`` are skipped; zero for a single frame.
    """
    terms = []
    difference = masks
    for _ in range(min(orders, masks.shape[1] - 1)):
        difference = difference[:, 1:] - difference[:, :-1]
        terms.append(difference.pow(2).flatten(1).mean(1))
    if not terms:
        return masks.new_zeros(masks.shape[0])
    return torch.stack(terms).mean(0)


class ExtremalPerturbation(Explainer):
    """Extremal perturbations: for each area ``a``, the smooth mask of that area that best preserves the score.

    Fong, Patrick and Vedaldi, "Understanding Deep Networks via Extremal Perturbations and Smooth Masks", ICCV 2019
    (arXiv:1910.08485), with TorchRay's semantics and defaults (its ``extremal_perturbation``). For a mask ``m`` of
    area ``a``, ``"preserve"`` maximises the target score of ``Phi(x; m)`` (the image blurred where ``m = 0``) and
    ``"delete"`` minimises that of ``Phi(x; 1 - m)`` (the image blurred where ``m = 1``). The area is forced by the
    ranking penalty ``lambda ||sort(m) - r_a||^2 / (H W)``, ``r_a`` the sorted vector with a fraction ``a`` of ones,
    whose weight ``lambda`` grows geometrically; masks are smooth by construction (:class:`SmoothMaskGenerator`).
    The perturbation reads a pyramid of ``levels`` Gaussian blurs from ``max_blur`` down to none; ``jitter`` flips
    the perturbed images left-right at every other step (TorchRay's jitter). The parameters move by SGD with
    momentum 0.9 and dampening 0.9, clipped to ``[0, 1]``; the masks returned are the ones evaluated at the last step.

    Both games start from the unperturbed image: the parameters start at 1 (all kept) for ``"preserve"`` and at 0
    (nothing deleted) for ``"delete"``. TorchRay starts both at 1; for ``"delete"`` that is the fully blurred image,
    where the pyramid's strongest levels are nearly equal and the score's gradient nearly vanishes, so the ranking
    penalty places the mask before the score can: on our known-answer model (a 5 % deletion, a model reading one
    patch) 41 % of the mask's top pixels fell on the patch after 800 steps and none after 200, against 100 % when
    starting from nothing deleted (measured).

    The area is a fraction of the image: the ranking target holds ``a H W`` ones (with the mask's margin, see
    :class:`SmoothMaskGenerator`, in the sorted vector). TorchRay makes the ones a fraction ``a`` of the mask with
    its margin, so its masks hold more than ``a`` of the image (0.15 to 0.19 for ``a = 0.1`` on 32 px, measured);
    ours hold ``a`` (measured: within 0.02, soft edges included).

    Batched: the ``B x A`` masks (every sample, every area) are optimised together, one forward and backward of the
    ``B x A`` perturbed images per step (in chunks of ``batch_size`` when set). Each mask's objective depends on its
    own image only, so the result equals the one-sample, one-area loop (tested to 1e-5).

    Clips ``(B, C, T, H, W)`` (Li, Wang, Li, Huang and Sato, "Towards Visually Explaining Video Understanding
    Networks with Perturbation", WACV 2021, reconstructed from the paper and its public code): every frame has its
    own smooth spatial mask and is blurred spatially, the area counts voxels of the whole clip (so a mask may sit in
    one frame), and ``temporal_weight * lambda`` times the temporal smoothness (the mean squared temporal
    differences of order 1 to 3, :func:`temporal_smoothness`) is added to the objective.

    Which areas, combined how: :meth:`masks` returns every area's mask; :meth:`__call__` returns their mean over the
    areas. The masks of growing areas are nearly nested, so the mean ranks a pixel by the smallest area whose mask
    holds it (a pixel kept in all of ``(0.05, 0.1, 0.2)`` scores 1, one kept only at 0.2 scores 1/3): a graded map
    in ``[0, 1]``, higher = more important, in both variants (the region preserved, or the region whose deletion
    destroys the score). TorchRay and the paper show one area at a time; the mean is our choice, for metrics that
    need a ranking of all pixels.

    Cost: ``steps`` forward and backward passes of ``B x A`` (x ``T`` frames) images. TorchRay's 800 steps cost 4x
    the default 200; the default keeps the area weight's overall growth (x16.4) and raises the learning rate to 0.04
    so that the masks still reach their areas (measured on the digits model: README, "Extremal perturbation").

    Args:
        areas: the areas, fractions in ``(0, 1)`` of the image (of the clip's voxels).
        variant: ``"preserve"`` or ``"delete"``.
        steps: optimisation steps (TorchRay: 800).
        learning_rate: SGD step; None: TorchRay's 0.01 scaled by ``800 / steps``.
        area_weight: the ranking penalty's initial weight (TorchRay: 300).
        area_weight_growth: its factor per step; None: ``1.0035 ** (800 / steps)`` (TorchRay's 1.0035 at 800).
        step: pixels between mask parameters; None: TorchRay's 7 at 224 pixels scaled to the short side (>= 1).
        sigma: the smooth mask's kernel scale in pixels; None: TorchRay's 21 at 224 pixels, scaled.
        max_blur: the strongest blur's standard deviation in pixels; None: TorchRay's 20, scaled up above 224 pixels
            but not down below (scaled down to 1.4 px on 16 px digits, the blurred digits kept a logit of 2.4 of
            7.3, and the masks preserved little more than the blur did; at 20 px the blurred logit is -1.4).
        levels: blur levels of the pyramid (TorchRay: 8).
        blur_padding: ``"replicate"`` (default) or TorchRay's ``"zeros"``, see :func:`sigma_blur`.
        jitter: flip the perturbed images left-right at every other step (TorchRay: True).
        score: the score of a class-index target that the game plays on: ``"logit"`` (TorchRay's reward, default),
            ``"probability"``, ``"log_probability"``, ``"softmax"`` or ``"sigmoid"`` (see
            :func:`lightning_xai._targets.class_scores`). A callable target is applied to the outputs of the
            perturbed images and must act row-wise.
        temporal_weight: clips only, the temporal smoothness weight relative to the area weight. Li et al. use 1
            (16 frames, a log-probability reward); with the logit reward on 4 frames that weight overrode the area
            constraint (a mask mean of 0.45 for an area of 0.025, measured), so the default is 0.03, at which the mask
            of a model reading one frame still peaks in that frame (a quarter of its mass spreading to the
            neighbouring frames).
        batch_size: at most this many perturbed images (sample-area pairs) per forward; None: all ``B x A``. Besides
            the model's activations, each mask holds about four ``(k^2, H + 2M, W + 2M)`` float32 tensors during a
            step (``k = 2 (1 + ceil(sigma / step)) + 1``, ``M = round(sigma)``): about 80 MB at 224 px with the
            defaults (``k = 9``, ``M = 21``; measured, 4 masks peaked 230 MB above 1), so chunk large batches.

    Shapes:
        ``inputs (B, C, H, W)`` -> ``(B, 1, H, W)``, masks ``(B, A, H, W)``; clips ``(B, C, T, H, W)`` ->
        ``(B, 1, T, H, W)``, masks ``(B, A, T, H, W)``; float32 in ``[0, 1]`` on the inputs' device.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
        >>> explainer = ExtremalPerturbation(areas=(0.1, 0.3), steps=5)
        >>> explainer.masks(model, torch.rand(2, 3, 8, 8), torch.tensor([0, 1])).shape
        torch.Size([2, 2, 8, 8])
    """

    supports_video = True

    def __init__(
        self,
        areas: Sequence[float] = (0.05, 0.1, 0.2),
        variant: Variant = "preserve",
        steps: int = 200,
        learning_rate: float | None = None,
        area_weight: float = 300.0,
        area_weight_growth: float | None = None,
        step: int | None = None,
        sigma: float | None = None,
        max_blur: float | None = None,
        levels: int = 8,
        blur_padding: BlurPadding = "replicate",
        jitter: bool = True,
        score: ScoreKind = "logit",
        temporal_weight: float = 0.03,
        batch_size: int | None = None,
    ) -> None:
        self.areas = _check_areas(areas)
        check_choice(variant, "variant", VARIANTS)
        check_positive_int(steps, "steps")
        _check_optional_positive(learning_rate, "learning_rate")
        _check_positive(area_weight, "area_weight")
        if area_weight_growth is not None:
            _check_positive(area_weight_growth, "area_weight_growth")
        _check_optional_positive(step, "step", integer=True)
        _check_optional_positive(sigma, "sigma")
        _check_optional_positive(max_blur, "max_blur")
        check_positive_int(levels, "levels", minimum=2)
        check_choice(blur_padding, "blur_padding", BLUR_PADDINGS)
        check_bool(jitter, "jitter")
        check_choice(score, "score", MASK_SCORES)
        _check_non_negative(temporal_weight, "temporal_weight")
        _check_optional_positive(batch_size, "batch_size", integer=True)
        self.variant = variant
        self.steps = steps
        self.learning_rate = learning_rate
        self.area_weight = area_weight
        self.area_weight_growth = area_weight_growth
        self.step = step
        self.sigma = sigma
        self.max_blur = max_blur
        self.levels = levels
        self.blur_padding = blur_padding
        self.jitter = jitter
        self.score = score
        self.temporal_weight = temporal_weight
        self.batch_size = batch_size

    def masks(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        """Every area's mask: ``(B, A, H, W)`` for images, ``(B, A, T, H, W)`` for clips, 1 = the region selected.

        The region selected is the one preserved (``"preserve"``) or deleted (``"delete"``). The call is checked and
        run in explanation mode as :meth:`__call__` is.
        """
        self._return_masks = True
        try:
            return super().__call__(model, inputs, target)
        finally:
            self._return_masks = False

    def attribute(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        """The mean over the areas of the masks, ``(B, 1, H, W)`` or ``(B, 1, T, H, W)``."""
        masks = extremal_masks(model, inputs, target, self)
        if getattr(self, "_return_masks", False):
            return masks
        return masks.mean(dim=1, keepdim=True)

    def resolved(self, height: int, width: int) -> dict[str, float]:
        """The hyper-parameters used for images of ``height x width``: the given ones or their scaled defaults."""
        side = min(height, width)
        return {
            "step": float(self.step) if self.step is not None else float(max(1, round(7 * side / 224))),
            "sigma": _scaled(self.sigma, side, 21.0),
            "max_blur": float(self.max_blur) if self.max_blur is not None else 20.0 * max(1.0, side / 224),
            "learning_rate": self.learning_rate
            if self.learning_rate is not None
            else 0.01 * TORCHRAY_STEPS / self.steps,
            "area_weight_growth": self.area_weight_growth
            if self.area_weight_growth is not None
            else TORCHRAY_GROWTH ** (TORCHRAY_STEPS / self.steps),
        }


def _check_areas(areas: object) -> tuple[float, ...]:
    if isinstance(areas, (int, float)) and not isinstance(areas, bool):
        areas = (areas,)
    if not isinstance(areas, (list, tuple)):
        raise TypeError(f"`areas` must be a sequence of fractions in (0, 1), got {type(areas).__name__}.")
    if len(areas) == 0:
        raise ValueError("`areas` must hold at least one area in (0, 1), got an empty sequence.")
    for area in areas:
        check_in_range(area, "areas", 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    return tuple(float(a) for a in areas)


def extremal_masks(model: nn.Module, inputs: Tensor, target: TargetType, config: ExtremalPerturbation) -> Tensor:
    """The optimisation behind :class:`ExtremalPerturbation`, in explanation mode: masks ``(B, A, [T,] H, W)``."""
    video = inputs.ndim == 5
    frames = _frames(inputs)  # (B, F, C, H, W)
    batch, count, _, height, width = frames.shape
    settings = config.resolved(height, width)
    areas = config.areas
    n_areas = len(areas)
    device = inputs.device
    with torch.no_grad():
        pyramid = blur_pyramid(frames.flatten(0, 1), settings["max_blur"], config.levels, config.blur_padding)
    pyramid = pyramid.view(batch, count, *pyramid.shape[1:])  # (B, F, L, C, H, W)
    generator = SmoothMaskGenerator(height, width, int(settings["step"]), settings["sigma"], device)
    full_height, full_width = height + 2 * generator.margin, width + 2 * generator.margin
    reference = area_reference(areas, count * full_height * full_width, count * height * width, device)
    rows = torch.arange(batch * n_areas, device=device)  # row = sample * A + area (sample-major)
    samples, area_index = rows // n_areas, rows % n_areas
    start_value = 1.0 if config.variant == "preserve" else 0.0
    parameters = torch.full((batch * n_areas, count, *generator.grid), start_value, device=device)
    velocity: Tensor | None = None
    weight = config.area_weight
    chunk = config.batch_size or batch * n_areas
    masks = torch.empty(batch * n_areas, count, height, width, device=device)
    for iteration in range(config.steps):
        flip = config.jitter and iteration % 2 == 0
        gradient = torch.empty_like(parameters)
        for start in range(0, batch * n_areas, chunk):
            part = slice(start, min(start + chunk, batch * n_areas))
            leaf = parameters[part].detach().requires_grad_(True)
            full = generator.full(leaf.flatten(0, 1)).view(-1, count, full_height, full_width)
            mask = generator.crop(full)
            selected = mask if config.variant == "preserve" else 1 - mask
            perturbed = apply_pyramid(pyramid[samples[part]].flatten(0, 1), selected.flatten(0, 1)).view(
                -1, count, *pyramid.shape[-3:]
            )
            perturbed = _model_layout(perturbed, video)
            if flip:
                perturbed = perturbed.flip(-1)
            scores = _row_scores(model, perturbed, target, samples[part], config.score)
            reward = scores if config.variant == "preserve" else -scores
            ranked = full.flatten(1).sort(dim=1).values
            penalty = (ranked - reference[area_index[part]]).pow(2).mean(1) * weight
            if video:
                penalty = penalty + config.temporal_weight * weight * temporal_smoothness(full)
            energy = (penalty - reward).sum()
            (gradient[part],) = torch.autograd.grad(energy, leaf)
            masks[part] = mask.detach()
        # SGD with momentum 0.9 and dampening 0.9 (torch.optim.SGD's update, kept here so no optimiser is needed)
        velocity = gradient if velocity is None else 0.9 * velocity + 0.1 * gradient
        parameters = (parameters - settings["learning_rate"] * velocity).clamp(0, 1)
        weight *= settings["area_weight_growth"]
    masks = masks.view(batch, n_areas, count, height, width)
    return masks if video else masks[:, :, 0]


# ----------------------------------------------------------------------------------------------------------------
# Meaningful perturbation (2017): L1 + TV + the blurred image's score, a low-resolution mask, Adam, jitter, noise.
# ----------------------------------------------------------------------------------------------------------------


def total_variation(masks: Tensor, beta: float) -> Tensor:
    """``(N,)``: ``mean |m[i+1, j] - m[i, j]|^beta + mean |m[i, j+1] - m[i, j]|^beta`` of ``(N, ..., H, W)`` masks."""
    rows = (masks[..., 1:, :] - masks[..., :-1, :]).abs().pow(beta).flatten(1).mean(1)
    columns = (masks[..., :, 1:] - masks[..., :, :-1]).abs().pow(beta).flatten(1).mean(1)
    return rows + columns


def jitter_images(images: Tensor, shifts: Tensor) -> Tensor:
    """Shift each image of ``(N, ..., H, W)`` by its ``(dy, dx)`` in ``shifts (N, 2)``, repeating the border pixels."""
    count, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    device = images.device
    rows = (torch.arange(height, device=device)[None] - shifts[:, :1]).clamp(0, height - 1)  # (N, H)
    columns = (torch.arange(width, device=device)[None] - shifts[:, 1:]).clamp(0, width - 1)  # (N, W)
    flat = images.flatten(1, -3) if images.ndim > 3 else images[:, None]
    index = (rows[:, :, None] * width + columns[:, None, :]).flatten(1)  # (N, H*W)
    picked = flat.flatten(-2).gather(2, index[:, None].expand(-1, flat.shape[1], -1))
    return picked.view(images.shape) if images.ndim > 3 else picked.view(count, height, width)


class MeaningfulPerturbation(Explainer):
    """Meaningful perturbation: the smallest blurred region that destroys the target score.

    Fong and Vedaldi, "Interpretable Explanations of Black Boxes by Meaningful Perturbation", ICCV 2017
    (arXiv:1704.03296), the deletion game: minimise over a mask ``m`` in ``[0, 1]`` (1 keeps the pixel)

    ``l1_coeff * mean|1 - m| + tv_coeff * TV_beta(m) + f_c(Phi(x; m))``, ``Phi(x; m) = m x + (1 - m) blur(x)``,

    where ``f_c`` is the target score (the class probability by default, as in the paper) and ``TV_beta`` the mean
    ``beta``-th power of the mask's differences between neighbouring pixels. Against artefacts (paper, Sec. 4): the
    mask is learnt at low resolution (``mask_size``) and upsampled bilinearly, each step's perturbed images are
    shifted by a random jitter of up to ``jitter`` pixels, and Gaussian ``noise`` may be added. Adam (``lr``, betas
    0.9 and 0.999) from ``m = 1``, clipped to ``[0, 1]`` after each step. Reconstructed: the paper states the terms,
    not every constant; the L1 and TV terms are means (so their weights do not depend on the image size), with
    ``tv_coeff = 0.2`` and ``beta = 3`` as in the widely used PyTorch re-implementation, and ``l1_coeff = 0.1``
    (close to the paper's 1e-4 on the sum over a 28 x 28 mask, 0.078 on its mean; that re-implementation's 0.01
    deleted 66 % of a digit where 0.1 deletes 40 %, both taking its probability from 0.997 below 0.02, measured),
    the mask resolution and jitter are the paper's values at 224 pixels (28 x 28, 4 pixels) scaled to the image,
    and the blur is the paper's ``sigma = 10`` (scaled up only).

    Returns ``1 - m`` upsampled, ``(B, 1, H, W)``: higher = the pixel's deletion matters more for the score.

    Batched over samples (each mask's objective depends only on its own image, Adam is elementwise), on the inputs'
    device. The jitter shifts and noise come from ``torch.Generator`` objects seeded with ``seed`` (a CPU one for
    the shifts, one on the inputs' device for the noise), never the global RNG; the draws are made for the whole
    batch, so a sample's map depends on its position in the batch when ``jitter`` or ``noise`` is on.

    Clips ``(B, C, T, H, W)``: one low-resolution mask per frame, every frame blurred spatially, and the total
    variation taken along time as well (reconstructed, after Li et al. 2021); returns ``(B, 1, T, H, W)``.

    Cost: ``steps`` forward and backward passes of the batch (the paper: 300 iterations).

    Args:
        steps: Adam iterations (paper: 300).
        lr: Adam's learning rate (0.1).
        l1_coeff: weight of the mean deletion ``mean|1 - m|``.
        tv_coeff: weight of the total variation.
        tv_beta: the exponent ``beta`` of the total variation (3).
        mask_size: the mask's resolution (the short side; the other side keeps the aspect); None: 28 at 224 px,
            scaled (at least 7, at most the image).
        blur_sigma: the blur's standard deviation in pixels; None: the paper's 10, scaled up above 224 px but not
            down below (as :class:`ExtremalPerturbation`'s ``max_blur``).
        blur_padding: ``"replicate"`` (default) or ``"zeros"``, see :func:`sigma_blur`.
        jitter: the largest random shift in pixels (0: none); None: 4 at 224 px, scaled (at least 1).
        noise: standard deviation of Gaussian noise added to the perturbed images (0: none).
        score: the score of a class-index target (default the paper's ``"probability"``), see
            :class:`ExtremalPerturbation`.
        seed: seed of the jitter and the noise.

    Shapes:
        ``inputs (B, C, H, W)`` -> ``(B, 1, H, W)``; clips ``(B, C, T, H, W)`` -> ``(B, 1, T, H, W)``; float32 in
        ``[0, 1]``.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
        >>> MeaningfulPerturbation(steps=5)(model, torch.rand(2, 3, 8, 8), torch.tensor([0, 1])).shape
        torch.Size([2, 1, 8, 8])
    """

    supports_video = True

    def __init__(
        self,
        steps: int = 300,
        lr: float = 0.1,
        l1_coeff: float = 0.1,
        tv_coeff: float = 0.2,
        tv_beta: float = 3.0,
        mask_size: int | None = None,
        blur_sigma: float | None = None,
        blur_padding: BlurPadding = "replicate",
        jitter: int | None = None,
        noise: float = 0.0,
        score: ScoreKind = "probability",
        seed: int = 0,
    ) -> None:
        check_positive_int(steps, "steps")
        _check_positive(lr, "lr")
        _check_non_negative(l1_coeff, "l1_coeff")
        _check_non_negative(tv_coeff, "tv_coeff")
        _check_positive(tv_beta, "tv_beta")
        _check_optional_positive(mask_size, "mask_size", integer=True)
        _check_optional_positive(blur_sigma, "blur_sigma")
        check_choice(blur_padding, "blur_padding", BLUR_PADDINGS)
        if jitter is not None:
            check_positive_int(jitter, "jitter", minimum=0)
        _check_non_negative(noise, "noise")
        check_choice(score, "score", MASK_SCORES)
        check_positive_int(seed, "seed", minimum=0)
        self.steps = steps
        self.lr = lr
        self.l1_coeff = l1_coeff
        self.tv_coeff = tv_coeff
        self.tv_beta = tv_beta
        self.mask_size = mask_size
        self.blur_sigma = blur_sigma
        self.blur_padding = blur_padding
        self.jitter = jitter
        self.noise = noise
        self.score = score
        self.seed = seed

    def resolved(self, height: int, width: int) -> dict[str, float]:
        """The hyper-parameters used for images of ``height x width``: the given ones or their scaled defaults."""
        side = min(height, width)
        size = self.mask_size if self.mask_size is not None else max(7, math.ceil(28 * side / 224))
        size = min(size, side)
        return {
            "mask_height": float(max(1, round(size * height / side))),
            "mask_width": float(max(1, round(size * width / side))),
            "blur_sigma": self.blur_sigma if self.blur_sigma is not None else 10.0 * max(1.0, side / 224),
            "jitter": float(self.jitter if self.jitter is not None else max(1, round(4 * side / 224))),
        }

    def attribute(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        """``1 - m``: ``(B, 1, H, W)`` or ``(B, 1, T, H, W)``."""
        video = inputs.ndim == 5
        frames = _frames(inputs)  # (B, F, C, H, W)
        batch, count, _, height, width = frames.shape
        settings = self.resolved(height, width)
        device = inputs.device
        with torch.no_grad():
            blurred = sigma_blur(frames.flatten(0, 1), settings["blur_sigma"], self.blur_padding)
            blurred = blurred.view(frames.shape)
        mask_shape = (int(settings["mask_height"]), int(settings["mask_width"]))
        mask = torch.ones(batch, count, *mask_shape, device=device)
        first, second = torch.zeros_like(mask), torch.zeros_like(mask)
        shifts_generator = torch.Generator().manual_seed(self.seed)
        noise_generator = torch.Generator(device=device).manual_seed(self.seed) if self.noise > 0 else None
        largest = int(settings["jitter"])
        samples = torch.arange(batch, device=device)
        for iteration in range(1, self.steps + 1):
            leaf = mask.detach().requires_grad_(True)
            upsampled = F.interpolate(leaf, size=(height, width), mode="bilinear", align_corners=False)
            keep = upsampled[:, :, None]  # (B, F, 1, H, W)
            perturbed = keep * frames + (1 - keep) * blurred
            if largest > 0:
                shifts = torch.randint(-largest, largest + 1, (batch, 2), generator=shifts_generator).to(device)
                perturbed = jitter_images(perturbed, shifts)
            if noise_generator is not None:
                perturbed = perturbed + self.noise * torch.randn(
                    perturbed.shape, generator=noise_generator, device=device, dtype=perturbed.dtype
                )
            scores = _row_scores(model, _model_layout(perturbed, video), target, samples, self.score)
            variation = total_variation(upsampled, self.tv_beta)
            if video and count > 1:
                variation = variation + (upsampled[:, 1:] - upsampled[:, :-1]).abs().pow(self.tv_beta).flatten(1).mean(
                    1
                )
            energy = self.l1_coeff * (1 - upsampled).abs().flatten(1).mean(1) + self.tv_coeff * variation + scores
            (gradient,) = torch.autograd.grad(energy.sum(), leaf)
            # Adam (torch.optim.Adam's update with betas 0.9, 0.999 and eps 1e-8), then the clip to [0, 1]
            first = 0.9 * first + 0.1 * gradient
            second = 0.999 * second + 0.001 * gradient * gradient
            corrected = first / (1 - 0.9**iteration)
            scale = (second / (1 - 0.999**iteration)).sqrt() + 1e-8
            mask = (mask - self.lr * corrected / scale).clamp(0, 1)
        with torch.no_grad():
            final = F.interpolate(mask, size=(height, width), mode="bilinear", align_corners=False)
        saliency = (1 - final)[:, None]  # (B, 1, F, H, W)
        return saliency if video else saliency[:, :, 0]


__all__ = [
    "ExtremalPerturbation",
    "MeaningfulPerturbation",
    "SmoothMaskGenerator",
    "apply_pyramid",
    "blur_pyramid",
    "sigma_blur",
]
