"""Pixel-wise aggregation of image-wise attribution maps into label-wise and overall global maps.

Follows Engelmann, Storkey and Bernabeu, "Global explainability in aligned image modalities" (arXiv:2112.09591,
2021). The paper's full text is not public; the aggregation below is the project's documented reconstruction
(METHODS.md, section 1), guided by the authors' released heatmap code (``norm='mass1'`` / ``'max1'``):

- each image's map is reduced to one channel (``|a|`` summed over channels when ``absolute``, the signed channel
  sum otherwise) and normalised on its own, so that every image weighs equally:
  ``"mass"`` divides by the sum of ``|map|`` (a non-negative map then sums to 1), ``"max"`` divides by the
  largest ``|map|``, ``None`` keeps the raw values. A map that is zero everywhere stays zero (no division by 0).
  Unlike the authors' code the map is not shifted by its minimum first: for ``absolute`` maps the minimum is
  already a meaningful zero, and for signed maps a shift would change the sign of the evidence.
- the label-wise map ``G_l`` is the mean of the normalised maps of the images whose label ``l`` is positive (a
  multi-label image counts once for each of its positive labels); its spread is the population standard
  deviation (``ddof = 0``) of those maps, pixel by pixel.
- the overall map ``G`` is the unweighted mean of the label-wise maps over the labels that were seen at least
  once, so every present label weighs equally however many images it has. Labels with no image are left out
  (their label-wise map is all zeros, which would otherwise dilute ``G``).

Everything is kept as per-label sums ``S_l = Σ E_n``, ``Q_l = Σ E_n²`` and counts ``N_l`` in float64, so partial
results (batches, ranks) merge by addition.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_xai._checks import check_choice, check_finite, check_positive_int

Normalization = Literal["mass", "max"]
NORMALIZATIONS: tuple[str | None, ...] = ("mass", "max", None)


def _check_maps(attributions: object, name: str = "attributions") -> None:
    if not isinstance(attributions, Tensor):
        raise TypeError(
            f"`{name}` must be a torch.Tensor of shape (B, 1, H, W) or (B, C, H, W), got {type(attributions).__name__}."
        )
    if attributions.ndim != 4 or attributions.shape[0] == 0:
        raise ValueError(
            f"`{name}` must have shape (B, 1, H, W) or (B, C, H, W) with B >= 1, got shape {tuple(attributions.shape)}."
        )
    if not attributions.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {attributions.dtype}.")
    check_finite(attributions, name)


def normalize_maps(attributions: Tensor, normalize: Normalization | None = "mass", absolute: bool = True) -> Tensor:
    """Reduce attributions to one channel and normalise each image's map on its own.

    Args:
        attributions: ``(B, 1, H, W)`` or ``(B, C, H, W)``, finite.
        normalize: ``"mass"`` (each map's ``|values|`` sum to 1), ``"max"`` (largest ``|value|`` is 1) or ``None``.
        absolute: take ``|a|`` before summing the channels; otherwise the signed channel sum is kept.

    Returns:
        Maps of shape ``(B, 1, H, W)`` in the attributions' dtype; an all-zero map stays all zero.

    Example:
        >>> import torch
        >>> a = torch.tensor([[1.0, -3.0], [0.0, 0.0]]).view(2, 1, 1, 2)
        >>> normalize_maps(a, "mass").flatten(1)
        tensor([[0.2500, 0.7500],
                [0.0000, 0.0000]])
    """
    _check_maps(attributions)
    check_choice(normalize, "normalize", NORMALIZATIONS)
    maps = attributions.abs().sum(dim=1, keepdim=True) if absolute else attributions.sum(dim=1, keepdim=True)
    if normalize is None:
        return maps
    magnitudes = maps.flatten(1).abs()
    scale = magnitudes.sum(dim=1) if normalize == "mass" else magnitudes.amax(dim=1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return maps / scale.view(-1, 1, 1, 1)


def check_labels(labels: object, num_labels: int, batch_size: int, name: str = "labels") -> None:
    """Raise unless ``labels`` are class indices ``(B,)`` in ``[0, num_labels)`` or a 0/1 matrix ``(B, num_labels)``.

    Raises:
        TypeError: ``labels`` is not a tensor, or class indices are not integers.
        ValueError: wrong shape, a class index outside ``[0, num_labels)``, a multi-label matrix whose width is not
            ``num_labels`` or whose entries are not 0/1.
    """
    if not isinstance(labels, Tensor):
        raise TypeError(
            f"`{name}` must be a tensor of class indices (B,) or a multi-label 0/1 tensor (B, L), got "
            f"{type(labels).__name__}."
        )
    if labels.ndim == 1:
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"`{name}` of shape (B,) must hold integer class indices, got dtype {labels.dtype}.")
        if labels.shape[0] != batch_size:
            raise ValueError(f"`{name}` must have shape (B,) = ({batch_size},), got shape {tuple(labels.shape)}.")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_labels):
            bad = labels[(labels < 0) | (labels >= num_labels)].unique().tolist()
            raise ValueError(
                f"`{name}` holds class indices {bad[:10]} outside the valid range 0..{num_labels - 1} "
                f"(num_labels={num_labels})."
            )
    elif labels.ndim == 2:
        if tuple(labels.shape) != (batch_size, num_labels):
            raise ValueError(
                f"A multi-label `{name}` must have shape (B, L) = ({batch_size}, {num_labels}), got "
                f"shape {tuple(labels.shape)}."
            )
        if not bool(((labels == 0) | (labels == 1)).all()):
            raise ValueError(
                f"A multi-label `{name}` must hold only 0 and 1, got values {labels.unique().tolist()[:10]}."
            )
    else:
        raise ValueError(
            f"`{name}` must have shape (B,) (class indices) or (B, L) (multi-label 0/1), got shape "
            f"{tuple(labels.shape)}."
        )


def label_weights(labels: Tensor, num_labels: int) -> Tensor:
    """Turn checked class indices ``(B,)`` or a multi-label 0/1 matrix ``(B, L)`` into a float64 ``(B, L)`` matrix.

    Example:
        >>> import torch
        >>> label_weights(torch.tensor([2, 0]), num_labels=3)
        tensor([[0., 0., 1.],
                [1., 0., 0.]], dtype=torch.float64)
    """
    if labels.ndim == 2:
        return labels.to(torch.float64)
    weights = torch.zeros(labels.shape[0], num_labels, dtype=torch.float64, device=labels.device)
    return weights.scatter_(1, labels.long().view(-1, 1), 1.0)


def _global_attribution_update(maps: Tensor, labels: Tensor, num_labels: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-label sums of normalised maps ``(L, H, W)``, of their squares ``(L, H, W)`` and counts ``(L,)``, float64.

    Args:
        maps: normalised maps ``(B, 1, H, W)`` (see :func:`normalize_maps`).
        labels: checked class indices ``(B,)`` or a multi-label 0/1 tensor ``(B, L)`` (see :func:`check_labels`).
        num_labels: ``L``.
    """
    batch, _, height, width = maps.shape
    flat = maps.reshape(batch, height * width).to(torch.float64)
    if labels.ndim == 1:
        index = labels.to(device=maps.device, dtype=torch.long)
        sums = flat.new_zeros(num_labels, height * width).index_add_(0, index, flat)
        squares = flat.new_zeros(num_labels, height * width).index_add_(0, index, flat * flat)
        counts = torch.bincount(index, minlength=num_labels).to(torch.float64)
    else:
        weights = label_weights(labels.to(maps.device), num_labels)
        sums = weights.T @ flat
        squares = weights.T @ (flat * flat)
        counts = weights.sum(dim=0)
    return sums.view(num_labels, height, width), squares.view(num_labels, height, width), counts


def _global_attribution_compute(sums: Tensor, squares: Tensor, counts: Tensor) -> dict[str, Tensor]:
    """Label-wise mean and standard deviation maps and the overall map from the sums; see the module docstring.

    Returns:
        ``{"per_label": (L, 1, H, W), "overall": (1, H, W), "std": (L, 1, H, W), "count": (L,)}``; maps in float32,
        counts as int64. Labels with count 0 have all-zero mean and standard deviation maps.
    """
    seen = counts > 0
    denominator = counts.clamp(min=1).view(-1, 1, 1)
    mean = sums / denominator
    variance = (squares / denominator - mean * mean).clamp(min=0)
    std = torch.where(seen.view(-1, 1, 1), variance.sqrt(), torch.zeros_like(variance))
    overall = mean[seen].mean(dim=0) if bool(seen.any()) else torch.zeros_like(mean[0])
    return {
        "per_label": mean.to(torch.float32).unsqueeze(1),
        "overall": overall.to(torch.float32).unsqueeze(0),
        "std": std.to(torch.float32).unsqueeze(1),
        "count": counts.round().to(torch.long),
    }


def global_attribution(
    attributions: Tensor,
    labels: Tensor,
    num_labels: int,
    normalize: Normalization | None = "mass",
    absolute: bool = True,
) -> dict[str, Tensor]:
    """Label-wise and overall global maps of one set of attribution maps (Engelmann et al. 2021, reconstructed).

    Args:
        attributions: ``(B, 1, H, W)`` or ``(B, C, H, W)``, finite; maps of aligned images.
        labels: class indices ``(B,)`` or a multi-label 0/1 tensor ``(B, L)``.
        num_labels: the number of labels ``L``.
        normalize: per-image normalisation, ``"mass"``, ``"max"`` or ``None``.
        absolute: take ``|a|`` before summing channels.

    Returns:
        ``{"per_label": (L, 1, H, W), "overall": (1, H, W), "std": (L, 1, H, W), "count": (L,)}``: the mean normalised
        map of each label, the mean of the label-wise maps of the labels seen, the pixel-wise population standard
        deviation of each label's maps, and how many maps each label received. Higher values mark pixels the model
        relies on more, on average.

    Example:
        >>> import torch
        >>> maps = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]).view(3, 1, 1, 2)
        >>> result = global_attribution(maps, torch.tensor([0, 0, 1]), num_labels=3)
        >>> result["per_label"].flatten(1)
        tensor([[0.5000, 0.5000],
                [0.5000, 0.5000],
                [0.0000, 0.0000]])
        >>> result["std"].flatten(1)[0], result["count"]
        (tensor([0.5000, 0.5000]), tensor([2, 1, 0]))
    """
    check_positive_int(num_labels, "num_labels")
    maps = normalize_maps(attributions, normalize, absolute)
    check_labels(labels, num_labels, maps.shape[0])
    return _global_attribution_compute(*_global_attribution_update(maps, labels, num_labels))
