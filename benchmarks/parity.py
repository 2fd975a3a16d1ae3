"""Parity of our CAM maps with pytorch-grad-cam and TorchCAM at the same layers (random weights, fixed seeds).

Printed per pair: the largest absolute difference of the per-image min-max-normalised maps (pytorch-grad-cam
returns normalised maps) or of the raw maps (TorchCAM with ``normalized=False``, upsampled bilinearly like ours),
and the Pearson correlation over all pixels.

    python benchmarks/parity.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from pytorch_grad_cam import GradCAM as PGCGradCAM
from pytorch_grad_cam import GradCAMPlusPlus as PGCGradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torchcam.methods import GradCAM as TCGradCAM
from torchcam.methods import GradCAMpp as TCGradCAMpp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_xai.explainers import GradCAM, GradCAMPlusPlus


def normalise(maps: torch.Tensor) -> torch.Tensor:
    low = maps.amin(dim=(-2, -1), keepdim=True)
    return (maps - low) / (maps.amax(dim=(-2, -1), keepdim=True) - low).clamp_min(1e-7)


def report(name: str, ours: torch.Tensor, reference: torch.Tensor) -> None:
    ours, reference = ours.reshape(reference.shape).double(), reference.double()
    correlation = torch.corrcoef(torch.stack([ours.flatten(), reference.flatten()]))[0, 1]
    print(f"{name:<62} max |diff| {float((ours - reference).abs().max()):.2e}   r = {float(correlation):.6f}")


def vit_reshape(tensor: torch.Tensor) -> torch.Tensor:
    return tensor[:, 1:, :].reshape(tensor.size(0), 4, 4, tensor.size(2)).permute(0, 3, 1, 2)


def main() -> None:
    torch.manual_seed(0)
    target = torch.tensor([0, 2])
    targets = [ClassifierOutputTarget(int(c)) for c in target]
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=3
    ).eval()
    torch.nn.init.normal_(vit.heads.head.weight)
    x32 = torch.rand(2, 3, 32, 32)
    layer = vit.encoder.layers[-1].ln_1
    reference = torch.from_numpy(PGCGradCAM(vit, [layer], reshape_transform=vit_reshape)(x32, targets))
    report(
        "GradCAM, ViT last ln_1 + reshape vs pytorch-grad-cam", normalise(GradCAM()(vit, x32, target))[:, 0], reference
    )
    x64 = torch.rand(2, 3, 64, 64)
    for family, build, name in (
        ("resnet18", torchvision.models.resnet18, "layer4"),
        ("mobilenet_v3_small", torchvision.models.mobilenet_v3_small, "features"),
    ):
        model = build(num_classes=3)
        with torch.no_grad():  # BatchNorm statistics of real activations (random init leaves them at 0 / 1)
            model.train()(torch.rand(8, 3, 64, 64))
        model.eval()
        module = dict(model.named_modules())[name]
        for ours_type, pgc_type, tc_type in (
            (GradCAM, PGCGradCAM, TCGradCAM),
            (GradCAMPlusPlus, PGCGradCAMPlusPlus, TCGradCAMpp),
        ):
            ours = ours_type()(model, x64, target)
            pgc = torch.from_numpy(pgc_type(model, [module])(x64, targets))
            report(f"{ours_type.__name__}, {family} {name} vs pytorch-grad-cam", normalise(ours)[:, 0], pgc)
            with tc_type(model, name, input_shape=(3, 64, 64)) as extractor:
                cams = extractor(class_idx=target.tolist(), scores=model(x64), normalized=False)
            tc = F.interpolate(cams[0][:, None], size=(64, 64), mode="bilinear", align_corners=False)
            report(f"{ours_type.__name__}, {family} {name} vs TorchCAM", ours, tc)


if __name__ == "__main__":
    main()
