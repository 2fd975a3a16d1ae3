"""Explainers on clips (B, C, T, H, W): known answers, parity with Captum and pytorch-grad-cam, clear refusals."""

from __future__ import annotations

import math

import captum.attr
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM as ReferenceGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from skimage.transform import resize
from torch import nn

from lightning_xai import functional as XF
from lightning_xai.explainers import (
    LRP,
    RISE,
    SIDU,
    GradCAM,
    GradCAMPlusPlus,
    InputXGradient,
    IntegratedGradients,
    Occlusion,
    Saliency,
    ScoreCAM,
    SmoothGrad,
    Sobol,
)
from lightning_xai.explainers.rise import rise_clip_mask_parameters, rise_clip_masks
from tests.helpers.models import ClipRegionModel, TinyClipNet, clip_region_mask

TARGET = torch.tensor([0, 0])


def _clips(seed: int = 0, batch: int = 2, size: tuple[int, int, int] = (4, 8, 8)) -> torch.Tensor:
    return torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def _tiny(seed: int = 0) -> TinyClipNet:
    torch.manual_seed(seed)
    model = TinyClipNet().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.stem[1].running_mean.uniform_(-0.2, 0.2)
        model.stem[1].running_var.uniform_(0.5, 1.5)
    return model


# ---------------------------------------------------------------------------------------------- known answers
KNOWN = {
    "Saliency": Saliency(),
    "InputXGradient": InputXGradient(),
    "IntegratedGradients": IntegratedGradients(n_steps=8),
    "SmoothGrad": SmoothGrad(n_samples=8, stdev=0.1),
    "GradCAM": GradCAM(layer="conv"),
    "GradCAMPlusPlus": GradCAMPlusPlus(layer="conv"),
    "Occlusion": Occlusion(window=(1, 2, 2), stride=(1, 2, 2)),
}


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_maps_of_a_model_reading_one_region_of_one_frame_sit_there(name: str) -> None:
    model, inputs, region = ClipRegionModel(), _clips(), clip_region_mask().bool()
    maps = KNOWN[name](model, inputs, TARGET)
    assert maps.shape == (2, 1, 4, 8, 8)
    mass = maps.clamp(min=0)[:, 0]
    inside = mass[:, region].sum(dim=1) / mass.flatten(1).sum(dim=1)
    assert bool((inside > 0.99).all()), inside  # every positive voxel of the map lies in the region of frame 2
    per_frame = mass.sum(dim=(2, 3))
    assert bool((per_frame.argmax(dim=1) == 2).all())


@pytest.mark.parametrize("seed", [0, 3])
def test_rise_map_of_a_model_reading_one_region_of_one_frame_peaks_there(seed: int) -> None:
    model, inputs, region = ClipRegionModel(), _clips(), clip_region_mask().bool()
    explainer = RISE(n_masks=2000, grid_size=4, temporal_grid_size=4, score="logit", seed=seed)
    maps = explainer(model, inputs, TARGET)[:, 0]
    assert maps.shape == (2, 4, 8, 8)
    for sample in maps:
        assert bool(region.flatten()[sample.flatten().argmax()])  # the top voxel lies in the region
        assert float(sample[region].mean()) > float(sample[~region].mean()) + 0.015
        square_per_frame = sample[:, 4:8, 0:4].mean(dim=(1, 2))  # the region's square in every frame
        assert int(square_per_frame.argmax()) == 2  # highest in the frame the model reads


# ---------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize(
    ("ours", "reference", "extra"),
    [
        (Saliency(channel_reduction=None), captum.attr.Saliency, {"abs": True}),
        (InputXGradient(channel_reduction=None), captum.attr.InputXGradient, {}),
        (IntegratedGradients(n_steps=16, channel_reduction=None), captum.attr.IntegratedGradients, {"n_steps": 16}),
    ],
    ids=["Saliency", "InputXGradient", "IntegratedGradients"],
)
def test_gradient_methods_match_captum_on_clips(ours, reference, extra) -> None:
    model, inputs, target = _tiny(), _clips(1), torch.tensor([2, 0])
    expected = reference(model).attribute(inputs.clone().requires_grad_(True), target=target, **extra)
    torch.testing.assert_close(ours(model, inputs, target), expected.detach(), rtol=1e-5, atol=1e-6)
    assert ours(model, inputs, target).shape == (2, 3, 4, 8, 8)


def test_smoothgrad_matches_captum_noise_tunnel_on_clips() -> None:
    model, inputs, target = _tiny(), _clips(2), torch.tensor([1, 2])
    ours = SmoothGrad(n_samples=5, stdev=0.2, seed=3, channel_reduction=None)(model, inputs, target)
    torch.manual_seed(3)
    expected = captum.attr.NoiseTunnel(captum.attr.Saliency(model)).attribute(
        inputs.clone().requires_grad_(True), nt_type="smoothgrad", nt_samples=5, stdevs=0.2, target=target, abs=False
    )
    torch.testing.assert_close(ours, expected.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("window", "stride"), [((2, 3, 3), (1, 2, 2)), ((1, 4, 4), (1, 4, 4)), ((3, 3, 2), (2, 3, 1))])
def test_spatio_temporal_occlusion_matches_captum(window, stride) -> None:
    model, inputs, target = _tiny(), _clips(3), torch.tensor([0, 1])
    ours = Occlusion(window=window, stride=stride, baseline=0.25)(model, inputs, target)
    expected = captum.attr.Occlusion(model).attribute(
        inputs, sliding_window_shapes=(3, *window), strides=(3, *stride), baselines=0.25, target=target
    )
    assert ours.shape == (2, 1, 4, 8, 8)
    torch.testing.assert_close(ours, expected[:, :1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(expected[:, 1:], expected[:, :1].expand(-1, 2, -1, -1, -1))  # channel-constant


def test_occlusion_with_a_spatial_window_on_clips_slides_frame_by_frame() -> None:
    model, inputs, target = _tiny(), _clips(4), torch.tensor([0, 1])
    expected = captum.attr.Occlusion(model).attribute(
        inputs, sliding_window_shapes=(3, 1, 4, 4), strides=(3, 1, 2, 2), target=target
    )
    torch.testing.assert_close(Occlusion(window=4, stride=2)(model, inputs, target), expected[:, :1])


def _hand_gradcam(model: nn.Module, layer: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Grad-CAM by its formula, with a forward hook and a tensor hook on the layer's output."""
    stored: dict[str, torch.Tensor] = {}

    def keep(_module, _args, output):
        stored["activation"] = output
        output.register_hook(lambda grad: stored.__setitem__("gradient", grad))

    handle = layer.register_forward_hook(keep)
    try:
        x = inputs.clone().requires_grad_(True)
        outputs = model(x)
        outputs.gather(1, target[:, None]).sum().backward()
    finally:
        handle.remove()
    activation, gradient = stored["activation"].detach(), stored["gradient"]
    weights = gradient.mean(dim=(2, 3, 4), keepdim=True)  # mean over (t, h, w)
    cam = torch.relu((weights * activation).sum(dim=1, keepdim=True))
    return F.interpolate(cam, size=inputs.shape[2:], mode="trilinear", align_corners=False)


def test_gradcam_on_conv3d_matches_the_formula_with_hooks() -> None:
    model, inputs, target = _tiny(), _clips(5, size=(6, 10, 10)), torch.tensor([2, 1])
    reference = _tiny()  # a copy: the reference writes .grad
    expected = _hand_gradcam(reference, reference.block, inputs, target)
    ours = GradCAM(layer="block")(model, inputs, target)
    assert ours.shape == (2, 1, 6, 10, 10)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    assert all(parameter.grad is None for parameter in model.parameters())
    # the default layer of a 3-D conv net is its last spatio-temporal module, the block
    torch.testing.assert_close(GradCAM()(model, inputs, target), ours)


def test_gradcam_on_conv3d_matches_pytorch_grad_cam_at_full_resolution() -> None:
    model, inputs, target = _tiny(), _clips(6), torch.tensor([0, 2])
    ours = GradCAM(layer="stem")(model, inputs, target)[:, 0].numpy()
    reference_model = _tiny()
    with ReferenceGradCAM(model=reference_model, target_layers=[reference_model.stem]) as cam:
        expected = cam(inputs, targets=[ClassifierOutputTarget(int(k)) for k in target])  # min-max scaled per clip
    assert expected.shape == ours.shape
    # both are ReLU'd (minimum 0); compare the shapes, each scaled by its maximum (the reference adds 1e-7 to its
    # denominator at a scale of its own)
    scaled = ours / ours.reshape(2, -1).max(axis=1).reshape(2, 1, 1, 1)
    np.testing.assert_allclose(scaled, expected / expected.reshape(2, -1).max(axis=1).reshape(2, 1, 1, 1), atol=1e-5)


def test_gradcam_plusplus_on_conv3d_matches_its_formula() -> None:
    model, inputs, target = _tiny(), _clips(7), torch.tensor([1, 0])
    stored: dict[str, torch.Tensor] = {}
    reference = _tiny()
    handle = reference.block.register_forward_hook(lambda _m, _a, out: stored.__setitem__("a", out))
    try:
        out = reference(inputs)
        (gradient,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), stored["a"])
    finally:
        handle.remove()
    activation = stored["a"].detach()
    alpha = gradient**2 / (2 * gradient**2 + activation.sum(dim=(2, 3, 4), keepdim=True) * gradient**3 + 1e-6)
    alpha = torch.where(gradient != 0, alpha, torch.zeros_like(alpha))
    weights = (alpha * gradient.clamp(min=0)).sum(dim=(2, 3, 4), keepdim=True)
    cam = (weights * activation).sum(dim=1, keepdim=True).clamp(min=0)
    expected = F.interpolate(cam, size=(4, 8, 8), mode="trilinear", align_corners=False)
    torch.testing.assert_close(GradCAMPlusPlus(layer="block")(model, inputs, target), expected, rtol=1e-5, atol=1e-6)


def _skimage_clip_masks(grids: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int, int]) -> np.ndarray:
    """The official RISE mask recipe one dimension up: skimage linear resize of each grid, crop at the shift."""
    cells = [math.ceil(extent / cells) for extent, cells in zip(size, grids.shape[1:], strict=True)]
    upsampled = [(cells_ + 1) * cell for cells_, cell in zip(grids.shape[1:], cells, strict=True)]
    masks = []
    for grid, (t, r, c) in zip(grids.numpy(), shifts.tolist(), strict=True):
        big = resize(grid, upsampled, order=1, mode="reflect", anti_aliasing=False)
        masks.append(big[t : t + size[0], r : r + size[1], c : c + size[2]])
    return np.stack(masks)[:, None]


def test_rise_clip_masks_match_a_trilinear_skimage_resize() -> None:
    grids, shifts = rise_clip_mask_parameters(6, 3, 4, 0.5, (5, 9, 7), seed=2)
    ours = rise_clip_masks(grids, shifts, (5, 9, 7))
    np.testing.assert_allclose(ours.numpy(), _skimage_clip_masks(grids, shifts, (5, 9, 7)), atol=1e-5)


def test_rise_on_clips_matches_the_per_mask_formula() -> None:
    model, inputs, target = _tiny(), _clips(8), torch.tensor([0, 2])
    explainer = RISE(n_masks=12, grid_size=4, temporal_grid_size=2, p=0.5, seed=1, batch_size=5)
    grids, shifts = rise_clip_mask_parameters(12, 2, 4, 0.5, (4, 8, 8), seed=1)
    masks = torch.from_numpy(_skimage_clip_masks(grids, shifts, (4, 8, 8))).float()
    with torch.no_grad():
        expected = torch.zeros(2, 1, 4, 8, 8)
        for mask in masks:
            probabilities = torch.softmax(model(inputs * mask), dim=1).gather(1, target[:, None]).view(2, 1, 1, 1, 1)
            expected += probabilities * mask
    torch.testing.assert_close(explainer(model, inputs, target), expected / (12 * 0.5), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------- refusals
class _FoldedTime(nn.Module):
    """A 'video' model that folds time into the batch and runs an nn.Conv2d per frame."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = x.shape
        per_frame = self.conv(x.transpose(1, 2).reshape(batch * frames, channels, height, width))
        return self.fc(per_frame.mean(dim=(2, 3)).view(batch, frames, -1).mean(dim=1))


class _Mixed(nn.Module):
    """A clip model whose Conv3d output is collapsed over time before an nn.Conv2d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv3d = nn.Conv3d(3, 4, 3, padding=1)
        self.conv2d = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2d(self.conv3d(x).mean(dim=2)).mean(dim=(2, 3)))


def test_a_conv2d_layer_named_for_a_clip_model_is_refused() -> None:
    inputs = _clips()
    with pytest.raises(ValueError, match=r"`layer` 'conv2d' \(Conv2d\) outputs a 4-D map \(2, 4, 8, 8\)"):
        GradCAM(layer="conv2d")(_Mixed(), inputs, TARGET)
    with pytest.raises(
        ValueError, match=r"spatio-temporal output \(B, K, t, h, w\), B = 2.*outputs shape \(8, 4, 8, 8\)"
    ):
        GradCAMPlusPlus(layer="conv")(_FoldedTime(), inputs, TARGET)
    # a Conv3d layer named for an image model is refused the other way round
    image_model = nn.Sequential(
        nn.Unflatten(1, (3, 1)), nn.Conv3d(3, 2, 1), nn.Flatten(1, 2), nn.Flatten(), nn.Linear(128, 2)
    )
    with pytest.raises(ValueError, match=r"the inputs are images .* outputs a 5-D map"):
        GradCAM(layer="1")(image_model, torch.rand(2, 3, 8, 8), TARGET)


def test_windows_that_do_not_fit_are_refused_with_the_value_and_the_size() -> None:
    model = _tiny()
    with pytest.raises(ValueError, match=r"`window` \(5, 2, 2\) is larger than the clips' \(T, H, W\) = \(4, 8, 8\)"):
        Occlusion(window=(5, 2, 2))(model, _clips(), TARGET)
    with pytest.raises(ValueError, match=r"`window` \(1, 9, 9\) is larger than the clips' \(T, H, W\) = \(4, 8, 8\)"):
        Occlusion(window=9)(model, _clips(), TARGET)
    image_model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    with pytest.raises(ValueError, match=r"`window` \(2, 4, 4\) is a spatio-temporal \(frames, height, width\) triple"):
        Occlusion(window=(2, 4, 4))(image_model, torch.rand(2, 3, 8, 8), TARGET)
    with pytest.raises(ValueError, match=r"`stride` \(1, 2, 2\) is a spatio-temporal"):
        Occlusion(window=2, stride=(1, 2, 2))(image_model, torch.rand(2, 3, 8, 8), TARGET)
    with pytest.raises(ValueError, match=r"`window` must be an int, a pair .* or a triple"):
        Occlusion(window=(1, 2, 3, 4))
    with pytest.raises(ValueError, match=r"`temporal_grid_size` must lie in \[1, T\] = \[1, 4\].*got 5"):
        RISE(n_masks=2, grid_size=2, temporal_grid_size=5)(model, _clips(), TARGET)


@pytest.mark.parametrize(
    "explainer",
    [Sobol(), SIDU(), ScoreCAM(), LRP()],
    ids=lambda explainer: type(explainer).__name__,
)
def test_explainers_without_a_video_meaning_refuse_clips_by_name(explainer) -> None:
    with pytest.raises(ValueError, match=rf"clip batch \(B, C, T, H, W\).*but {explainer.name} has no spatio-temporal"):
        explainer(_tiny(), _clips(), TARGET)


def test_functional_metrics_without_a_video_meaning_refuse_clips() -> None:
    model, inputs, maps = _tiny(), _clips(), torch.rand(2, 1, 4, 8, 8)
    for function in (XF.mif_lif_fidelity, XF.road_curves, XF.infidelity):
        with pytest.raises(ValueError, match=r"clip batch \(B, C, T, H, W\).*has no spatio-temporal meaning"):
            function(model, inputs, maps, TARGET)
    # deletion and insertion do accept them
    assert XF.deletion_auc(model, inputs, maps, TARGET, steps=4).shape == (2,)


@pytest.mark.parametrize("num_classes", [1, 4], ids=["single_logit", "multi_label"])
def test_clip_explainers_and_deletion_work_for_single_logit_and_multi_label_heads(num_classes: int) -> None:
    torch.manual_seed(0)
    model, inputs = TinyClipNet(num_classes=num_classes).eval(), _clips(9)
    target = torch.tensor([0, 0]) if num_classes == 1 else torch.tensor([3, 1])  # a label of each clip
    explainers = [Saliency(), GradCAM(), Occlusion(window=(2, 4, 4), stride=(2, 4, 4)), RISE(n_masks=8, grid_size=2)]
    for explainer in explainers:
        if num_classes > 1 and isinstance(explainer, RISE):
            explainer.score = "sigmoid"  # each label its own probability
        maps = explainer(model, inputs, target)
        assert maps.shape == (2, 1, 4, 8, 8) and bool(torch.isfinite(maps).all()), explainer.name
    score = "probability" if num_classes == 1 else "sigmoid"  # a single logit's probability is its sigmoid
    curves = XF.deletion_curve(model, inputs, maps, target, steps=4, score=score)
    with torch.no_grad():
        expected = torch.sigmoid(model(inputs).gather(1, target[:, None]))[:, 0]
    torch.testing.assert_close(curves[:, 0], expected)  # the curve starts at the clip's own score
