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

    Cost: ``n_masks`` forward passes per image.

    Args:
        n_masks: number of random masks N. The paper uses 4000 (ResNet-50) and 8000 (VGG16), Xplique 4000; the
            default 1000 keeps monitoring affordable (the map is noisier).
        grid_size: grid size s (paper and Xplique: 7).
        p: probability p of keeping a cell (paper and Xplique: 0.5).
        seed: seed of the masks.
        batch_size: perturbed images per forward pass.
        score: score of a class-index target: ``"probability"`` (the paper's softmax for a multi-class head, the
            sigmoid for a single-logit head; :func:`lightning_xai._targets.class_scores`), ``"softmax"``,
            ``"sigmoid"`` (per label, multi-label heads) or the ``"logit"``. A callable
            target is applied to the model's outputs on the perturbed images, so it must act row-wise.

    Shapes:
        ``inputs (B, C, H, W)``, ``target (B,)`` -> ``(B, 1, H, W)`` float32 on the inputs' device.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
        >>> explainer = RISE(n_masks=50, grid_size=4)
        >>> explainer(model, torch.rand(2, 3, 8, 8), torch.tensor([0, 1])).shape
        torch.Size([2, 1, 8, 8])
    """

    needs_grad = False

    def __init__(
        self,
        n_masks: int = 1000,
        grid_size: int = 7,
        p: float = 0.5,
        seed: int = 0,
        batch_size: ChunkSize = "auto",
        score: ScoreKind = "probability",
    ) -> None:
        check_positive_int(n_masks, "n_masks")
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

    def attribute(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        """RISE saliency ``(B, 1, H, W)`` of ``target`` at ``inputs``."""
        batch, _, height, width = inputs.shape
        check_grid_size(self.grid_size, height, width)
        grids, shifts = rise_mask_parameters(self.n_masks, self.grid_size, self.p, height, width, self.seed)
        grids = grids.to(inputs.device)
        saliency = torch.zeros(batch, height * width, device=inputs.device)

        def make_masks(start: int, stop: int) -> Tensor:
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
        return (saliency / (self.n_masks * self.p)).view(batch, 1, height, width)
