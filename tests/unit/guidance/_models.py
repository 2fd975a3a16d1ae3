"""Tiny smooth models for the guidance tests (smooth, so finite differences of second-order terms are exact)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def smooth_cnn(num_classes: int = 3, channels: int = 2, dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    """Conv (layer "0") -> Tanh -> Conv (layer "2") -> Softplus -> mean pool -> Linear, in ``dtype``."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(4, 3, 3, padding=1),
        nn.Softplus(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(3, num_classes),
    ).to(dtype)


def hooks_of(model: nn.Module) -> int:
    """How many forward, forward-pre and backward hooks the model's modules hold."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in model.modules()
    )


def flags_of(model: nn.Module) -> list[tuple[bool, ...]]:
    return [(m.training,) for m in model.modules()] + [(p.requires_grad,) for p in model.parameters()]


def random_mask(shape: tuple[int, ...], seed: int = 3) -> Tensor:
    """Non-negative weights with exact zeros, so masking matters."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.rand(shape, generator=generator, dtype=torch.float64) * 2
    return values * (torch.rand(shape, generator=generator, dtype=torch.float64) > 0.4)
