"""Small models whose answers we know, shared by the tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ResidualCNN(nn.Module):
    """A tiny CNN with BatchNorm, a residual connection and an in-place ReLU (Captum parity cases)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width))
        self.relu = nn.ReLU(inplace=True)
        self.head_conv = nn.Conv2d(width, width, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        h = self.relu(h + self.block(h))
        h = torch.relu(self.head_conv(h))
        return self.fc(self.pool(h).flatten(1))


def region_mask(height: int = 16, width: int = 16, top: int = 4, left: int = 4, size: int = 4) -> Tensor:
    """A (H, W) 0/1 mask of the square region that :class:`RegionModel` reads."""
    mask = torch.zeros(height, width)
    mask[top : top + size, left : left + size] = 1.0
    return mask


class RegionModel(nn.Module):
    """A classifier that reads only one known square region of the image.

    Class ``k``'s logit is ``scale * (k - (num_classes - 1) / 2) * mean over the region of channel 0``, so the
    evidence for every class lies in the region and nowhere else. It has one Conv2d (identity-like, 1x1) so
    layer methods have a default layer.
    """

    def __init__(
        self,
        num_classes: int = 3,
        height: int = 16,
        width: int = 16,
        top: int = 4,
        left: int = 4,
        size: int = 4,
        channels: int = 1,
        scale: float = 4.0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, kernel_size=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1.0
        self.register_buffer("mask", region_mask(height, width, top, left, size))
        slopes = scale * (torch.arange(num_classes, dtype=torch.float32) - (num_classes - 1) / 2)
        self.register_buffer("slopes", slopes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)[:, 0]
        evidence = (h * self.mask).sum(dim=(1, 2)) / self.mask.sum()
        return evidence[:, None] * self.slopes[None, :]


class LinearModel(nn.Module):
    """``logits = W @ flatten(x) + b``: Saliency is ``|W[target]|`` and InputXGradient is ``x * W[target]``."""

    def __init__(self, shape: tuple[int, int, int] = (2, 5, 5), num_classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.shape = shape
        self.linear = nn.Linear(shape[0] * shape[1] * shape[2], num_classes)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(self.linear.weight.shape, generator=generator))
            self.linear.bias.copy_(torch.randn(self.linear.bias.shape, generator=generator))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.flatten(1))

    def weight_map(self, target: int) -> Tensor:
        """The weights of class ``target`` in image layout ``(C, H, W)``."""
        return self.linear.weight[target].detach().view(self.shape)


def primed_residual_cnn(device: torch.device | str = "cpu") -> ResidualCNN:
    """ResidualCNN in eval mode with non-trivial BatchNorm statistics (so BatchNorm is not the identity)."""
    model = ResidualCNN(in_channels=3, num_classes=4, width=8)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(0.2 * torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
                module.weight.copy_(1 + 0.3 * torch.randn(module.num_features, generator=generator))
                module.bias.copy_(0.1 * torch.randn(module.num_features, generator=generator))
    return model.eval().to(device)


def residual_batch(device: torch.device | str = "cpu", size: int = 8) -> tuple[Tensor, Tensor]:
    """Three seeded ``(3, 3, size, size)`` images for :func:`primed_residual_cnn` and their targets ``[0, 3, 1]``."""
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randn(3, 3, size, size, generator=generator).to(device)
    return inputs, torch.tensor([0, 3, 1], device=device)


def strided_cnn() -> nn.Sequential:
    """A CNN whose second convolution (layer ``"2"``) sees the image at half size, so layer masks are upsampled."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 5, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 4),
    ).eval()


class PatchEmbedding(nn.Module):
    """An embedding model ``(B, C, H, W) -> (B, dim)`` that reads only one known square patch of the image.

    The input is masked to the patch, passed through a 3x3 conv and a ReLU, masked again (so the conv's border
    sees nothing outside), flattened and projected: the embedding, and so any similarity of two embeddings, is a
    function of the patch's pixels only. ``conv`` is the layer for CAM methods.
    """

    def __init__(
        self,
        channels: int = 1,
        size: int = 16,
        top: int = 4,
        left: int = 8,
        patch: int = 4,
        dim: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("mask", region_mask(size, size, top, left, patch))
        self.conv = nn.Conv2d(channels, 6, 3, padding=1)
        self.proj = nn.Linear(6 * size * size, dim)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv(x * self.mask)) * self.mask
        return self.proj(h.flatten(1))


def clip_region_mask(
    frames: int = 4, height: int = 8, width: int = 8, frame: int = 2, top: int = 4, left: int = 0, size: int = 4
) -> Tensor:
    """A ``(T, H, W)`` 0/1 mask of the square region in one frame that :class:`ClipRegionModel` reads."""
    mask = torch.zeros(frames, height, width)
    mask[frame, top : top + size, left : left + size] = 1.0
    return mask


class ClipRegionModel(nn.Module):
    """A clip classifier ``(B, C, T, H, W) -> (B, 2)`` that reads one square region of one frame, nothing else.

    The clip is gated by the fixed region mask (:func:`clip_region_mask`), then a bias-free ``nn.Conv3d`` (1x1x1,
    positive weights) and a ReLU; the score ``s`` is ``scale`` times the mean of that over the clip, and the logits
    are ``(s, -s)``. For inputs in ``[0, 1]`` every explanation of class 0 must sit in the region: the gradient is
    zero elsewhere, occluding elsewhere changes nothing, and Grad-CAM's layer (``conv``) is zero outside it.
    """

    def __init__(self, channels: int = 3, mask: Tensor | None = None, scale: float = 5.0) -> None:
        super().__init__()
        self.register_buffer("mask", (clip_region_mask() if mask is None else mask)[None, None])
        self.conv = nn.Conv3d(channels, 4, kernel_size=1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(0.5 + torch.arange(4 * channels, dtype=torch.float32).view(4, channels, 1, 1, 1) / 8)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        score = self.scale * torch.relu(self.conv(x * self.mask)).mean(dim=(1, 2, 3, 4))
        return torch.stack([score, -score], dim=1)


class TinyClipNet(nn.Module):
    """A small 3-D conv net ``(B, 3, T, H, W) -> (B, num_classes)``: Conv3d-BN-ReLU, a strided Conv3d, pool, linear.

    ``block`` (the strided second Conv3d and its ReLU) is the last spatio-temporal module, at half resolution in
    time and space: Grad-CAM's default layer, and a layer whose map must be upsampled.
    """

    def __init__(self, channels: int = 3, num_classes: int = 3, width: int = 6) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(channels, width, 3, padding=1), nn.BatchNorm3d(width), nn.ReLU())
        self.block = nn.Sequential(nn.Conv3d(width, width, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block(self.stem(x)))
