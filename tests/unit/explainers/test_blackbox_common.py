"""What every black-box explainer (RISE, Sobol, Score-CAM, SIDU) must do: the contract, localisation on models whose
truth we built, determinism, an untouched global RNG and model, and ``batch_size`` not changing the result."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lightning_xai.explainers as explainers
from lightning_xai.explainers import RISE, SIDU, Explainer, ScoreCAM, Sobol
from tests.helpers.models import RegionModel, region_mask


class CellModel(nn.Module):
    """Reads only the region of :class:`RegionModel` (cell (1, 1) of a 4 x 4 grid of 4 x 4-pixel cells).

    Layer ``features`` outputs 16 channels at 4 x 4 resolution: channel k holds the mean of the image over cell k,
    at cell k, and 0 elsewhere, so each channel's activation marks a different place. The logits are those of
    ``RegionModel`` (class k: ``4 * (k - 1) * mean of the region``), read from the region's channel.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = _CellFeatures()
        self.register_buffer("slopes", torch.tensor([-4.0, 0.0, 4.0]))

    def forward(self, x: Tensor) -> Tensor:
        features = self.features(x)
        return features[:, 5, 1, 1][:, None] * self.slopes


class _CellFeatures(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        cells = F.avg_pool2d(x[:, :1], 4)  # (B, 1, 4, 4)
        return cells * torch.eye(16, device=x.device).view(16, 4, 4)


def _top_fraction_inside(maps: Tensor, region: Tensor) -> Tensor:
    """Per map, the fraction of its top-|region| pixels that lie inside the region."""
    top = maps.flatten(1).topk(int(region.sum()), dim=1).indices
    return region.flatten()[top].float().mean(dim=1)


def _region_batch(device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(2, 1, 16, 16, generator=generator) + 0.5).to(device), torch.tensor([2, 2], device=device)


LOCALISATION_CASES: list[tuple[str, Callable[[], Explainer], Callable[[], nn.Module]]] = [
    ("RISE", lambda: RISE(n_masks=4000, grid_size=7, batch_size=512), RegionModel),  # the paper's N and s
    ("Sobol", lambda: Sobol(grid_size=8, n_design=32, batch_size=512), RegionModel),  # Xplique's defaults
    ("Sobol-blurring", lambda: Sobol(grid_size=4, n_design=32, perturbation="blurring"), RegionModel),
    ("Sobol-amplitude", lambda: Sobol(grid_size=4, n_design=32, perturbation="amplitude"), RegionModel),
    ("ScoreCAM", lambda: ScoreCAM(layer="features"), CellModel),
    ("SIDU", lambda: SIDU(layer="features"), CellModel),
]


@pytest.mark.parametrize(
    ("label", "make_explainer", "make_model"), LOCALISATION_CASES, ids=[c[0] for c in LOCALISATION_CASES]
)
def test_black_box_maps_point_at_the_region_the_model_reads(label, make_explainer, make_model) -> None:
    inputs, target = _region_batch()
    maps = make_explainer()(make_model(), inputs, target)
    fractions = _top_fraction_inside(maps, region_mask().bool())
    assert (fractions >= 0.7).all(), f"{label}: fractions of top pixels inside the region {fractions.tolist()}"


def test_occlusion_points_at_the_region_the_model_reads() -> None:
    occlusion = getattr(explainers, "Occlusion", None)
    if occlusion is None:
        pytest.skip("lightning_xai.explainers.Occlusion does not exist yet")
    inputs, target = _region_batch()
    maps = occlusion(window=4, stride=2)(RegionModel(), inputs, target)
    assert (_top_fraction_inside(maps, region_mask().bool()) >= 0.7).all()


def _small_cases() -> list[tuple[str, Explainer]]:
    return [
        ("RISE", RISE(n_masks=24, grid_size=3, batch_size=5)),
        ("Sobol", Sobol(grid_size=2, n_design=16, batch_size=5)),
        ("ScoreCAM", ScoreCAM(layer="features", batch_size=5)),
        ("SIDU", SIDU(layer="features", batch_size=5)),
    ]


SMALL_IDS = [label for label, _ in _small_cases()]


@pytest.mark.parametrize("index", range(4), ids=SMALL_IDS)
def test_contract_shape_dtype_device_finite(index, device) -> None:
    _, explainer = _small_cases()[index]
    model = CellModel().to(device)
    inputs, target = _region_batch(device)
    maps = explainer(model, inputs, target)
    assert maps.shape == (2, 1, 16, 16)
    assert maps.dtype == torch.float32 and maps.device == inputs.device
    assert torch.isfinite(maps).all()
    assert explainer.needs_grad is False


@pytest.mark.parametrize("index", range(4), ids=SMALL_IDS)
def test_same_map_on_every_call_whatever_the_global_seed_and_global_rng_untouched(index) -> None:
    _, explainer = _small_cases()[index]
    model, (inputs, target) = CellModel(), _region_batch()
    torch.manual_seed(1)
    first = explainer(model, inputs, target)
    torch.manual_seed(2)
    with torch.random.fork_rng():
        expected_next = torch.rand(5)
    second = explainer(model, inputs, target)
    assert torch.equal(torch.rand(5), expected_next)  # the call left the global stream where it was
    assert torch.equal(first, second)


@pytest.mark.parametrize("index", range(4), ids=SMALL_IDS)
def test_batch_size_does_not_change_the_maps(index) -> None:
    _, explainer = _small_cases()[index]
    model, (inputs, target) = CellModel(), _region_batch()
    inputs = torch.cat([inputs, inputs.flip(-1), inputs.flip(-2)])
    target = torch.cat([target, target, target])
    reference = explainer(model, inputs, target)
    for batch_size in (4, 1000):  # 4: groups of 4 and 2 images, one mask per forward; 1000: everything at once
        explainer.batch_size = batch_size
        torch.testing.assert_close(explainer(model, inputs, target), reference, atol=1e-6, rtol=1e-5)


def test_rise_seed_changes_the_masks() -> None:
    model, (inputs, target) = RegionModel(), _region_batch()
    assert not torch.equal(
        RISE(n_masks=8, seed=0)(model, inputs, target), RISE(n_masks=8, seed=1)(model, inputs, target)
    )


@pytest.mark.parametrize("index", range(4), ids=SMALL_IDS)
def test_model_left_as_found_and_works_under_inference_mode(index) -> None:
    _, explainer = _small_cases()[index]
    if hasattr(explainer, "layer"):
        explainer.layer = "0.features"
    model = nn.Sequential(CellModel(), nn.Linear(3, 3))
    model.train()
    model[1].weight.requires_grad_(True)
    model[1].bias.requires_grad_(False)
    inputs, target = _region_batch()
    with torch.inference_mode():
        maps = explainer(model, inputs, target)
    assert torch.isfinite(maps).all()
    assert all(module.training for module in model.modules())
    assert model[1].weight.requires_grad and not model[1].bias.requires_grad
    assert model[1].weight.grad is None
    assert all(not module._forward_hooks for module in model.modules())


@pytest.mark.parametrize("explainer_type", [ScoreCAM, SIDU])
def test_layer_activations_are_read_before_a_following_in_place_relu(explainer_type) -> None:
    # ScoreCAM/SIDU on a conv followed by ReLU(inplace=True) must see the conv's raw (partly negative) output:
    # hooking the ReLU itself gives the rectified maps, so the two maps differ.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
    ).eval()
    inputs, target = torch.randn(2, 1, 8, 8), torch.tensor([0, 1])
    with torch.no_grad():
        raw = model[0](inputs)
    assert (raw < 0).any()
    explainer = explainer_type(layer="0", **({"threshold": -0.1} if explainer_type is SIDU else {}))
    rectified = explainer_type(layer="1", **({"threshold": -0.1} if explainer_type is SIDU else {}))
    assert not torch.allclose(explainer(model, inputs, target), rectified(model, inputs, target))
