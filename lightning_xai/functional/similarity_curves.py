"""Deletion and insertion of a pair's similarity: xai-ssl's adaptation of the RISE curves to two images.

For a pair of views ``(x1, x2)`` and their maps, the pixels of ``x1`` are deleted (or inserted) in the order of
``maps1`` while ``x2`` stays whole, and the curve holds ``cos(f(x1 perturbed), f(x2))``; the same is done for
``x2`` against the whole ``x1``. The curves are those of :func:`~lightning_xai.functional.deletion_curve` and
:func:`~lightning_xai.functional.insertion_curve` (same ranking, ties, steps, baselines and chunking) with the
target :class:`~lightning_xai.SimilarityTarget` of the other view's embedding, one row per pair. A pair's AUC is
the mean of its two views' AUCs. Lower deletion AUC is better; higher insertion AUC is better.

Paper: F. Sammani, B. Joukovsky, N. Deligiannis, "Visualizing and Understanding Self-Supervised Vision
Learning", arXiv:2206.09753 (the metrics adapted to two images); V. Petsiuk, A. Das, K. Saenko, "RISE", BMVC 2018
(the curves).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_xai._checks import check_attributions
from lightning_xai._model_state import explanation_mode
from lightning_xai._scoring import ChunkSize
from lightning_xai._targets import SimilarityTarget
from lightning_xai.explainers.similarity import check_pair, embed
from lightning_xai.functional.baselines import BaselineType
from lightning_xai.functional.deletion_insertion import deletion_curve, insertion_curve
from lightning_xai.functional.perturbation_curves import curve_auc


def similarity_curves(
    model: nn.Module,
    x1: Tensor,
    x2: Tensor,
    maps1: Tensor,
    maps2: Tensor,
    *,
    insertion: bool = False,
    steps: int = 20,
    baseline: BaselineType | None = None,
    batch_size: ChunkSize = "auto",
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """The similarity curves of both views, ``(curves1, curves2)``, each ``(B, steps + 1)``.

    Args:
        model: the embedding model, ``model(x) -> (B, D)`` (run in eval mode, without autograd).
        x1: the first views ``(B, C, H, W)``.
        x2: the second views, the same shape.
        maps1: maps of ``x1``, ``(B, 1, H, W)`` or ``(B, C, H, W)``; higher means more important.
        maps2: maps of ``x2``, likewise.
        insertion: insertion (start from the baseline, put the top pixels back) instead of deletion.
        steps: number of equal fractions between 0 and 1.
        baseline: what deleted pixels become, or the insertion's start image (see
            :func:`~lightning_xai.functional.baselines.make_baseline`); None: 0 for deletion, ``"blur"`` for
            insertion (the defaults of the single-image curves).
        batch_size: perturbed images per forward pass, or ``"auto"``.
        seed: seed of the ``"noise"`` baseline.

    Returns:
        ``curves1[i, k]`` is ``cos(f(x1[i] with fraction k / steps of its pixels perturbed), f(x2[i]))``;
        ``curves2`` the same with the views exchanged. Point 0 of a deletion curve is the pair's similarity.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> x1, x2, maps = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
        >>> curves1, curves2 = similarity_curves(model, x1, x2, maps, maps, steps=4)
        >>> curves1.shape, bool(torch.allclose(curves1[:, 0], curves2[:, 0]))
        (torch.Size([2, 5]), True)
    """
    check_pair(x1, x2)
    check_attributions(maps1, x1, "maps1")
    check_attributions(maps2, x2, "maps2")
    build = insertion_curve if insertion else deletion_curve
    start: BaselineType = baseline if baseline is not None else ("blur" if insertion else 0.0)
    with explanation_mode(model, grad=False):
        e1, e2 = embed(model, torch.cat([x1, x2])).split(x1.shape[0])
        curves = [
            build(
                model,
                view,
                maps,
                SimilarityTarget(other),
                steps=steps,
                baseline=start,
                score="logit",  # not used: a similarity target gives its own score
                batch_size=batch_size,
                seed=seed,
            )
            for view, maps, other in ((x1, maps1, e2), (x2, maps2, e1))
        ]
    return curves[0], curves[1]


def similarity_deletion_auc(
    model: nn.Module,
    x1: Tensor,
    x2: Tensor,
    maps1: Tensor,
    maps2: Tensor,
    *,
    steps: int = 20,
    baseline: BaselineType = 0.0,
    batch_size: ChunkSize = "auto",
    seed: int = 0,
) -> Tensor:
    """Per-pair similarity deletion AUC ``(B,)``, the mean of the two views' AUCs; lower is better.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> x1, x2, maps = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
        >>> similarity_deletion_auc(model, x1, x2, maps, maps, steps=4).shape
        torch.Size([2])
    """
    curves1, curves2 = similarity_curves(
        model, x1, x2, maps1, maps2, steps=steps, baseline=baseline, batch_size=batch_size, seed=seed
    )
    return (curve_auc(curves1) + curve_auc(curves2)) / 2


def similarity_insertion_auc(
    model: nn.Module,
    x1: Tensor,
    x2: Tensor,
    maps1: Tensor,
    maps2: Tensor,
    *,
    steps: int = 20,
    baseline: BaselineType = "blur",
    batch_size: ChunkSize = "auto",
    seed: int = 0,
) -> Tensor:
    """Per-pair similarity insertion AUC ``(B,)``, the mean of the two views' AUCs; higher is better.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> x1, x2, maps = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
        >>> similarity_insertion_auc(model, x1, x2, maps, maps, steps=4).shape
        torch.Size([2])
    """
    curves1, curves2 = similarity_curves(
        model, x1, x2, maps1, maps2, insertion=True, steps=steps, baseline=baseline, batch_size=batch_size, seed=seed
    )
    return (curve_auc(curves1) + curve_auc(curves2)) / 2
