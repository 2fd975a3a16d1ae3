"""Fill in the blanks: how a frozen classifier fills a masked region so that the image becomes its class.

Follows the question of P. N. Deelaka et al., "Fill in the blanks: Rethinking Interpretability in vision",
arXiv:2411.10273 (2024): "How would a vision model fill-in a masked image?". The paper's algorithm could not be
confirmed; the optimisation here is the project's documented reconstruction (METHODS.md section 3).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_xai._checks import check_choice, check_image_batch, check_in_range, check_positive_int
from lightning_xai._model_state import explanation_mode
from lightning_xai._scoring import score_in_chunks
from lightning_xai._targets import SCORE_KINDS, ScoreKind, check_target, take_rows, target_scores
from lightning_xai._typing import TargetType
from lightning_xai.probes.prototype_generation import (
    check_input_range,
    high_frequency_energy,
    input_gradient_step,
)

MaskKind = Literal["center", "random", "grid"]
MASK_KINDS: tuple[str, ...] = ("center", "random", "grid")
INITS: tuple[str, ...] = ("mean", "zeros", "noise")
OBJECTIVES: tuple[str, ...] = ("cross_entropy", "logit")


def center_mask(height: int, width: int, size: int) -> Tensor:
    """A ``(H, W)`` keep-mask (1 = keep) with a centred ``size x size`` square blanked (0).

    Example:
        >>> center_mask(4, 4, 2).int().tolist()
        [[1, 1, 1, 1], [1, 0, 0, 1], [1, 0, 0, 1], [1, 1, 1, 1]]
    """
    _check_patch(size, height, width, "size")
    mask = torch.ones(height, width)
    top, left = (height - size) // 2, (width - size) // 2
    mask[top : top + size, left : left + size] = 0.0
    return mask


def grid_mask(height: int, width: int, cell: int) -> Tensor:
    """A ``(H, W)`` keep-mask (1 = keep) blanking every other ``cell x cell`` square, as a checkerboard.

    The top-left cell is kept, so half the cells (about half the pixels) are blanked.

    Example:
        >>> grid_mask(4, 4, 2).int().tolist()
        [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    """
    _check_patch(cell, height, width, "cell")
    rows = torch.arange(height) // cell
    columns = torch.arange(width) // cell
    return ((rows[:, None] + columns[None, :]) % 2 == 0).float()


def random_patch_mask(
    batch: int, height: int, width: int, size: int, num_patches: int, generator: torch.Generator
) -> Tensor:
    """A ``(B, 1, H, W)`` keep-mask (1 = keep) with ``num_patches`` random ``size x size`` squares blanked per image.

    Square positions are uniform over the image (squares may overlap), drawn from ``generator``.

    Example:
        >>> import torch
        >>> mask = random_patch_mask(2, 8, 8, 3, 1, torch.Generator().manual_seed(0))
        >>> tuple(mask.shape), (1 - mask).sum(dim=(1, 2, 3)).tolist()
        ((2, 1, 8, 8), [9.0, 9.0])
    """
    _check_patch(size, height, width, "size")
    check_positive_int(num_patches, "num_patches")
    tops = torch.randint(0, height - size + 1, (batch, num_patches, 1), generator=generator)
    lefts = torch.randint(0, width - size + 1, (batch, num_patches, 1), generator=generator)
    rows, columns = torch.arange(height), torch.arange(width)
    in_rows = (rows >= tops) & (rows < tops + size)  # (B, P, H)
    in_columns = (columns >= lefts) & (columns < lefts + size)  # (B, P, W)
    blanked = (in_rows[..., :, None] & in_columns[..., None, :]).any(dim=1)
    return (~blanked).float()[:, None]


def _check_patch(size: int, height: int, width: int, name: str) -> None:
    check_positive_int(size, name)
    if size > min(height, width):
        raise ValueError(f"`{name}` must be at most the image side min(H, W) = {min(height, width)}, got {size}.")


class FillInTheBlanks:
    """Optimise the masked-out region of images so that a frozen model scores them as their target class.

    ``probe(model, inputs, target)`` builds a binary keep-mask ``M`` (1 = keep) and a fill ``z`` and
    optimises ``z`` with Adam, the model frozen, on

    ``x~ = M * x + (1 - M) * z``,  loss ``= CE(f(x~), y)`` (or ``-logit_y``) ``+ tv_weight * TV(x~)
    + l2_weight * mean((1 - M) * (z - z_0)^2)``,

    so the fill shows what the model "expects" in the blank given the context and the class. Averaged per
    class (:func:`class_mean_fills`), fills expose consistent patterns the model has learnt. Kept pixels are
    bit-identical to the inputs. A callable target ``(outputs) -> (B,)`` is maximised directly.

    Follows the question of Deelaka et al., arXiv:2411.10273 ("How would a vision model fill-in a masked
    image?"), **not a published algorithm**: the objective, the priors, the masks and the initial fills are the
    project's documented reconstruction (METHODS.md section 3).

    Safety: only the fill is optimised. The model runs in eval mode with its parameters' ``requires_grad`` off
    (:func:`~lightning_xai._model_state.explanation_mode`), gradients come from ``torch.autograd.grad`` with
    respect to the fill only (no parameter ``.grad`` is ever written), randomness comes from a local seeded
    generator (the global RNG is left untouched), and it works when called under ``torch.no_grad()`` or
    ``torch.inference_mode()``.

    Args:
        mask: ``"center"`` (a centred square of side ``patch_size``, default half the shorter side),
            ``"random"`` (``num_patches`` seeded random squares of side ``patch_size``, default a quarter of the
            shorter side, different for each image), ``"grid"`` (a checkerboard of ``patch_size`` cells, default a
            quarter of the shorter side), or a user keep-mask tensor ``(H, W)`` or ``(B, 1, H, W)`` of 0/1
            values (1 = keep).
        steps: Adam steps.
        lr: Adam learning rate on the fill.
        objective: ``"cross_entropy"`` (minimise CE of the target class) or ``"logit"`` (maximise its logit).
        init: initial fill ``z_0``: ``"mean"`` (each image's per-channel mean over its kept pixels),
            ``"zeros"``, or ``"noise"`` (that mean plus the kept pixels' standard deviation times seeded
            normal noise).
        tv_weight: weight of the total-variation prior on ``x~`` (see
            :func:`~lightning_xai.probes.prototype_generation.high_frequency_energy`).
        l2_weight: weight of the L2 prior keeping the fill near its initial value.
        patch_size: side of the squares of the built-in masks (None: the defaults above).
        num_patches: squares per image for ``mask="random"``.
        input_range: ``(low, high)`` to clamp the fill into after every step, or None.
        score: the reported target score, ``"probability"`` (default), ``"logit"`` or ``"log_probability"``
            (a callable target's own value is reported as is).
        seed: seed of the local generator (random masks and noise fills).
        batch_size: optimise and score at most this many images at a time (None: all); images do not interact,
            so the result does not depend on it (a callable target must then act row-wise).

    Returns (of a call):
        dict of detached tensors on the inputs' device: ``"filled"`` ``(B, C, H, W)`` the optimised images;
        ``"fill"`` ``(B, C, H, W)`` the fill in the blanks and 0 on kept pixels; ``"masked"`` ``(B, C, H, W)``
        the images with the initial fill (the unfilled baseline); ``"mask"`` ``(B, 1, H, W)`` the keep-mask;
        ``"score_before"`` ``(B,)`` the target score of ``"masked"``; ``"score_after"`` ``(B,)`` that of
        ``"filled"``; ``"score_original"`` ``(B,)`` that of the unmasked inputs. Higher scores mean more of
        the target class.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> probe = FillInTheBlanks(mask="center", steps=20, lr=0.1)
        >>> result = probe(model, torch.rand(2, 1, 8, 8), torch.tensor([0, 2]))
        >>> bool((result["score_after"] > result["score_before"]).all())
        True
    """

    def __init__(
        self,
        mask: MaskKind | Tensor = "center",
        steps: int = 100,
        lr: float = 0.1,
        objective: Literal["cross_entropy", "logit"] = "cross_entropy",
        init: Literal["mean", "zeros", "noise"] = "mean",
        tv_weight: float = 0.0,
        l2_weight: float = 0.0,
        patch_size: int | None = None,
        num_patches: int = 4,
        input_range: tuple[float, float] | None = None,
        score: ScoreKind = "probability",
        seed: int = 0,
        batch_size: int | None = None,
    ) -> None:
        if isinstance(mask, Tensor):
            _check_user_mask(mask)
        elif mask not in MASK_KINDS:
            raise ValueError(
                f"`mask` must be one of {MASK_KINDS} or a (H, W) or (B, 1, H, W) tensor of 0/1 values, got {mask!r}."
            )
        check_positive_int(steps, "steps")
        check_in_range(lr, "lr", 0.0, math.inf, low_inclusive=False, high_inclusive=False)
        check_choice(objective, "objective", OBJECTIVES)
        check_choice(init, "init", INITS)
        check_in_range(tv_weight, "tv_weight", 0.0, math.inf, high_inclusive=False)
        check_in_range(l2_weight, "l2_weight", 0.0, math.inf, high_inclusive=False)
        if patch_size is not None:
            check_positive_int(patch_size, "patch_size")
        check_positive_int(num_patches, "num_patches")
        check_input_range(input_range)
        check_choice(score, "score", SCORE_KINDS)
        check_positive_int(seed, "seed", minimum=0)
        if batch_size is not None:
            check_positive_int(batch_size, "batch_size")
        self.mask = mask
        self.steps = steps
        self.lr = float(lr)
        self.objective = objective
        self.init = init
        self.tv_weight = float(tv_weight)
        self.l2_weight = float(l2_weight)
        self.patch_size = patch_size
        self.num_patches = num_patches
        self.input_range = None if input_range is None else (float(input_range[0]), float(input_range[1]))
        self.score = score
        self.seed = seed
        self.batch_size = batch_size

    @property
    def name(self) -> str:
        """Name used in logged keys, ``xai/probes/<name>/...``."""
        return "fill_in_the_blanks"

    def __repr__(self) -> str:
        arguments = ", ".join(
            f"{k}={'<tensor>' if isinstance(v, Tensor) else repr(v)}"
            for k, v in vars(self).items()
            if not k.startswith("_")
        )
        return f"{type(self).__name__}({arguments})"

    def build_mask(self, inputs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The ``(B, 1, H, W)`` float keep-mask (1 = keep) for ``inputs``, on their device.

        Args:
            inputs: ``(B, C, H, W)``.
            generator: drawn from for ``mask="random"`` (default: a fresh one seeded with ``seed``).
        """
        batch, _, height, width = inputs.shape
        if isinstance(self.mask, Tensor):
            mask = self.mask.detach().float()
            if mask.ndim == 2:
                mask = mask[None, None]
            if mask.shape[-2:] != (height, width) or mask.shape[0] not in (1, batch):
                raise ValueError(
                    f"`mask` of shape {tuple(self.mask.shape)} does not match the inputs {tuple(inputs.shape)}; it "
                    f"must be ({height}, {width}) or ({batch}, 1, {height}, {width})."
                )
            return mask.expand(batch, 1, height, width).to(inputs.device).clone()
        side = min(height, width)
        if self.mask == "center":
            size = self.patch_size or max(1, side // 2)
            return center_mask(height, width, size).to(inputs.device).expand(batch, 1, height, width).clone()
        size = self.patch_size or max(1, side // 4)
        if self.mask == "grid":
            return grid_mask(height, width, size).to(inputs.device).expand(batch, 1, height, width).clone()
        generator = generator or torch.Generator().manual_seed(self.seed)
        return random_patch_mask(batch, height, width, size, self.num_patches, generator).to(inputs.device)

    def __call__(self, model: nn.Module, inputs: Tensor, target: TargetType) -> dict[str, Tensor]:
        """Fill the blanks of ``inputs`` for ``target``.

        Args:
            model: a classifier returning ``(B, num_classes)`` logits (any outputs with a callable target).
            inputs: images ``(B, C, H, W)``.
            target: class indices ``(B,)`` or a callable ``(outputs) -> (B,)`` scores to maximise.

        Returns:
            See the class docstring.
        """
        check_image_batch(inputs, method=type(self).__name__)
        check_target(target, inputs.shape[0])
        generator = torch.Generator().manual_seed(self.seed)
        with explanation_mode(model, grad=True):
            images = inputs.detach().clone()
            if isinstance(target, Tensor):
                target = target.detach().clone().to(device=images.device, dtype=torch.long)
            chunk = self.batch_size or images.shape[0]
            score_original = self._scores(model, images, target, chunk)  # also checks the target's classes
            keep = self.build_mask(images, generator)
            initial = self._initial_fill(images, keep, generator)
            fills = [
                self._optimise(
                    model,
                    images[i : i + chunk],
                    keep[i : i + chunk],
                    initial[i : i + chunk],
                    _slice_target(target, i, i + chunk),
                )
                for i in range(0, images.shape[0], chunk)
            ]
            fill = torch.cat(fills)
            masked = _compose(images, keep, initial)
            filled = _compose(images, keep, fill)
            scores = [self._scores(model, batch, target, chunk) for batch in (masked, filled)]
        return {
            "filled": filled.detach(),
            "fill": torch.where(keep.bool(), torch.zeros_like(fill), fill).detach(),
            "masked": masked.detach(),
            "mask": keep,
            "score_before": scores[0].detach().float(),
            "score_after": scores[1].detach().float(),
            "score_original": score_original.detach().float(),
        }

    def _scores(self, model: nn.Module, images: Tensor, target: TargetType, chunk: int) -> Tensor:
        def forward(batch: Tensor, start: int, stop: int) -> Tensor:
            return target_scores(model(batch), _slice_target(target, start, stop), self.score)

        return score_in_chunks(forward, lambda start, stop: images[start:stop], images.shape[0], chunk)

    def _initial_fill(self, images: Tensor, keep: Tensor, generator: torch.Generator) -> Tensor:
        if self.init == "zeros":
            return torch.zeros_like(images)
        count = keep.sum(dim=(2, 3), keepdim=True).clamp_min(1)
        mean = (images * keep).sum(dim=(2, 3), keepdim=True) / count
        fill = mean.expand_as(images).clone()
        if self.init == "noise":
            std = (((images - mean) * keep).pow(2).sum(dim=(2, 3), keepdim=True) / count).sqrt()
            noise = torch.randn(images.shape, generator=generator).to(device=images.device, dtype=images.dtype)
            fill = fill + std * noise
        if self.input_range is not None:
            fill = fill.clamp(*self.input_range)
        return fill

    def _optimise(self, model: nn.Module, images: Tensor, keep: Tensor, initial: Tensor, target: TargetType) -> Tensor:
        fill = initial.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([fill], lr=self.lr)
        blank = 1 - keep
        for _ in range(self.steps):
            filled = _compose(images, keep, fill)
            outputs = model(filled)
            if not isinstance(target, Tensor):
                loss = -target_scores(outputs, target).sum()
            elif self.objective == "cross_entropy":
                loss = F.cross_entropy(outputs, target, reduction="sum")
            else:
                loss = -target_scores(outputs, target, "logit").sum()
            if self.tv_weight > 0:
                loss = loss + self.tv_weight * high_frequency_energy(filled, "tv").sum()
            if self.l2_weight > 0:
                loss = loss + self.l2_weight * (blank * (fill - initial)).pow(2).flatten(1).mean(1).sum()
            input_gradient_step(optimizer, loss, fill)
            if self.input_range is not None:
                with torch.no_grad():
                    fill.clamp_(*self.input_range)
        return fill.detach()


def _compose(images: Tensor, keep: Tensor, fill: Tensor) -> Tensor:
    """``M * x + (1 - M) * z`` for a binary ``M``, written as a selection so kept pixels stay bit-identical."""
    return torch.where(keep.bool(), images, fill)


def _slice_target(target: TargetType, start: int, stop: int) -> TargetType:
    return take_rows(target, torch.arange(start, stop)) if not isinstance(target, Tensor) else target[start:stop]


def _check_user_mask(mask: Tensor) -> None:
    if mask.ndim not in (2, 4) or (mask.ndim == 4 and mask.shape[1] != 1):
        raise ValueError(f"A `mask` tensor must have shape (H, W) or (B, 1, H, W), got {tuple(mask.shape)}.")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("A `mask` tensor must hold only 0 (blank) and 1 (keep) values.")


def class_mean_fills(result: dict[str, Tensor], labels: Tensor, num_classes: int, region_only: bool = True) -> Tensor:
    """Per-class mean of the fills of a :class:`FillInTheBlanks` result: the consistent pattern of each class.

    Args:
        result: the dict returned by a :class:`FillInTheBlanks` call.
        labels: ``(B,)`` class of each image (for example the target it was filled for).
        num_classes: number of classes ``K``.
        region_only: average the fill only over the images that blanked each pixel (0 where none did);
            False averages the whole filled images.

    Returns:
        Tensor ``(K, C, H, W)``; classes without images are 0.

    Example:
        >>> import torch
        >>> probe = FillInTheBlanks(mask="center", steps=5)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> result = probe(model, torch.rand(4, 1, 4, 4), torch.tensor([0, 0, 2, 2]))
        >>> tuple(class_mean_fills(result, torch.tensor([0, 0, 2, 2]), 3).shape)
        (3, 1, 4, 4)
    """
    check_positive_int(num_classes, "num_classes")
    filled = result["filled"]
    if not isinstance(labels, Tensor) or labels.shape != (filled.shape[0],):
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"`labels` must be a tensor of shape ({filled.shape[0]},), got {got}.")
    labels = labels.to(filled.device).long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"`labels` must lie in 0..{num_classes - 1}, got values {sorted(set(labels.tolist()))}.")
    weights = (1 - result["mask"]).expand_as(filled) if region_only else torch.ones_like(filled)
    shape = (num_classes, *filled.shape[1:])
    sums = torch.zeros(shape, device=filled.device, dtype=filled.dtype).index_add_(0, labels, filled * weights)
    counts = torch.zeros(shape, device=filled.device, dtype=filled.dtype).index_add_(0, labels, weights)
    return sums / counts.clamp_min(1)
