"""MuFidelity (Bhatt, Weller, Moura, IJCAI 2020, arXiv:2005.00631, Def. 3), as in Xplique's ``MuFidelity``.

``muF(f, g; x) = Corr_S( sum_{i in S} g(f, x)_i , f(x) - f(x with x_S = baseline) )`` over random subsets S.

Following ``xplique/metrics/fidelity.py``: the image is cut into a ``grid_size x grid_size`` grid of cells, each
cell is removed (set to the baseline, all channels) independently with probability ``subset_percent``, and the
cell masks are upsampled with nearest neighbours; the same ``n_samples`` masks serve every image of a call
(drawn from a local generator seeded with ``seed``, on the CPU, so they do not depend on the device or the
chunk size). The attribution of a subset is the sum over its removed pixels of the attribution summed over
channels; the model score is the target's logit by default (Xplique's raw output). The correlation is Pearson
by default (the paper, Quantus' ``FaithfulnessCorrelation``) or Spearman (Xplique); an undefined correlation
(a constant series, e.g. an all-zero map) counts as 0, as in Xplique. Range ``[-1, 1]``, higher is better.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_xai._checks import check_choice, check_in_range, check_positive_int
from lightning_xai._model_state import explanation_mode
from lightning_xai._scoring import ChunkSize, check_batch_size, score_in_chunks
from lightning_xai._targets import ScoreKind, target_scores
from lightning_xai._typing import TargetType
from lightning_xai.functional._common import (
    check_metric_arguments,
    check_score,
    chunk_scores,
    flat_saliency,
    local_generator,
)
from lightning_xai.functional.baselines import BaselineType, make_baseline
from lightning_xai.functional.ranking import average_ranks

Correlation = Literal["pearson", "spearman"]
CORRELATIONS: tuple[str, ...] = ("pearson", "spearman")


def pearson_correlation(first: Tensor, second: Tensor) -> Tensor:
    """Row-wise Pearson correlation of ``(B, n)`` tensors, ``(B,)``; 0 where a row is constant.

    Example:
        >>> pearson_correlation(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[2.0, 4.0, 7.0]])).round(decimals=4)
        tensor([0.9934])
    """
    first = first.double() - first.double().mean(dim=1, keepdim=True)
    second = second.double() - second.double().mean(dim=1, keepdim=True)
    denominator = (first.square().sum(dim=1) * second.square().sum(dim=1)).sqrt()
    numerator = (first * second).sum(dim=1)
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-300), 0.0).float()


def spearman_correlation_or_zero(first: Tensor, second: Tensor) -> Tensor:
    """Row-wise Spearman correlation of ``(B, n)`` tensors (Pearson of average ranks), ``(B,)``; 0 where undefined.

    Example:
        >>> spearman_correlation_or_zero(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[2.0, 4.0, 7.0]])).tolist()
        [1.0]
    """
    return pearson_correlation(average_ranks(first), average_ranks(second))


def mufidelity_masks(
    n_samples: int, grid_size: int, subset_percent: float, seed: int = 0, device: torch.device | str = "cpu"
) -> Tensor:
    """Random cell masks ``(n_samples, grid_size * grid_size)`` bool, True = removed (probability ``subset_percent``).

    Example:
        >>> mufidelity_masks(4, 3, 0.5).shape
        torch.Size([4, 9])
    """
    draws = torch.rand(n_samples, grid_size * grid_size, generator=local_generator(seed))
    return (draws <= subset_percent).to(device)


def cell_index(grid_size: int, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """The grid cell of every pixel under nearest-neighbour upsampling, flat ``(H * W,)`` long.

    Example:
        >>> cell_index(2, 2, 4).tolist()
        [0, 0, 1, 1, 2, 2, 3, 3]
    """
    cells = torch.arange(grid_size * grid_size, dtype=torch.float32, device=device).view(1, 1, grid_size, grid_size)
    return F.interpolate(cells, size=(height, width), mode="nearest").flatten().round().long()


def mufidelity(
    model: nn.Module,
    inputs: Tensor,
    attributions: Tensor,
    target: TargetType,
    *,
    grid_size: int = 9,
    subset_percent: float = 0.2,
    n_samples: int = 200,
    baseline: BaselineType = 0.0,
    correlation: Correlation = "pearson",
    score: ScoreKind = "logit",
    batch_size: ChunkSize = "auto",
    seed: int = 0,
) -> Tensor:
    """Per-sample MuFidelity ``(B,)``: correlation between subset attributions and the score drops they cause.

    Args:
        model: the classifier (run in eval mode, without autograd).
        inputs: images ``(B, C, H, W)``.
        attributions: ``(B, 1, H, W)`` or ``(B, C, H, W)``; higher means more important.
        target: class indices ``(B,)`` or a row-wise callable ``(outputs) -> scores``.
        grid_size: cells per side of the removal grid (Xplique: 9).
        subset_percent: probability that a cell is removed (Xplique: 0.2).
        n_samples: random subsets per image (Xplique: 200); at least 2.
        baseline: what removed pixels become (see :func:`~lightning_xai.functional.baselines.make_baseline`).
        correlation: ``"pearson"`` (default) or ``"spearman"``.
        score: ``"logit"`` (default), ``"probability"`` or ``"log_probability"``.
        batch_size: perturbed images per forward pass.
        seed: seed of the subsets (and of a ``"noise"`` baseline).

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> x, maps = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
        >>> mufidelity(model, x, maps, torch.tensor([0, 1]), grid_size=2, n_samples=20).shape
        torch.Size([2])
    """
    check_metric_arguments(inputs, attributions, target, method="mufidelity")
    check_positive_int(grid_size, "grid_size")
    check_in_range(subset_percent, "subset_percent", 0.0, 1.0, low_inclusive=False)
    check_positive_int(n_samples, "n_samples", minimum=2)
    check_choice(correlation, "correlation", CORRELATIONS)
    check_batch_size(batch_size)
    check_score(score)
    batch, _, height, width = inputs.shape
    device = inputs.device
    with explanation_mode(model, grad=False):
        substrate = make_baseline(inputs, baseline, seed=seed)
        masks = mufidelity_masks(n_samples, grid_size, subset_percent, seed, device)
        cells = cell_index(grid_size, height, width, device)
        cell_attributions = torch.zeros(batch, grid_size * grid_size, device=device, dtype=torch.float64)
        cell_attributions.index_add_(1, cells, flat_saliency(attributions.to(device)).double())
        subset_attributions = cell_attributions @ masks.T.double()

        def make_inputs(first: int, stop: int) -> Tensor:
            items = torch.arange(first, stop, device=device)
            rows, subsets = items // n_samples, items % n_samples
            removed = masks[subsets][:, cells].view(-1, 1, height, width)
            return torch.where(removed, substrate[rows], inputs[rows])

        def forward(chunk: Tensor, first: int, stop: int) -> Tensor:
            rows = torch.arange(first, stop, device=device) // n_samples
            return chunk_scores(model, chunk, target, rows, score, first=first == 0)

        perturbed = score_in_chunks(forward, make_inputs, batch * n_samples, batch_size, model=model, like=inputs).view(
            batch, n_samples
        )
        with torch.no_grad():
            original = target_scores(model(inputs), target, score).to(torch.float32)
    drops = original[:, None] - perturbed
    if correlation == "spearman":
        return spearman_correlation_or_zero(subset_attributions, drops)
    return pearson_correlation(subset_attributions, drops)
