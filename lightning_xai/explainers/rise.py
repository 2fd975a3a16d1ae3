"""RISE: Randomized Input Sampling for Explanation (Petsiuk, Das and Saenko, BMVC 2018)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lightning_xai._checks import check_choice, check_in_range, check_positive_int
from lightning_xai._scoring import ChunkSize, check_batch_size
from lightning_xai._targets import ScoreKind
from lightning_xai._typing import TargetType
from lightning_xai.explainers._masks import check_grid_size, score_shared_masks, skimage_linear_weights
from lightning_xai.explainers.base import Explainer

RISE_SCORES: tuple[str, ...] = ("probability", "softmax", "sigmoid", "logit")


def rise_mask_parameters(
    n_masks: int, grid_size: int, p: float, height: int, width: int, seed: int
) -> tuple[Tensor, Tensor]:
    """Draw RISE's random binary grids and crop shifts from a CPU ``torch.Generator`` seeded with ``seed``.

    Drawing on the CPU makes the masks, and so the maps, identical on every device for one ``seed``.

    Returns:
        ``grids`` (float32 0/1, ``(n_masks, grid_size, grid_size)``, each cell 1 with probability ``p``) and
        ``shifts`` (int64 ``(n_masks, 2)``: row shift in ``[0, ceil(H / s))``, column shift in ``[0, ceil(W / s))``).
    """
    generator = torch.Generator().manual_seed(seed)
    grids = (torch.rand(n_masks, grid_size, grid_size, generator=generator) < p).float()
    cell_height, cell_width = math.ceil(height / grid_size), math.ceil(width / grid_size)
    rows = torch.randint(cell_height, (n_masks,), generator=generator)
    columns = torch.randint(cell_width, (n_masks,), generator=generator)
    return grids, torch.stack([rows, columns], dim=1)


def rise_masks(grids: Tensor, shifts: Tensor, height: int, width: int) -> Tensor:
    """Smooth RISE masks ``(m, 1, H, W)`` from binary grids ``(m, s, s)`` and shifts ``(m, 2)``, on the grids' device.

    As the official code: each grid is resized with linear interpolation (skimage ``resize(order=1,
    mode="reflect", anti_aliasing=False)``, mirrored borders) to ``(s + 1) * ceil(H / s)`` by
    ``(s + 1) * ceil(W / s)`` pixels, and the ``H x W`` window at its shift is kept. Only the kept window is
    computed, as ``rows @ grid @ columns.T`` with the separable interpolation weights.

    Example:
        >>> grids, shifts = rise_mask_parameters(3, 2, 0.5, 4, 4, seed=0)
        >>> rise_masks(grids, shifts, 4, 4).shape
        torch.Size([3, 1, 4, 4])
    """
    grid_size, device = grids.shape[-1], grids.device
    row_weights = skimage_linear_weights(grid_size, (grid_size + 1) * math.ceil(height / grid_size), device)
    column_weights = skimage_linear_weights(grid_size, (grid_size + 1) * math.ceil(width / grid_size), device)
    shifts = shifts.to(device)
    rows = row_weights[shifts[:, :1] + torch.arange(height, device=device)]  # (m, H, s)
    columns = column_weights[shifts[:, 1:] + torch.arange(width, device=device)]  # (m, W, s)
    return (rows @ grids.to(rows.dtype) @ columns.transpose(1, 2))[:, None]


def rise_clip_mask_parameters(
    n_masks: int, temporal_grid_size: int, grid_size: int, p: float, size: tuple[int, int, int], seed: int
) -> tuple[Tensor, Tensor]:
    """Spatio-temporal RISE grids ``(n_masks, t, s, s)`` and shifts ``(n_masks, 3)`` (frame, row, column).

    As :func:`rise_mask_parameters`, one dimension up: each cell of a ``t x s x s`` grid is kept with probability
    ``p``; the shifts lie in ``[0, ceil(T / t))``, ``[0, ceil(H / s))`` and ``[0, ceil(W / s))``. Drawn from a CPU
    ``torch.Generator`` seeded with ``seed``.
    """
    frames, height, width = size
    generator = torch.Generator().manual_seed(seed)
    grids = (torch.rand(n_masks, temporal_grid_size, grid_size, grid_size, generator=generator) < p).float()
    cells = (math.ceil(frames / temporal_grid_size), math.ceil(height / grid_size), math.ceil(width / grid_size))
    shifts = [torch.randint(cell, (n_masks,), generator=generator) for cell in cells]
    return grids, torch.stack(shifts, dim=1)


def rise_clip_masks(grids: Tensor, shifts: Tensor, size: tuple[int, int, int]) -> Tensor:
    """Smooth spatio-temporal RISE masks ``(m, 1, T, H, W)`` from grids ``(m, t, s, s)`` and shifts ``(m, 3)``.

    Each grid is upsampled trilinearly (linear along each of time, rows and columns, with skimage's mirrored
    borders, as :func:`rise_masks` does in space) to ``(t + 1) * ceil(T / t)`` frames by
    ``(s + 1) * ceil(H / s)`` by ``(s + 1) * ceil(W / s)`` pixels, and the ``T x H x W`` box at its shift is kept:
    the separable product of the three weight matrices, computed for the kept box only.

    Example:
        >>> grids, shifts = rise_clip_mask_parameters(3, 2, 2, 0.5, (4, 4, 4), seed=0)
        >>> rise_clip_masks(grids, shifts, (4, 4, 4)).shape
        torch.Size([3, 1, 4, 4, 4])
    """
    frames, height, width = size
    temporal, grid_size, device = grids.shape[1], grids.shape[-1], grids.device
    shifts = shifts.to(device)
    weights = []
    for axis, (cells, extent) in enumerate(((temporal, frames), (grid_size, height), (grid_size, width))):
        line = skimage_linear_weights(cells, (cells + 1) * math.ceil(extent / cells), device)
        weights.append(line[shifts[:, axis : axis + 1] + torch.arange(extent, device=device)])  # (m, extent, cells)
    frame_weights, row_weights, column_weights = weights
    masks = torch.einsum("mta,mhb,mwc,mabc->mthw", frame_weights, row_weights, column_weights, grids.float())
    return masks[:, None]


class RISE(Explainer):
    """RISE saliency: the expected score of the target when a pixel is kept by random smooth masks.

    ``S(x) = 1 / (N * p) * sum_i f(I * M_i) * M_i(x)`` (Petsiuk, Das and Saenko, "RISE: Randomized Input Sampling
    for Explanation of Black-box Models", BMVC 2018, arXiv:1806.07421), following the official code
    (``eclique/RISE``): binary ``s x s`` grids with cells kept with probability ``p``, upsampled bilinearly (with
    skimage's mirrored borders) to ``(s + 1) * ceil(H / s)`` pixels and cropped at a random shift; the saliency is
    normalised by ``N * p`` (not by the empirical mask sum, as Xplique's variant does). Higher means the target
    score is higher when the pixel is kept.

    The masks are shared by every image of the batch (as in the reference), so one forward scores a chunk of masks
    times a group of images, at most ``batch_size`` perturbed images. The random grids come from a CPU
    ``torch.Generator`` seeded with ``seed`` (never the global RNG) and are moved to the inputs' device, where the
    masks are upsampled chunk by chunk: one ``seed`` gives the same map on every device, on every call, whatever
    the batch and ``batch_size``.

    Clips ``(B, C, T, H, W)``: the masks are spatio-temporal, binary ``temporal_grid_size x s x s`` grids upsampled
    trilinearly (skimage-style linear interpolation with mirrored borders along time, rows and columns) and
    cropped at random shifts in time and space (:func:`rise_clip_masks`), giving ``(B, 1, T, H, W)``. This
    extension to time is ours (the paper treats images).

    Cost: ``n_masks`` forward passes per image.

    Args:
        n_masks: number of random masks N. The paper uses 4000 (ResNet-50) and 8000 (VGG16), Xplique 4000; the
            default 1000 keeps monitoring affordable (the map is noisier).
        grid_size: grid size s (paper and Xplique: 7).
        p: probability p of keeping a cell (paper and Xplique: 0.5).
        seed: seed of the masks.
        batch_size: perturbed images per forward pass.
        temporal_grid_size: cells of the grid along time for clips; None (default) takes ``min(grid_size, T)``.
        score: score of a class-index target: ``"probability"`` (the paper's softmax for a multi-class head, the
            sigmoid for a single-logit head; :func:`lightning_xai._targets.class_scores`), ``"softmax"``,
            ``"sigmoid"`` (per label, multi-label heads) or the ``"logit"``. A callable
            target is applied to the model's outputs on the perturbed images, so it must act row-wise.

    Shapes:
        ``inputs (B, C, H, W)``, ``target (B,)`` -> ``(B, 1, H, W)`` float32 on the inputs' device;
        ``(B, C, T, H, W)`` -> ``(B, 1, T, H, W)``.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
        >>> explainer = RISE(n_masks=50, grid_size=4)
        >>> explainer(model, torch.rand(2, 3, 8, 8), torch.tensor([0, 1])).shape
        torch.Size([2, 1, 8, 8])
    """

    needs_grad = False
    supports_video = True

    def __init__(
        self,
        n_masks: int = 1000,
        grid_size: int = 7,
        p: float = 0.5,
        seed: int = 0,
        batch_size: ChunkSize = "auto",
        score: ScoreKind = "probability",
        temporal_grid_size: int | None = None,
    ) -> None:
        check_positive_int(n_masks, "n_masks")
        if temporal_grid_size is not None:
            check_positive_int(temporal_grid_size, "temporal_grid_size")
        check_positive_int(grid_size, "grid_size")
        check_in_range(p, "p", 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        check_positive_int(seed, "seed", minimum=0)
        check_batch_size(batch_size)
        check_choice(score, "score", RISE_SCORES)
        self.n_masks = n_masks
        self.grid_size = grid_size
        self.p = p
        self.seed = seed
        self.batch_size = batch_size
        self.score = score
        self.temporal_grid_size = temporal_grid_size

    def attribute(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        """RISE saliency ``(B, 1, H, W)`` (``(B, 1, T, H, W)`` for clips) of ``target`` at ``inputs``."""
        batch, _, *size = inputs.shape
        height, width = size[-2:]
        check_grid_size(self.grid_size, height, width)
        if inputs.ndim == 5:
            temporal = min(self.grid_size, size[0]) if self.temporal_grid_size is None else self.temporal_grid_size
            if temporal > size[0]:
                raise ValueError(
                    f"`temporal_grid_size` must lie in [1, T] = [1, {size[0]}] for clips of shape "
                    f"{tuple(inputs.shape)}, got {temporal}."
                )
            clip = (size[0], height, width)
            grids, shifts = rise_clip_mask_parameters(self.n_masks, temporal, self.grid_size, self.p, clip, self.seed)
        else:
            grids, shifts = rise_mask_parameters(self.n_masks, self.grid_size, self.p, height, width, self.seed)
        grids = grids.to(inputs.device)
        saliency = torch.zeros(batch, math.prod(size), device=inputs.device)

        def make_masks(start: int, stop: int) -> Tensor:
            if inputs.ndim == 5:
                return rise_clip_masks(grids[start:stop], shifts[start:stop], clip)
            return rise_masks(grids[start:stop], shifts[start:stop], height, width)

        def perturb(images: slice, masks: Tensor) -> Tensor:
            return inputs[images, None] * masks[None].to(inputs.dtype)

        def accumulate(images: slice, scores: Tensor, masks: Tensor) -> None:
            saliency[images] += scores @ masks.flatten(1)

        score_shared_masks(
            model,
            inputs,
            target,
            make_masks=make_masks,
            perturb=perturb,
            n_masks=self.n_masks,
            batch_size=self.batch_size,
            score=self.score,
            accumulate=accumulate,
        )
        return (saliency / (self.n_masks * self.p)).view(batch, 1, *size)
