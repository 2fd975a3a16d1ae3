"""Seeded input perturbations for Infidelity and MaxSensitivity, shared by every sample of a batch.

The ``n_samples`` perturbations of a call are drawn once, shape ``(n_samples, C, H, W)``, from a local generator
seeded with ``seed``, and perturbation ``s`` is applied to every sample of the batch (as Xplique shares its
MuFidelity masks). A sample's score therefore depends only on the sample, its map and the seed: not on the chunk
size, on the other samples of the batch, on how batches are split across processes or on their order. Sharing
the draws correlates the errors of different samples (the mean stays unbiased).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_xai.functional._common import local_generator

NoiseDistribution = Literal["normal", "uniform"]


def perturbation_noise(
    inputs: Tensor, n_samples: int, scale: float, distribution: NoiseDistribution, seed: int = 0
) -> Tensor:
    """The ``n_samples`` perturbations of a batch ``(B, C, H, W)``, shape ``(n_samples, C, H, W)``.

    ``"normal"`` draws ``scale * N(0, 1)`` (Infidelity's Gaussian perturbation); ``"uniform"`` draws
    ``U(-scale, scale)`` (the L-infinity ball of Captum's ``sensitivity_max`` default perturbation). Drawn on the
    inputs' device, in their dtype.

    Example:
        >>> noise = perturbation_noise(torch.zeros(2, 1, 3, 3), n_samples=4, scale=0.1, distribution="uniform")
        >>> noise.shape, bool(noise.abs().max() <= 0.1)
        (torch.Size([4, 1, 3, 3]), True)
    """
    shape = (n_samples, *inputs.shape[1:])
    generator = local_generator(seed, inputs.device)
    if distribution == "normal":
        return scale * torch.randn(shape, generator=generator, device=inputs.device, dtype=inputs.dtype)
    draws = torch.rand(shape, generator=generator, device=inputs.device, dtype=inputs.dtype)
    return scale * (2 * draws - 1)
