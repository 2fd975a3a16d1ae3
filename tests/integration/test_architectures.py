"""The architecture x explainer (x metric) matrix on real torchvision and timm models with random weights.

Each combination either works (the map has the contract's shape and is finite, and the model's parameters and
buffers, BatchNorm running statistics included, are bitwise unchanged) or refuses with a ValueError that says
why. ``python -m tests.integration.test_architectures`` prints the matrix as the README's table.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

from lightning_xai.explainers import (
    RISE,
    SIDU,
    AttentionRollout,
    Explainer,
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
from lightning_xai.metrics import DeletionAUC, InsertionAUC, MIFLIFFidelity, MuFidelity

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")


def _vit() -> nn.Module:
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=3
    )
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision zero-initialises the head
    return model


def _primed(build: Callable[[], nn.Module], size: int) -> Callable[[], nn.Module]:
    """The model after one training-mode forward, so BatchNorm running statistics are not the defaults."""

    def make() -> nn.Module:
        torch.manual_seed(0)
        model = build()
        with torch.no_grad():
            model.train()(torch.rand(4, 3, size, size))
        return model.eval()

    return make


#: name -> (factory, input side)
ARCHITECTURES: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=3), 64),
    "densenet121": (lambda: torchvision.models.densenet121(num_classes=3), 64),
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(num_classes=3), 64),
    "efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(num_classes=3), 64),
    "convnext_tiny": (lambda: torchvision.models.convnext_tiny(num_classes=3), 64),
    "vit (torchvision, 32 px)": (_vit, 32),
    "swin_t": (lambda: torchvision.models.swin_t(num_classes=3), 64),
    "timm vit_tiny (depth 2)": (
        lambda: timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, patch_size=8, depth=2
        ),
        32,
    ),
    "timm convnext_atto": (lambda: timm.create_model("convnext_atto", pretrained=False, num_classes=3), 64),
}

EXPLAINERS: dict[str, Callable[[], Explainer]] = {
    "Saliency": Saliency,
    "InputXGradient": InputXGradient,
    "IntegratedGradients": lambda: IntegratedGradients(n_steps=4),
    "SmoothGrad": lambda: SmoothGrad(n_samples=2),
    "GradCAM": GradCAM,
    "GradCAMPlusPlus": GradCAMPlusPlus,
    "ScoreCAM": lambda: ScoreCAM(batch_size=256),
    "SIDU": lambda: SIDU(batch_size=256),
    "RISE": lambda: RISE(n_masks=16, grid_size=4, batch_size=32),
    "Sobol": lambda: Sobol(grid_size=4, n_design=8, batch_size=64),
    "Occlusion": lambda: Occlusion(window=16, stride=16),
    "AttentionRollout": AttentionRollout,
}

#: Combinations in the default run (fast, about 25 s on two CPU cores): every explainer on resnet18 (but the
#: per-channel Score-CAM and SIDU) and on both small ViTs, and Grad-CAM, Saliency and AttentionRollout everywhere.
#: The rest is marked slow (one forward per layer channel, or hundreds of perturbed images on a big model).
FAST_ARCHITECTURES = ("resnet18", "vit (torchvision, 32 px)", "timm vit_tiny (depth 2)")
FAST_EVERYWHERE = ("Saliency", "GradCAM", "AttentionRollout")


def is_slow(architecture: str, explainer: str) -> bool:
    """Whether a combination is left to the slow run."""
    if explainer in FAST_EVERYWHERE:
        return False
    if architecture == "resnet18":
        return explainer in ("ScoreCAM", "SIDU", "Sobol")
    return architecture not in FAST_ARCHITECTURES


#: Expected refusals: (architecture, explainer) -> a fragment of the error that says why.
REFUSED = {
    (architecture, "AttentionRollout"): "has no attention module"
    for architecture in (
        "resnet18",
        "densenet121",
        "mobilenet_v3_small",
        "efficientnet_b0",
        "convnext_tiny",
        "timm convnext_atto",
    )
} | {("swin_t", "AttentionRollout"): "shifted-window attention is not global"}


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def run_combination(architecture: str, explainer_name: str) -> tuple[str, str]:
    """``("works", seconds)`` or ``("refused", message)`` for one combination; raises on anything else."""
    build, size = ARCHITECTURES[architecture]
    model = _primed(build, size)()
    before = _snapshot(model)
    training = [m.training for m in model.modules()]
    inputs, target = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 2])
    start = time.process_time()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            maps = EXPLAINERS[explainer_name]()(model, inputs, target)
    except ValueError as error:
        return "refused", str(error)
    finally:
        after = model.state_dict()
        for name, value in before.items():
            assert torch.equal(value, after[name]), f"{architecture} / {explainer_name} changed {name}"
        assert [m.training for m in model.modules()] == training
        assert all(p.grad is None for p in model.parameters())
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert maps.shape == (2, 1, size, size), maps.shape
    assert maps.dtype == torch.float32 and bool(torch.isfinite(maps).all())
    return "works", f"{time.process_time() - start:.2f}"


def _cases() -> list:
    cases = []
    for architecture in ARCHITECTURES:
        for explainer in EXPLAINERS:
            marks = [pytest.mark.slow] if is_slow(architecture, explainer) else []
            cases.append(pytest.param(architecture, explainer, marks=marks, id=f"{architecture}-{explainer}"))
    return cases


@pytest.mark.parametrize(("architecture", "explainer"), _cases())
def test_architecture_explainer_matrix(architecture: str, explainer: str) -> None:
    outcome, detail = run_combination(architecture, explainer)
    if (architecture, explainer) in REFUSED:
        assert outcome == "refused", f"expected a refusal, got a map in {detail} s"
        assert REFUSED[architecture, explainer] in detail
    else:
        assert outcome == "works", detail


@pytest.mark.parametrize(
    "architecture",
    [pytest.param(a, marks=[] if a in FAST_ARCHITECTURES else [pytest.mark.slow]) for a in ARCHITECTURES],
)
def test_metrics_on_every_architecture(architecture: str) -> None:
    build, size = ARCHITECTURES[architecture]
    model = _primed(build, size)()
    before = _snapshot(model)
    generator = torch.Generator().manual_seed(2)
    inputs, target = torch.rand(2, 3, size, size, generator=generator), torch.tensor([1, 2])
    maps = torch.rand(2, 1, size, size, generator=generator)
    for metric in (
        DeletionAUC(steps=4, batch_size=16),
        InsertionAUC(steps=4, batch_size=16),
        MIFLIFFidelity(steps=4, batch_size=16),
        MuFidelity(grid_size=4, n_samples=8, batch_size=16),
    ):
        metric.update(model, inputs, maps, target)
        value = metric.compute()
        assert bool(torch.isfinite(value)), (architecture, type(metric).__name__)
    after = model.state_dict()
    assert all(torch.equal(value, after[name]) for name, value in before.items())


def markdown_table() -> str:
    """The matrix as a Markdown table (every combination, slow ones included)."""
    rows = ["| architecture | " + " | ".join(EXPLAINERS) + " |", "|---" * (len(EXPLAINERS) + 1) + "|"]
    reasons: dict[str, str] = {}
    for architecture in ARCHITECTURES:
        cells = []
        for explainer in EXPLAINERS:
            outcome, detail = run_combination(architecture, explainer)
            if outcome == "works":
                cells.append(f"works ({detail} s)")
            else:
                key = REFUSED.get((architecture, explainer), detail[:60])
                reasons.setdefault(key, detail)
                cells.append(f"refused: {key}")
        rows.append(f"| {architecture} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(markdown_table())
