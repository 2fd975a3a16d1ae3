"""Token layers, default layers and attention rollout on real torchvision and timm architectures.

References: pytorch-grad-cam's GradCAM (same layer, same ``reshape_transform``) and TorchCAM's GradCAM at the
default layers; attention rollout against a plain per-layer loop over attentions recomputed from the weights,
and against the closed form of uniform attention.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_xai._layers import default_layer_name, family_layer_name, to_spatial
from lightning_xai.explainers import SIDU, AttentionRollout, GradCAM, GradCAMPlusPlus, ScoreCAM

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")


def small_vit(num_layers: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=num_layers, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=3
    )
    nn.init.normal_(vit.heads.head.weight)  # torchvision zero-initialises the head: every gradient would be 0
    return vit.eval()


def normalise(maps: Tensor) -> Tensor:
    low = maps.amin(dim=(-2, -1), keepdim=True)
    return (maps - low) / (maps.amax(dim=(-2, -1), keepdim=True) - low).clamp_min(1e-12)


def vit_reshape(tensor: Tensor, height: int = 4, width: int = 4) -> Tensor:
    # pytorch-grad-cam's documented reshape_transform for ViT (drop the class token, tokens row by row).
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: torchvision.models.resnet18(num_classes=3), "layer4"),
        (lambda: torchvision.models.densenet121(num_classes=3), "features"),
        (lambda: torchvision.models.mobilenet_v3_small(num_classes=3), "features"),
        (lambda: torchvision.models.vgg11(num_classes=3), "features"),
        (lambda: small_vit(), "encoder.layers.encoder_layer_1.ln_1"),
        (lambda: timm.create_model("resnet18", pretrained=False, num_classes=3), "layer4"),
        (lambda: timm.create_model("convnext_atto", pretrained=False, num_classes=3), "stages.3"),
        (
            lambda: timm.create_model(
                "vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, patch_size=8, depth=2
            ),
            "blocks.1.norm1",
        ),
    ],
)
def test_default_layers_of_known_families(build, expected) -> None:
    assert family_layer_name(build()) == expected


def test_unknown_model_defaults_to_the_last_spatial_module_not_the_last_conv() -> None:
    # The last Conv2d is "0"; the last module with a spatial output is the ReLU after it (post-activation).
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    assert default_layer_name(model, torch.rand(1, 3, 8, 8)) == "1"
    assert default_layer_name(model) == "0"  # static look-up without a batch


def test_gradcam_on_a_vit_matches_pytorch_grad_cam_with_the_same_layer_and_reshape() -> None:
    from pytorch_grad_cam import GradCAM as ReferenceGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    vit, inputs, target = small_vit(), torch.rand(2, 3, 32, 32), torch.tensor([0, 2])
    layer = vit.encoder.layers[-1].ln_1
    expected = ReferenceGradCAM(model=vit, target_layers=[layer], reshape_transform=vit_reshape)(
        input_tensor=inputs, targets=[ClassifierOutputTarget(int(c)) for c in target]
    )
    ours = GradCAM()(vit, inputs, target)  # default layer and automatic reshape
    explicit = GradCAM(layer=layer, reshape=vit_reshape)(vit, inputs, target)
    torch.testing.assert_close(ours, explicit)
    torch.testing.assert_close(normalise(ours)[:, 0], torch.from_numpy(expected), atol=1e-5, rtol=0)


def test_gradcam_on_resnet18_layer4_matches_pytorch_grad_cam_and_torchcam() -> None:
    from pytorch_grad_cam import GradCAM as ReferenceGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchcam.methods import GradCAM as TorchCAMGradCAM

    torch.manual_seed(0)
    model, inputs, target = (
        torchvision.models.resnet18(num_classes=3).eval(),
        torch.rand(2, 3, 64, 64),
        torch.tensor([0, 2]),
    )
    ours = GradCAM()(model, inputs, target)
    expected = ReferenceGradCAM(model=model, target_layers=[model.layer4])(
        input_tensor=inputs, targets=[ClassifierOutputTarget(int(c)) for c in target]
    )
    torch.testing.assert_close(normalise(ours)[:, 0], torch.from_numpy(expected), atol=1e-5, rtol=0)
    with TorchCAMGradCAM(model, "layer4", input_shape=(3, 64, 64)) as extractor:
        cams = extractor(class_idx=target.tolist(), scores=model(inputs), normalized=False)
    reference = F.interpolate(cams[0][:, None], size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-4)


def test_gradcam_on_mobilenet_features_matches_torchcam() -> None:
    from torchcam.methods import GradCAM as TorchCAMGradCAM

    torch.manual_seed(1)
    model = torchvision.models.mobilenet_v3_small(num_classes=3).eval()
    inputs, target = torch.rand(2, 3, 64, 64), torch.tensor([1, 2])
    with TorchCAMGradCAM(model, "features", input_shape=(3, 64, 64)) as extractor:
        cams = extractor(class_idx=target.tolist(), scores=model(inputs), normalized=False)
    reference = F.interpolate(cams[0][:, None], size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(GradCAM()(model, inputs, target), reference, atol=1e-6, rtol=1e-4)


def test_token_reshapes_vit_deit_and_swin_layouts() -> None:
    image = (32, 48)
    dummy = nn.Identity()
    tokens = torch.arange(2 * (1 + 4 * 6) * 5, dtype=torch.float32).view(2, 25, 5)
    grid = to_spatial(tokens, "tokens", model=dummy, module=dummy, image_size=image)
    assert grid.shape == (2, 5, 4, 6)
    torch.testing.assert_close(grid[:, :, 1, 2], tokens[:, 1 + 1 * 6 + 2])  # row-major after the class token
    deit = timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, num_classes=3, img_size=32, patch_size=8, depth=1
    )
    two = torch.rand(2, 2 + 16, 7)
    torch.testing.assert_close(
        to_spatial(two, "auto", model=deit, module=dummy, image_size=(32, 32)),
        two[:, 2:].reshape(2, 4, 4, 7).permute(0, 3, 1, 2),
    )
    norm = nn.LayerNorm(7)
    channels_last = torch.rand(2, 3, 3, 7)
    torch.testing.assert_close(
        to_spatial(channels_last, "auto", model=dummy, module=norm, image_size=(32, 32)),
        channels_last.permute(0, 3, 1, 2),
    )
    with pytest.raises(ValueError, match=r"cannot lay 23 tokens \(prefix 1\)"):
        to_spatial(torch.rand(1, 23, 4), "tokens", model=small_vit(), module=dummy, image_size=(32, 32))


@pytest.mark.parametrize("explainer_type", [GradCAM, GradCAMPlusPlus, ScoreCAM, SIDU])
def test_cam_methods_on_swin_and_deit_give_maps_and_refuse_tokens_without_reshape(explainer_type) -> None:
    deit = timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, num_classes=3, img_size=32, patch_size=8, depth=2
    ).eval()
    inputs, target = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        maps = explainer_type()(deit, inputs, target)
    assert maps.shape == (2, 1, 32, 32) and bool(torch.isfinite(maps).all())
    with pytest.raises(ValueError, match=r"outputs shape \(2, 18, 192\)"):
        explainer_type(reshape=None)(deit, inputs, target)


def _torchvision_attentions_by_hand(vit: nn.Module, inputs: Tensor) -> list[Tensor]:
    """Per-layer attention (B, heads, N, N) recomputed from each block's ln_1 input and in_proj weights."""
    attentions = []
    x = vit._process_input(inputs)
    x = torch.cat([vit.class_token.expand(x.shape[0], -1, -1), x], dim=1) + vit.encoder.pos_embedding
    for block in vit.encoder.layers:
        h = block.ln_1(x)
        attention = block.self_attention
        q, k, _ = F.linear(h, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
        heads = attention.num_heads
        q = q.view(x.shape[0], -1, heads, q.shape[-1] // heads).transpose(1, 2)
        k = k.view(x.shape[0], -1, heads, k.shape[-1] // heads).transpose(1, 2)
        attentions.append(torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1))
        x = block(x)
    return attentions


def _rollout_loop(attentions: list[np.ndarray], fusion: str, discard_ratio: float) -> np.ndarray:
    """Plain numpy loop: per image, per layer, fuse heads, drop, add identity, renormalise rows, multiply."""
    batch, _, tokens, _ = attentions[0].shape
    out = np.zeros((batch, tokens, tokens))
    for image in range(batch):
        result = np.eye(tokens)
        for attention in attentions:
            fused = {"mean": np.mean, "max": np.max, "min": np.min}[fusion](attention[image], axis=0).copy()
            flat = fused.reshape(-1)
            count = int(flat.size * discard_ratio)
            if count:
                lowest = np.argsort(flat, kind="stable")[:count]
                lowest = lowest[lowest != 0]
                flat[lowest] = 0.0
                fused = flat.reshape(tokens, tokens)
            layer = (fused + np.eye(tokens)) / 2
            layer = layer / layer.sum(axis=1, keepdims=True)
            result = layer @ result
        out[image] = result
    return out


@pytest.mark.parametrize(("fusion", "discard_ratio"), [("mean", 0.0), ("max", 0.0), ("min", 0.5), ("mean", 0.9)])
def test_attention_rollout_matches_a_per_layer_loop_on_a_torchvision_vit(fusion, discard_ratio) -> None:
    vit, inputs = small_vit(num_layers=3), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        attentions = [a.double().numpy() for a in _torchvision_attentions_by_hand(vit, inputs)]
    rolled = _rollout_loop(attentions, fusion, discard_ratio)
    expected = torch.from_numpy(rolled[:, 0, 1:]).float().view(2, 1, 4, 4)
    expected = F.interpolate(expected, size=(32, 32), mode="bilinear", align_corners=False)
    maps = AttentionRollout(head_fusion=fusion, discard_ratio=discard_ratio)(vit, inputs, torch.tensor([0, 1]))
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=1e-4)


def test_attention_rollout_of_uniform_attention_has_the_closed_form() -> None:
    # q = k = 0 makes every attention row uniform over N tokens: A' = (J/N + I)/2, and A'^L = 2^-L I + (1 - 2^-L) J/N.
    # The class token's row over the 16 patches is (1 - 2^-L) / N everywhere.
    layers = 3
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, patch_size=8, depth=layers
    ).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight[: 2 * 192].zero_()
            block.attn.qkv.bias[: 2 * 192].zero_()
    maps = AttentionRollout()(model, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]))
    torch.testing.assert_close(maps, torch.full_like(maps, (1 - 2.0**-layers) / 17), atol=1e-6, rtol=1e-5)
    assert all(block.attn.fused_attn for block in model.blocks)  # timm's fused kernel switched back on


def test_attention_rollout_timm_and_torchvision_agree_on_timm_and_refuses_swin_and_cnns() -> None:
    inputs, target = torch.rand(1, 3, 32, 32), torch.tensor([0])
    with pytest.raises(ValueError, match="Swin's shifted-window attention is not global"):
        AttentionRollout()(torchvision.models.swin_t(num_classes=3), torch.rand(1, 3, 64, 64), target)
    with pytest.raises(ValueError, match="it has no attention module"):
        AttentionRollout()(torchvision.models.resnet18(num_classes=3), inputs, target)
    with pytest.raises(ValueError, match="head_fusion"):
        AttentionRollout(head_fusion="sum")
    with pytest.raises(ValueError, match="discard_ratio"):
        AttentionRollout(discard_ratio=1.0)
