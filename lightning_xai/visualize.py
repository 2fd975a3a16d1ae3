"""Pictures for TensorBoard: heatmap overlays, image grids and curve figures.

Everything here works on tensors and returns ``(3, H, W)`` float images in ``[0, 1]`` (what
``SummaryWriter.add_image`` takes) or matplotlib figures (what ``add_figure`` takes).
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor

from lightning_xai._checks import check_image_batch, check_in_range


def normalize_per_image(images: Tensor, eps: float = 1e-12) -> Tensor:
    """Min-max scale every image of ``(B, C, H, W)`` to ``[0, 1]`` (constant images become 0).

    Example:
        >>> normalize_per_image(torch.tensor([[[[2.0, 4.0]]]]))
        tensor([[[[0., 1.]]]])
    """
    flat = images.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    high = flat.max(dim=1).values.view(-1, 1, 1, 1)
    return ((images - low) / (high - low).clamp_min(eps)).clamp(0.0, 1.0)


def to_rgb(images: Tensor) -> Tensor:
    """Show ``(B, C, H, W)`` images as RGB in ``[0, 1]``: 3 channels as is, any other count as grey (channel mean)."""
    images = normalize_per_image(images)
    if images.shape[1] != 3:
        images = images.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    return images


def colorize(maps: Tensor, cmap: str = "jet") -> Tensor:
    """Colour ``(B, 1, H, W)`` maps in ``[0, 1]`` with a matplotlib colormap; returns ``(B, 3, H, W)``."""
    lookup = torch.tensor(plt.get_cmap(cmap)(torch.linspace(0, 1, 256).numpy())[:, :3], dtype=torch.float32)
    index = (maps[:, 0].clamp(0, 1) * 255).round().long().cpu()
    return lookup[index].permute(0, 3, 1, 2).to(maps.device)


def overlay_heatmaps(images: Tensor, maps: Tensor, alpha: float = 0.5, cmap: str = "jet") -> Tensor:
    """Blend heatmaps over images.

    Args:
        images: ``(B, C, H, W)``, any range (scaled per image).
        maps: ``(B, 1, H, W)`` or ``(B, C, H, W)`` attributions; channels are summed and each map is min-max
            scaled to ``[0, 1]``, so the colour shows each image's own ranking (red = most important).
        alpha: weight of the heatmap in the blend, in ``[0, 1]``.
        cmap: a matplotlib colormap name.

    Returns:
        ``(B, 3, H, W)`` in ``[0, 1]``.

    Example:
        >>> overlay_heatmaps(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 3, 8, 8])
    """
    check_image_batch(images, "images")
    check_in_range(alpha, "alpha", 0.0, 1.0)
    if maps.shape[0] != images.shape[0] or maps.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"`maps` must match `images` {tuple(images.shape)} in batch and size, got {tuple(maps.shape)}."
        )
    heat = colorize(normalize_per_image(maps.float().sum(dim=1, keepdim=True)), cmap)
    return (1 - alpha) * to_rgb(images.float()) + alpha * heat


def upscale(images: Tensor, min_side: int = 96) -> Tensor:
    """Nearest-neighbour upscale of ``(B, C, H, W)`` by an integer factor so the short side is at least ``min_side``."""
    factor = max(1, -(-min_side // min(images.shape[-2:])))
    return images if factor == 1 else F.interpolate(images, scale_factor=factor, mode="nearest")


def image_grid(images: Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    """Tile ``(B, C, H, W)`` images into one ``(C, H', W')`` image, ``nrow`` per row.

    Example:
        >>> image_grid(torch.zeros(5, 3, 4, 4), nrow=2, padding=1).shape
        torch.Size([3, 16, 11])
    """
    check_image_batch(images, "images")
    batch, channels, height, width = images.shape
    columns = min(nrow, batch)
    rows = -(-batch // columns)
    grid = images.new_full(
        (channels, rows * (height + padding) + padding, columns * (width + padding) + padding), pad_value
    )
    for index in range(batch):
        row, column = divmod(index, columns)
        top, left = padding + row * (height + padding), padding + column * (width + padding)
        grid[:, top : top + height, left : left + width] = images[index]
    return grid


def heatmap_grid(images: Tensor, maps: Tensor, nrow: int = 4, alpha: float = 0.5, min_side: int = 96) -> Tensor:
    """The grid logged as ``xai/<explainer>/heatmaps``: each sample's input beside its overlay.

    Args:
        images: ``(B, C, H, W)`` inputs.
        maps: ``(B, 1, H, W)`` or ``(B, C, H, W)`` attributions.
        nrow: samples per row (each sample takes two cells).
        alpha: heatmap weight in the overlay.
        min_side: small images are upscaled (nearest) to at least this side so they can be read.

    Returns:
        ``(3, H', W')`` in ``[0, 1]``.
    """
    pairs = torch.stack([to_rgb(images.float()), overlay_heatmaps(images, maps, alpha)], dim=1).flatten(0, 1)
    return image_grid(upscale(pairs.cpu(), min_side), nrow=2 * nrow)


def map_grid(maps: Tensor, nrow: int = 8, min_side: int = 96, cmap: str = "inferno") -> Tensor:
    """Colour and tile ``(K, 1, H, W)`` maps (global per-label maps, their std), each scaled to its own max."""
    colored = colorize(normalize_per_image(maps.float().sum(dim=1, keepdim=True)), cmap)
    return image_grid(upscale(colored.cpu(), min_side), nrow=nrow)


def curve_figure(
    curves: Mapping[str, tuple[Tensor, Tensor]],
    title: str = "",
    xlabel: str = "fraction of pixels perturbed",
    ylabel: str = "score",
    bands: Mapping[str, tuple[Tensor, Tensor]] | None = None,
) -> Figure:
    """A line plot of named curves ``{label: (x, y)}``, with optional shaded bands ``{label: (low, high)}``."""
    figure, axes = plt.subplots(figsize=(4.5, 3.2), dpi=100)
    for label, (x, y) in curves.items():
        line = axes.plot(x.detach().cpu().numpy(), y.detach().cpu().numpy(), label=label)[0]
        if bands and label in bands:
            low, high = bands[label]
            axes.fill_between(
                x.detach().cpu().numpy(),
                low.detach().cpu().numpy(),
                high.detach().cpu().numpy(),
                color=line.get_color(),
                alpha=0.2,
            )
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    if curves:
        axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def captioned_map_grid(
    maps: Tensor, captions: list[str], title: str = "", ncol: int = 8, cmap: str = "inferno"
) -> Tensor:
    """Tile ``(K, H, W)`` maps, each scaled to its own max, a caption above each; ``(3, H', W')`` in ``[0, 1]``.

    The text is drawn into the pixels (matplotlib Agg), so every image logger shows it.

    Example:
        >>> captioned_map_grid(torch.rand(3, 8, 8), ["a", "b", "c"]).shape[0]
        3
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if maps.ndim != 3 or maps.shape[0] == 0 or len(captions) != maps.shape[0]:
        raise ValueError(
            f"`maps` must have shape (K, H, W) with K >= 1 and one caption each, got shape {tuple(maps.shape)} and "
            f"{len(captions)} captions."
        )
    count = maps.shape[0]
    columns = min(ncol, count)
    rows = -(-count // columns)
    figure = Figure(figsize=(1.6 * columns, 1.75 * rows + (0.3 if title else 0.0)), dpi=100)
    canvas = FigureCanvasAgg(figure)
    scaled = normalize_per_image(maps.detach().float().cpu().unsqueeze(1))[:, 0]
    for index in range(count):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.imshow(scaled[index].numpy(), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        axes.set_title(captions[index], fontsize=8)
        axes.set_xticks([])
        axes.set_yticks([])
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    canvas.draw()
    pixels = torch.from_numpy(np.asarray(canvas.buffer_rgba()).copy())
    return pixels[..., :3].permute(2, 0, 1).float() / 255.0
