"""Pair methods of xai-ssl: known answers, symmetry, an independent per-window loop, the model left untouched."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_xai.explainers import (
    AveragedTransforms,
    ConditionalOcclusion,
    ContextAgnosticConditionalOcclusion,
    InteractionCAM,
    PairwiseOcclusion,
    PixelInvariance,
)
from lightning_xai.explainers.similarity import window_starts
from tests.helpers.models import PatchEmbedding, region_mask

PATCH = region_mask(16, 16, 4, 8, 4).bool()


def _views(batch: int = 3, seed: int = 1) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x1 = torch.rand(batch, 1, 16, 16, generator=generator)
    x2 = (0.9 * x1 + 0.1 * torch.rand(batch, 1, 16, 16, generator=generator)).clamp(0, 1)  # a light augmentation
    return x1, x2


METHODS = [
    ConditionalOcclusion(window=4, stride=2),
    ContextAgnosticConditionalOcclusion(window=4, stride=2),
    PairwiseOcclusion(window=4, stride=2),
    InteractionCAM(layer="conv"),
    AveragedTransforms(steps=6),
    PixelInvariance(lambda x, g: x * (torch.rand(x.shape, generator=g) > 0.3), num_augments=256),
]


@pytest.mark.parametrize("explainer", METHODS, ids=lambda e: e.name)
def test_maps_peak_in_the_patch_for_both_views(explainer) -> None:
    model = PatchEmbedding()
    x1, x2 = _views()
    maps1, maps2 = explainer.explain_pair(model, x1, x2)
    for maps in (maps1, maps2):
        assert maps.shape == (3, 1, 16, 16)
        for sample in maps[:, 0]:
            peak = int(sample.flatten().argmax())
            assert PATCH.flatten()[peak], f"{explainer.name}: peak at pixel {divmod(peak, 16)} outside the patch"
            # the mean inside the patch clearly exceeds the mean far from it
            far = ~F.max_pool2d(PATCH[None, None].float(), 9, stride=1, padding=4)[0, 0].bool()
            assert sample[PATCH].mean() > sample[far].mean() + 0.05 * sample.abs().max()


@pytest.mark.parametrize("explainer", [m for m in METHODS if m.symmetric], ids=lambda e: e.name)
def test_symmetric_methods_swap_their_maps_when_the_pair_is_swapped(explainer) -> None:
    layers = {"conv": nn.Conv2d(1, 4, 3, padding=1), "relu": nn.ReLU(), "flat": nn.Flatten(), "fc": nn.Linear(1024, 6)}
    model = nn.Sequential(OrderedDict(layers))
    x1, x2 = _views()
    maps1, maps2 = explainer.explain_pair(model, x1, x2)
    swapped2, swapped1 = explainer.explain_pair(model, x2, x1)
    torch.testing.assert_close(swapped1, maps1, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(swapped2, maps2, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(maps1, maps2)  # the maps do differ between the views


def _loop_windows(size: int, window: int, stride: int) -> list[tuple[int, int]]:
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return [(top, left) for top in starts for left in starts]


def _credit(scores: list[float], windows: list[tuple[int, int]], window: int, size: int) -> Tensor:
    total, count = torch.zeros(size, size, dtype=torch.float64), torch.zeros(size, size, dtype=torch.float64)
    for score, (top, left) in zip(scores, windows, strict=True):
        total[top : top + window, left : left + window] += score
        count[top : top + window, left : left + window] += 1
    return total / count


def _cos(a: Tensor, b: Tensor) -> float:
    return float(F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


def test_occlusion_methods_match_a_per_sample_per_window_loop() -> None:
    """ConditionalOcclusion, the context-agnostic variant and PairwiseOcclusion against plain loops."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 10 * 10, 5))
    x1, x2 = torch.rand(2, 2, 10, 10), torch.rand(2, 2, 10, 10)
    window, stride, size = 4, 3, 10
    windows = _loop_windows(size, window, stride)
    conditional = ConditionalOcclusion(window, stride, baseline=0.5, batch_size=7).explain_pair(model, x1, x2)
    agnostic = ContextAgnosticConditionalOcclusion(window, stride, baseline=0.5).explain_pair(model, x1, x2)
    pairwise = PairwiseOcclusion(window, stride, baseline=0.5, temperature=0.5).explain_pair(model, x1, x2)
    with torch.no_grad():
        f = lambda image: model(image[None])[0]  # noqa: E731
        for b in range(2):
            views = (x1[b], x2[b])
            embeddings = (f(views[0]), f(views[1]))
            base = _cos(*embeddings)
            occluded_embeddings: list[list[Tensor]] = [[], []]
            for v in range(2):
                other = embeddings[1 - v]
                drops, agnostic_scores = [], []
                for top, left in windows:
                    occluded, kept = views[v].clone(), torch.full_like(views[v], 0.5)
                    occluded[:, top : top + window, left : left + window] = 0.5
                    kept[:, top : top + window, left : left + window] = views[v][
                        :, top : top + window, left : left + window
                    ]
                    occluded_embeddings[v].append(f(occluded))
                    drops.append(base - _cos(f(occluded), other))
                    agnostic_scores.append(_cos(f(kept) - f(occluded), other))
                torch.testing.assert_close(
                    conditional[v][b, 0].double(), _credit(drops, windows, window, size), atol=1e-5, rtol=1e-4
                )
                scores = torch.tensor(agnostic_scores, dtype=torch.float64)
                scores = (scores - scores.min()) / (scores.max() - scores.min())
                torch.testing.assert_close(
                    agnostic[v][b, 0].double(), _credit(scores.tolist(), windows, window, size), atol=1e-5, rtol=1e-4
                )
            joint = torch.tensor(
                [[base - _cos(e1, e2) for e2 in occluded_embeddings[1]] for e1 in occluded_embeddings[0]],
                dtype=torch.float64,
            )
            weights = torch.softmax(joint.flatten() / 0.5, dim=0).view_as(joint)
            for v, marginal in enumerate((weights.sum(1), weights.sum(0))):
                expected = _credit(marginal.tolist(), windows, window, size)
                expected = (expected - expected.min()) / (expected.max() - expected.min())
                torch.testing.assert_close(pairwise[v][b, 0].double(), expected, atol=1e-4, rtol=1e-3)


def test_interaction_cam_and_averaged_transforms_match_a_hand_written_autograd() -> None:
    torch.manual_seed(4)
    conv = nn.Conv2d(1, 4, 3, padding=1)
    head = nn.Linear(4, 6)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.head = conv, head

        def forward(self, x: Tensor) -> Tensor:
            return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))

    model = Model()
    x1, x2 = _views(batch=2)
    cam1, cam2 = InteractionCAM(layer="conv").explain_pair(model, x1, x2)
    averaged1, averaged2 = AveragedTransforms(steps=3, internal_batch_size=2).explain_pair(model, x1, x2)
    for b in range(2):
        # Interaction-CAM by hand: gradients at the conv's output of the pair's cosine
        a1 = conv(x1[b : b + 1]).detach().requires_grad_(True)
        a2 = conv(x2[b : b + 1]).detach().requires_grad_(True)
        e1, e2 = head(torch.relu(a1).mean(dim=(2, 3))), head(torch.relu(a2).mean(dim=(2, 3)))
        g1, g2 = torch.autograd.grad(F.cosine_similarity(e1, e2).sum(), (a1, a2))
        n1 = (e1 - e1.min()) / (e1.max() - e1.min())
        n2 = (e2 - e2.min()) / (e2.max() - e2.min())
        invariance = 1 - (n1 - n2).abs().mean()
        joint = (a1.mean(dim=(2, 3)) * a2.mean(dim=(2, 3)))[:, :, None, None]
        torch.testing.assert_close(
            cam1[b], (a1 * joint * invariance * F.relu(g1)).sum(1).detach(), atol=1e-6, rtol=1e-4
        )
        torch.testing.assert_close(
            cam2[b], (a2 * joint * invariance * F.relu(g2)).sum(1).detach(), atol=1e-6, rtol=1e-4
        )
        # averaged transforms by hand, one mixed image at a time
        grads1, grads2 = torch.zeros_like(x1[b]), torch.zeros_like(x2[b])
        for k in range(1, 4):
            anchor = x1[b : b + 1].clone().requires_grad_(True)
            mixed = ((1 - k / 3) * x1[b : b + 1] + k / 3 * x2[b : b + 1]).requires_grad_(True)
            g_anchor, g_mixed = torch.autograd.grad(
                F.cosine_similarity(model(anchor), model(mixed)).sum(), (anchor, mixed)
            )
            grads1 += g_anchor[0] / 3
            grads2 += g_mixed[0] / 3
        torch.testing.assert_close(averaged1[b], (x1[b] * grads1).abs().amax(0, keepdim=True), atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(averaged2[b], (x2[b] * grads2).abs().amax(0, keepdim=True), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("explainer", METHODS, ids=lambda e: e.name)
def test_the_model_is_left_untouched(explainer) -> None:
    model = PatchEmbedding()
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    explainer.explain_pair(model, *_views())
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert torch.equal(rng, torch.get_rng_state())


def test_runs_inside_inference_mode() -> None:
    model = PatchEmbedding()
    with torch.inference_mode():
        x1, x2 = _views()
        for explainer in METHODS:
            maps1, _ = explainer.explain_pair(model, x1, x2)
            assert maps1.shape == (3, 1, 16, 16)


def test_bad_pairs_get_clear_errors() -> None:
    model = PatchEmbedding()
    x1, _ = _views()
    with pytest.raises(ValueError, match=r"same shape .*`x1` has \(3, 1, 16, 16\) and `x2` has \(2, 1, 16, 16\)"):
        ConditionalOcclusion(4, 2).explain_pair(model, x1, x1[:2])
    with pytest.raises(ValueError, match=r"same shape"):
        InteractionCAM().explain_pair(model, x1, x1[..., :8])
    logits = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())  # (B, 2, 14, 14): not an embedding
    for explainer in METHODS[:3] + METHODS[4:]:
        with pytest.raises(ValueError, match=r"embeddings of shape \(B, D\).*got shape \(\d+, 2, 14, 14\)"):
            explainer.explain_pair(logits, x1, x1)
    with pytest.raises(ValueError, match="`window` side 32 is larger than the image side 16"):
        PairwiseOcclusion(window=32).explain_pair(model, x1, x1)
    with pytest.raises(ValueError, match="reduction"):
        InteractionCAM(reduction="attention")  # type: ignore[arg-type]


def test_window_starts_cover_the_border() -> None:
    assert window_starts(16, 4, 3) == [0, 3, 6, 9, 12]
    assert window_starts(16, 5, 4) == [0, 4, 8, 11]


def test_pixel_invariance_is_the_ridge_regression_of_scikit_learn() -> None:
    """The surrogate's weights equal sklearn's Ridge (with intercept) on the augmented pixels and similarities."""
    from sklearn.linear_model import Ridge

    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
    x1, x2 = torch.rand(2, 2, 6, 6), torch.rand(2, 2, 6, 6)
    noise = lambda x, g: x + 0.3 * torch.randn(x.shape, generator=g)  # noqa: E731
    explainer = PixelInvariance(noise, num_augments=40, ridge=0.5, seed=2, batch_size=16)
    maps1, maps2 = explainer.explain_pair(model, x1, x2)
    for v, (view, anchor, maps) in enumerate(((x1, x2, maps1), (x2, x1, maps2))):
        generator = torch.Generator().manual_seed(2)
        copies = torch.stack([noise(view.clone(), generator) for _ in range(40)])  # (N, B, C, H, W)
        with torch.no_grad():
            for b in range(2):
                features = copies[:, b].flatten(1).double().numpy()
                targets = F.cosine_similarity(model(copies[:, b]), model(anchor[b : b + 1]), dim=1).double().numpy()
                centred = features - features.mean(0)
                alpha = 0.5 * float((centred**2).mean()) * features.shape[1]
                weights = torch.from_numpy(Ridge(alpha=alpha).fit(features, targets).coef_).view(2, 6, 6)
                expected = weights.amax(0)
                expected = (expected - expected.min()) / (expected.max() - expected.min())
                torch.testing.assert_close(maps[b, 0].double(), expected, atol=1e-4, rtol=1e-3, msg=f"view {v}")
