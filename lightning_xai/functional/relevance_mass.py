"""Relevance mass inside a region and the pointing game: how domain knowledge about *where* to look is stated.

- **Relevance mass** (Arras, Osman and Samek, "CLEVR-XAI", Information Fusion 2022, "relevance mass accuracy"):
  the share of a map's relevance that lies inside a region, ``Σ_{p ∈ region} r_p / Σ_p r_p`` in ``[0, 1]``.
- **Pointing game** (Zhang et al., "Top-down neural attention by excitation backprop", ECCV 2016): whether the
  map's maximum lies inside the region (1) or not (0). No tolerance margin is used.

Choices: the relevance ``r`` of a pixel is ``|a|`` summed over channels (``relevance="absolute"``, the default: a
pixel with strong negative evidence is still a pixel the model relies on) or the positive part of the signed
channel sum (``relevance="positive"``, as in Arras et al.). A map with no relevance at all has mass 0 and misses
the pointing game. Ties of the maximum are broken in raster order (the first maximum counts).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from lightning_xai._checks import check_choice, check_finite

Relevance = Literal["absolute", "positive"]
RELEVANCES: tuple[str, ...] = ("absolute", "positive")


def relevance_map(attributions: Tensor, relevance: Relevance = "absolute") -> Tensor:
    """Non-negative relevance ``(B, H, W)`` of ``(B, 1, H, W)`` or ``(B, C, H, W)`` attributions.

    Example:
        >>> import torch
        >>> a = torch.tensor([[2.0, -1.0], [-3.0, 0.5]]).view(1, 2, 1, 2)
        >>> relevance_map(a, "absolute"), relevance_map(a, "positive")
        (tensor([[[5.0000, 1.5000]]]), tensor([[[0., 0.]]]))
    """
    check_choice(relevance, "relevance", RELEVANCES)
    if not isinstance(attributions, Tensor) or attributions.ndim != 4 or not attributions.is_floating_point():
        got = tuple(attributions.shape) if isinstance(attributions, Tensor) else type(attributions).__name__
        raise ValueError(
            f"`attributions` must be a floating-point tensor of shape (B, 1, H, W) or (B, C, H, W), got {got}."
        )
    check_finite(attributions, "attributions")
    if relevance == "absolute":
        return attributions.abs().sum(dim=1)
    return attributions.sum(dim=1).clamp(min=0)


#: What a region may be given as: a 0/1 tensor, a nested list of 0/1 numbers, or a path to a ``.pt``/``.pth``,
#: ``.npy`` or ``.png`` mask (the form a LightningCLI YAML file can state).
RegionSource = Tensor | str | os.PathLike | Sequence[Any]
REGION_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".npy", ".png")


def load_region(region: object, name: str = "region") -> object:
    """Turn a path or a nested list into a float tensor; any other value is returned unchanged for :func:`check_region`.

    * ``.pt`` / ``.pth``: a tensor saved with ``torch.save`` (loaded with ``weights_only=True``).
    * ``.npy``: an array saved with ``numpy.save`` (no pickles).
    * ``.png``: read as greyscale; pixels at or above half the maximum grey value (128 of 255) are inside.
    * a nested list (or tuple) of numbers, as YAML writes ``[[0, 1], [1, 0]]``.

    Example:
        >>> load_region([[0, 1], [1, 0]])
        tensor([[0., 1.],
                [1., 0.]])
    """
    if isinstance(region, (str, os.PathLike)):
        path = Path(region)
        suffix = path.suffix.lower()
        if suffix not in REGION_SUFFIXES:
            raise ValueError(f"`{name}` must be a mask file ending in one of {REGION_SUFFIXES}, got {str(region)!r}.")
        if not path.is_file():
            raise ValueError(f"`{name}` names the mask file {str(region)!r}, which does not exist.")
        if suffix in (".pt", ".pth"):
            value = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(value, Tensor):
                raise TypeError(f"`{name}` file {str(region)!r} must hold one tensor, got {type(value).__name__}.")
            return value
        if suffix == ".npy":
            return torch.from_numpy(np.load(path, allow_pickle=False)).to(torch.float32)
        from PIL import Image

        with Image.open(path) as image:
            grey = np.asarray(image.convert("L"), dtype=np.uint8)
        return torch.from_numpy(grey >= 128).to(torch.float32)
    if isinstance(region, (list, tuple)):
        try:
            return torch.tensor(region, dtype=torch.float32)
        except (TypeError, ValueError) as error:
            raise ValueError(f"`{name}` must be a rectangular nested list of 0/1 numbers: {error}") from None
    return region


def check_region(
    region: object,
    name: str,
    image_size: tuple[int, int] | None = None,
    ndim: tuple[int, ...] = (2, 3),
    leading: int | None = None,
) -> Tensor:
    """Check a 0/1 region and return it as a float tensor; raise a ``ValueError`` naming ``name`` otherwise.

    Args:
        region: the region: a tensor (bool or numbers that are all 0 or 1), a nested list, or a path to a
            ``.pt``, ``.npy`` or ``.png`` mask (see :func:`load_region`).
        name: the argument name for messages.
        image_size: the ``(H, W)`` the last two dimensions must have, if known.
        ndim: accepted numbers of dimensions.
        leading: the size the first dimension must have (batch or labels), if known and ``ndim > 2``.
    """
    region = load_region(region, name)
    if not isinstance(region, Tensor):
        raise TypeError(
            f"`{name}` must be a 0/1 torch.Tensor, a nested list or a path to a {'/'.join(REGION_SUFFIXES)} mask, "
            f"got {type(region).__name__}."
        )
    shapes = {2: "(H, W)", 3: "(N, H, W)", 4: "(B, 1, H, W)"}
    if region.ndim not in ndim or region.numel() == 0:
        accepted = " or ".join(shapes[n] for n in ndim)
        raise ValueError(f"`{name}` must have shape {accepted}, got shape {tuple(region.shape)}.")
    if region.ndim == 4 and region.shape[1] != 1:
        raise ValueError(f"`{name}` must have shape (B, 1, H, W) with one channel, got shape {tuple(region.shape)}.")
    if image_size is not None and tuple(region.shape[-2:]) != tuple(image_size):
        raise ValueError(
            f"`{name}` must have the maps' spatial size {tuple(image_size)} (H, W), got shape {tuple(region.shape)}."
        )
    if leading is not None and region.ndim > 2 and region.shape[0] != leading:
        raise ValueError(
            f"`{name}` must have {leading} entries along its first dimension, got shape {tuple(region.shape)}."
        )
    values = region.to(torch.float32)
    if not bool(((values == 0) | (values == 1)).all()):
        raise ValueError(
            f"`{name}` must hold only 0 and 1 (or be a bool tensor), got values {values.unique().tolist()[:10]}."
        )
    return values


def _relevance_mass_update(relevance: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample relevance mass ``(B,)`` and pointing-game hits ``(B,)`` of relevance ``(B, H, W)`` and masks.

    ``masks`` is ``(B, H, W)`` or ``(H, W)`` (shared), float 0/1 on the relevance's device.
    """
    flat = relevance.flatten(1)
    inside = masks.expand_as(relevance).flatten(1).to(flat.dtype)
    total = flat.sum(dim=1)
    mass = torch.where(
        total > 0, (flat * inside).sum(dim=1) / total.clamp(min=torch.finfo(flat.dtype).tiny), torch.zeros_like(total)
    )
    peak = flat.argmax(dim=1, keepdim=True)
    hits = (inside.gather(1, peak).squeeze(1) > 0) & (total > 0)
    return mass, hits.to(flat.dtype)


def relevance_mass(attributions: Tensor, masks: Tensor, relevance: Relevance = "absolute") -> Tensor:
    """Share of each map's relevance inside its mask (Arras et al. 2022), shape ``(B,)``, in ``[0, 1]``.

    Args:
        attributions: ``(B, 1, H, W)`` or ``(B, C, H, W)``, finite.
        masks: 0/1 region, ``(H, W)`` shared by every sample, ``(B, H, W)`` or ``(B, 1, H, W)`` per sample.
        relevance: ``"absolute"`` (``|a|`` summed over channels) or ``"positive"`` (positive part of the channel sum).

    Returns:
        ``(B,)``: higher means more of the relevance lies inside the region (0 for a map without relevance).

    Example:
        >>> import torch
        >>> maps = torch.tensor([[3.0, 1.0], [0.0, 2.0]]).view(2, 1, 1, 2)
        >>> relevance_mass(maps, torch.tensor([[1, 0]]))
        tensor([0.7500, 0.0000])
    """
    relevance_values = relevance_map(attributions, relevance)
    masks = _checked_masks(masks, relevance_values)
    return _relevance_mass_update(relevance_values, masks)[0]


def pointing_game(attributions: Tensor, masks: Tensor, relevance: Relevance = "absolute") -> Tensor:
    """Whether each map's maximum relevance lies inside its mask (Zhang et al. 2016), shape ``(B,)``, 0. or 1.

    Args:
        attributions: ``(B, 1, H, W)`` or ``(B, C, H, W)``, finite.
        masks: 0/1 region, ``(H, W)`` shared by every sample, ``(B, H, W)`` or ``(B, 1, H, W)`` per sample.
        relevance: ``"absolute"`` or ``"positive"``, as in :func:`relevance_mass`.

    Example:
        >>> import torch
        >>> maps = torch.tensor([[3.0, 1.0], [0.0, 2.0]]).view(2, 1, 1, 2)
        >>> pointing_game(maps, torch.tensor([[1, 0]]))
        tensor([1., 0.])
    """
    relevance_values = relevance_map(attributions, relevance)
    masks = _checked_masks(masks, relevance_values)
    return _relevance_mass_update(relevance_values, masks)[1]


def _checked_masks(masks: Tensor, relevance: Tensor) -> Tensor:
    size = (int(relevance.shape[-2]), int(relevance.shape[-1]))
    values = check_region(masks, "masks", size, ndim=(2, 3, 4), leading=relevance.shape[0])
    if values.ndim == 4:
        values = values[:, 0]
    return values.to(relevance.device)
