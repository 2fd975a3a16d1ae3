"""Similarity deletion and insertion AUC: a per-sample loop, a built truth, DDP shards, bad input."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_xai.functional import similarity_curves, similarity_deletion_auc, similarity_insertion_auc
from lightning_xai.metrics import SimilarityDeletionAUC, SimilarityInsertionAUC
from tests.helpers.ddp import run_distributed
from tests.helpers.models import PatchEmbedding, region_mask


def _pairs(count: int, seed: int = 0, channels: int = 1) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x1 = torch.rand(count, channels, 16, 16, generator=generator)
    x2 = (0.8 * x1 + 0.2 * torch.rand(count, channels, 16, 16, generator=generator)).clamp(0, 1)
    return x1, x2


def _loop_deletion(model: nn.Module, view: Tensor, other: Tensor, maps: Tensor, steps: int, value: float) -> Tensor:
    """One sample: rank pixels (ties: lower index first), delete the top round(k / steps * N), cosine to ``other``."""
    with torch.no_grad():
        reference = model(other[None])[0].double()
        saliency = maps.sum(0).flatten().tolist()
        order = sorted(range(len(saliency)), key=lambda i: (-saliency[i], i))
        curve = []
        for k in range(steps + 1):
            deleted = view.clone().flatten(1)
            for pixel in order[: math.floor(k / steps * len(order) + 0.5)]:
                deleted[:, pixel] = value
            embedding = model(deleted.view_as(view)[None])[0].double()
            curve.append(float(F.cosine_similarity(embedding, reference, dim=0)))
    return torch.tensor(curve, dtype=torch.float64)


def test_similarity_deletion_matches_a_per_sample_loop() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 16 * 16, 6))
    x1, x2 = _pairs(3, channels=2)
    maps1, maps2 = torch.rand(3, 1, 16, 16), torch.rand(3, 2, 16, 16)
    maps1[0, 0, :4] = 0.5  # ties
    curves1, curves2 = similarity_curves(model, x1, x2, maps1, maps2, steps=5, baseline=0.25, batch_size=4)
    for i in range(3):
        expected1 = _loop_deletion(model, x1[i], x2[i], maps1[i], 5, 0.25)
        expected2 = _loop_deletion(model, x2[i], x1[i], maps2[i], 5, 0.25)
        torch.testing.assert_close(curves1[i].double(), expected1, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(curves2[i].double(), expected2, atol=1e-5, rtol=1e-4)
    metric = SimilarityDeletionAUC(steps=5, baseline=0.25)
    metric.update(model, x1, x2, maps1, maps2)
    trapezoid = lambda c: (c[:, 1:] + c[:, :-1]).sum(-1) / (2 * (c.shape[-1] - 1))  # noqa: E731
    expected = (trapezoid(curves1) + trapezoid(curves2)) / 2
    torch.testing.assert_close(metric.per_sample(), expected)
    torch.testing.assert_close(similarity_deletion_auc(model, x1, x2, maps1, maps2, steps=5, baseline=0.25), expected)
    torch.testing.assert_close(metric.curves()["similarity_deletion"][1], ((curves1 + curves2) / 2).mean(0))


def test_deletion_separates_a_faithful_map_from_a_random_one() -> None:
    """On a model that reads one patch only, the patch map deletes the similarity far faster than random maps."""
    model = PatchEmbedding()
    x1, x2 = _pairs(48, seed=3)
    truth = region_mask(16, 16, 4, 8, 4).expand(48, 1, 16, 16)
    generator = torch.Generator().manual_seed(7)
    faithful = truth + 0.01 * torch.rand(48, 1, 16, 16, generator=generator)
    random = torch.rand(48, 1, 16, 16, generator=generator)
    scores = {}
    for name, maps in (("faithful", faithful), ("random", random)):
        deletion, insertion = SimilarityDeletionAUC(steps=16), SimilarityInsertionAUC(steps=16, baseline=0.0)
        deletion.update(model, x1, x2, maps, maps.flip(0).roll(1, 0) if name == "random" else maps)
        insertion.update(model, x1, x2, maps, maps)
        scores[name] = (deletion.compute(), deletion.standard_error(), insertion.compute(), insertion.standard_error())
    gap = scores["random"][0] - scores["faithful"][0]
    assert gap > 5 * math.hypot(scores["random"][1], scores["faithful"][1]), scores
    gap = scores["faithful"][2] - scores["random"][2]
    assert gap > 5 * math.hypot(scores["random"][3], scores["faithful"][3]), scores


def test_the_model_is_left_untouched_and_inference_mode_works() -> None:
    model = PatchEmbedding()
    model.train()
    x1, x2 = _pairs(2)
    maps1, maps2 = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    rng = torch.get_rng_state()
    with torch.inference_mode():
        metric = SimilarityInsertionAUC(steps=4, baseline="noise")
        metric.update(model, x1, x2, maps1, maps2)
    assert metric.compute().shape == ()
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    assert torch.equal(rng, torch.get_rng_state())
    assert metric.curve_axes() == ("fraction of pixels inserted", "cosine similarity to the other view")


def test_bad_input_gets_clear_errors() -> None:
    model = PatchEmbedding()
    x1, x2 = _pairs(2)
    maps = torch.rand(2, 1, 16, 16)
    metric = SimilarityDeletionAUC(steps=4)
    with pytest.raises(ValueError, match=r"same shape.*\(2, 1, 16, 16\).*\(1, 1, 16, 16\)"):
        metric.update(model, x1, x2[:1], maps, maps)
    with pytest.raises(ValueError, match=r"`maps2` must have shape"):
        metric.update(model, x1, x2, maps, maps[:, :, :8])
    with pytest.raises(ValueError, match=r"embeddings of shape \(B, D\)"):
        metric.update(nn.Conv2d(1, 2, 3), x1, x2, maps, maps)
    with pytest.raises(TypeError, match="scores pairs"):
        FaithfulnessMetricUpdate = SimilarityDeletionAUC._sample_scores
        FaithfulnessMetricUpdate(metric, model, x1, maps, None)
    assert similarity_insertion_auc(model, x1, x2, maps, maps, steps=2).shape == (2,)


#: Uneven shards: rank 0 sees pairs 0..2 and 5..6, rank 1 pairs 2..5.
SHARDS = [(0, 2), (2, 5), (5, 7)]
OWNER = [0, 1, 0]


def _evaluate(rank: int, world_size: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    model = PatchEmbedding()
    x1, x2 = _pairs(7, seed=5)
    generator = torch.Generator().manual_seed(11)
    maps1, maps2 = torch.rand(7, 1, 16, 16, generator=generator), torch.rand(7, 1, 16, 16, generator=generator)
    results = {}
    for metric in (SimilarityDeletionAUC(steps=4), SimilarityInsertionAUC(steps=4)):
        for (start, stop), owner in zip(SHARDS, OWNER, strict=True):
            if world_size == 1 or owner == rank:
                metric.update(model, x1[start:stop], x2[start:stop], maps1[start:stop], maps2[start:stop])
        results[metric.name] = {
            "summary": metric.summary(),
            "curves": metric.curves(),
            "bands": metric.curve_bands(),
            "count": metric.per_sample().numel() if world_size == 1 else None,
        }
    return results


@pytest.mark.ddp
def test_sharded_updates_match_one_process() -> None:
    single = _evaluate(0, 1)
    assert single["similarity_deletion_auc"]["count"] == 7
    for rank_results in run_distributed(_evaluate):
        for name, expected in single.items():
            got = rank_results[name]
            for key, value in expected["summary"].items():
                torch.testing.assert_close(got["summary"][key], value, atol=1e-6, rtol=1e-5)
            for label, (_x, y) in expected["curves"].items():
                torch.testing.assert_close(got["curves"][label][1], y, atol=1e-6, rtol=1e-5)
            for label, (low, high) in expected["bands"].items():
                torch.testing.assert_close(got["bands"][label][0], low, atol=1e-5, rtol=1e-4)
                torch.testing.assert_close(got["bands"][label][1], high, atol=1e-5, rtol=1e-4)
