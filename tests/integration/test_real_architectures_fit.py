"""Trainer.fit with ExplanationMonitor on torchvision resnet18 and a small ViT: training is bitwise untouched."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import pytest
import torch
from torch import Tensor, nn

from lightning_xai import ExplanationMonitor
from lightning_xai.explainers import AttentionRollout, GradCAM, Saliency
from lightning_xai.metrics import DeletionAUC

torchvision = pytest.importorskip("torchvision")


def _resnet() -> nn.Module:
    return torchvision.models.resnet18(num_classes=3)


def _vit() -> nn.Module:
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=3
    )
    nn.init.normal_(model.heads.head.weight, std=0.5)
    return model


class Classifier(L.LightningModule):
    def __init__(self, build: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.net = build()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _loss(self, batch: Any) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._loss(batch)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def _loader(seed: int) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.rand(16, 3, 32, 32, generator=generator), torch.randint(0, 3, (16,), generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=False)


def _fit(tmp_path: Any, build: Callable[[], nn.Module], callbacks: list) -> tuple[dict[str, Tensor], Tensor, list]:
    L.seed_everything(3, verbose=False)
    model = Classifier(build)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=2,
        limit_val_batches=1,
        deterministic=True,
        default_root_dir=str(tmp_path),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, _loader(0), _loader(1))
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return weights, torch.rand(3), sorted(trainer.callback_metrics)


@pytest.mark.parametrize(
    ("build", "explainers"),
    [
        (_resnet, {"GradCAM": GradCAM(), "Saliency": Saliency()}),
        (_vit, {"GradCAM": GradCAM(), "AttentionRollout": AttentionRollout()}),
    ],
    ids=["resnet18", "vit"],
)
def test_fit_with_the_monitor_leaves_weights_and_rng_bitwise_identical(tmp_path: Any, build, explainers) -> None:
    without, rand_without, _ = _fit(tmp_path / "a", build, [])
    monitor = ExplanationMonitor(
        explainers, metrics=[DeletionAUC(steps=4)], probe_size=4, save_global_maps=False, track_drift=False
    )
    with_monitor, rand_with, logged = _fit(tmp_path / "b", build, [monitor])
    for name in explainers:
        assert f"xai/{name}/deletion_auc" in logged, logged
    assert without.keys() == with_monitor.keys()
    for key in without:  # parameters and BatchNorm buffers (running statistics, num_batches_tracked)
        assert torch.equal(without[key], with_monitor[key]), f"{key} differs with the monitor attached"
    assert torch.equal(rand_without, rand_with), "the global RNG stream moved"
