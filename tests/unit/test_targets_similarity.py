"""SimilarityTarget and the row-aware target contract, against Captum with a hand-written cosine forward."""

from __future__ import annotations

import captum.attr
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_xai import SimilarityTarget
from lightning_xai._targets import RowAwareTarget, repeat_target, select_scores, take_rows
from lightning_xai.explainers import (
    RISE,
    SIDU,
    IntegratedGradients,
    Occlusion,
    Saliency,
    ScoreCAM,
    SmoothGrad,
    Sobol,
)
from lightning_xai.functional import deletion_curve


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))


def _forward(model: nn.Module):
    def cosine(inputs: Tensor, reference: Tensor) -> Tensor:
        return F.cosine_similarity(model(inputs), reference, dim=1)

    return cosine


@pytest.mark.parametrize("per_sample", [True, False], ids=["per_sample", "shared"])
def test_gradient_explainers_match_captum_with_a_hand_written_cosine(per_sample: bool) -> None:
    model, x = _model(), torch.rand(3, 3, 8, 8)
    reference = torch.randn(3, 5) if per_sample else torch.randn(5)
    expanded = reference if per_sample else reference.expand(3, 5)
    target = SimilarityTarget(reference)
    forward = _forward(model)
    ours = Saliency(channel_reduction=None)(model, x, target)
    theirs = captum.attr.Saliency(forward).attribute(x.clone().requires_grad_(), additional_forward_args=(expanded,))
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    ours = IntegratedGradients(channel_reduction=None, n_steps=16, internal_batch_size=8)(model, x, target)
    theirs = captum.attr.IntegratedGradients(forward).attribute(
        x, additional_forward_args=(expanded,), n_steps=16, internal_batch_size=8
    )
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    # NoiseTunnel interleaves the copies (IG repeats them): the per-sample reference must follow either order
    ours = SmoothGrad(n_samples=4, stdev=0.1, seed=5, channel_reduction=None)(model, x, target)
    torch.manual_seed(5)
    theirs = captum.attr.NoiseTunnel(captum.attr.Saliency(forward)).attribute(
        x.clone().requires_grad_(),
        nt_type="smoothgrad",
        nt_samples=4,
        stdevs=0.1,
        additional_forward_args=(expanded,),
        abs=False,
    )
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


def test_occlusion_with_several_perturbations_per_forward_matches_captum() -> None:
    model, x, reference = _model(), torch.rand(2, 3, 8, 8), torch.randn(2, 5)
    ours = Occlusion(window=4, stride=2, internal_batch_size=6)(model, x, SimilarityTarget(reference))
    theirs = captum.attr.Occlusion(_forward(model)).attribute(
        x,
        sliding_window_shapes=(3, 4, 4),
        strides=(3, 2, 2),
        additional_forward_args=(reference,),
        perturbations_per_eval=3,
    )
    torch.testing.assert_close(ours, theirs[:, :1], atol=1e-6, rtol=1e-5)


def test_perturbation_engines_score_each_copy_against_its_own_sample() -> None:
    """A per-sample reference through RISE, Sobol, Score-CAM and SIDU equals explaining each sample alone."""
    model, x, reference = _model(), torch.rand(3, 3, 8, 8), torch.randn(3, 5)
    explainers = (
        RISE(n_masks=12, grid_size=2, batch_size=5),
        Sobol(grid_size=2, n_design=32, batch_size=16),
        ScoreCAM(layer="0", batch_size=3),
        SIDU(layer="0", batch_size=5),
    )
    for explainer in explainers:
        together = explainer(model, x, SimilarityTarget(reference))
        alone = torch.cat([explainer(model, x[i : i + 1], SimilarityTarget(reference[i])) for i in range(3)])
        torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    maps = torch.rand(3, 1, 8, 8)
    together = deletion_curve(model, x, maps, SimilarityTarget(reference), steps=4, batch_size=4)
    alone = torch.cat(
        [
            deletion_curve(model, x[i : i + 1], maps[i : i + 1], SimilarityTarget(reference[i]), steps=4)
            for i in range(3)
        ]
    )
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=1e-5)


def test_views_and_repeats_map_rows_to_samples() -> None:
    reference = torch.eye(3)
    target = SimilarityTarget(reference)
    outputs = torch.eye(3)[[2, 2, 0, 1]]
    assert target(outputs, torch.tensor([2, 0, 0, 1])).tolist() == [1.0, 0.0, 1.0, 1.0]
    view = take_rows(target, torch.tensor([2, 0]))
    assert isinstance(view, RowAwareTarget) and view.batch_size == 2
    assert view(outputs[:2]).tolist() == [1.0, 0.0]
    repeated = repeat_target(view, 2)  # copies 0, 1 of sample 2, copies 2, 3 of sample 0
    assert repeated(outputs).tolist() == [1.0, 1.0, 1.0, 0.0]
    assert take_rows(SimilarityTarget(torch.ones(3)), torch.tensor([0])).batch_size is None  # shared: rows ignored
    plain = lambda out: out[:, 0]  # noqa: E731 - a plain callable is unchanged everywhere
    assert take_rows(plain, torch.tensor([1])) is plain and repeat_target(plain, 3) is plain
    assert select_scores(outputs, plain).tolist() == [0.0, 0.0, 1.0, 0.0]


def test_bad_embeddings_and_references_get_clear_errors() -> None:
    model, x = _model(), torch.rand(3, 3, 8, 8)
    with pytest.raises(ValueError, match=r"width D = 4, but the model's outputs have width 5"):
        Saliency()(model, x, SimilarityTarget(torch.randn(4)))
    with pytest.raises(ValueError, match=r"holds 2 per-sample rows, but the batch has 3 samples"):
        Saliency()(model, x, SimilarityTarget(torch.randn(2, 5)))
    with pytest.raises(ValueError, match=r"holds 2 per-sample rows, but the batch has 3 samples"):
        deletion_curve(model, x, torch.rand(3, 1, 8, 8), SimilarityTarget(torch.randn(2, 5)))
    conv = nn.Conv2d(3, 2, 3)
    with pytest.raises(ValueError, match=r"embeddings of shape \(B, D\).*got shape \(3, 2, 6, 6\)"):
        Saliency()(conv, x, SimilarityTarget(torch.randn(2)))
    with pytest.raises(ValueError, match=r"`reference` must be a floating-point embedding \(D,\) or one per sample"):
        SimilarityTarget(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="non-finite"):
        SimilarityTarget(torch.tensor([1.0, float("nan")]))
    with pytest.raises(TypeError, match="`reference` must be a tensor"):
        SimilarityTarget([1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no row index says which sample"):
        SimilarityTarget(torch.randn(2, 5))(torch.randn(4, 5))
