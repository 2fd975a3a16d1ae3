"""Meaningful and extremal perturbation inside an ExplanationMonitor, in fit, validate and test, and on torchvision."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from examples.digits import DigitsClassifier, DigitsDataModule
from lightning_xai import ExplanationMonitor
from lightning_xai.explainers import ExtremalPerturbation, MeaningfulPerturbation
from lightning_xai.metrics import DeletionAUC
from tests.integration.test_explanation_monitor import _events


def _monitor() -> ExplanationMonitor:
    return ExplanationMonitor(
        {
            "Extremal": ExtremalPerturbation(areas=(0.1, 0.2), steps=8),
            "Meaningful": MeaningfulPerturbation(steps=8),
        },
        metrics=[DeletionAUC(steps=8)],
        probe_size=4,
        stages=("fit", "validate", "test"),
    )


def _trainer(tmp_path: Any, monitor: ExplanationMonitor) -> L.Trainer:
    return L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=TensorBoardLogger(str(tmp_path), name="tb"),
        callbacks=[monitor],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=2,
        limit_val_batches=1,
        limit_test_batches=1,
        deterministic=True,
    )


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def test_monitored_fit_validate_and_test_leave_training_untouched(tmp_path: Any) -> None:
    """Same seed, same weights and RNG stream with and without the monitor; every stage logs both explainers."""
    L.seed_everything(3, verbose=False)
    plain = DigitsClassifier(width=8)
    L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=2,
        limit_val_batches=1,
        deterministic=True,
    ).fit(plain, datamodule=DigitsDataModule(image_size=8, seed=3))
    plain_rng = torch.rand(3)

    L.seed_everything(3, verbose=False)
    model = DigitsClassifier(width=8)
    trainer = _trainer(tmp_path, _monitor())
    trainer.fit(model, datamodule=DigitsDataModule(image_size=8, seed=3))
    monitored_rng = torch.rand(3)
    for key, value in _weights(plain).items():
        assert torch.equal(value, _weights(model)[key]), key
    assert torch.equal(plain_rng, monitored_rng)
    for name in ("Extremal", "Meaningful"):
        assert torch.isfinite(trainer.callback_metrics[f"xai/{name}/deletion_auc"])
    assert {"xai/Extremal/heatmaps", "xai/Meaningful/heatmaps"} <= set(_events(tmp_path).Tags()["images"])

    for stage in ("validate", "test"):
        getattr(trainer, stage)(model, datamodule=DigitsDataModule(image_size=8, seed=3))
        assert torch.isfinite(trainer.callback_metrics["xai/Extremal/deletion_auc"]), stage
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.slow
def test_torchvision_resnet18_at_32_pixels() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    images = torch.randn(2, 3, 32, 32)
    target = torch.tensor([1, 4])
    masks = ExtremalPerturbation(steps=6).masks(model, images, target)
    assert masks.shape == (2, 3, 32, 32)
    assert torch.isfinite(masks).all() and float(masks.min()) >= 0 and float(masks.max()) <= 1
    saliency = MeaningfulPerturbation(steps=6)(model, images, target)
    assert saliency.shape == (2, 1, 32, 32)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_clip_monitor_with_perturbation_masks(tmp_path: Any) -> None:
    """On the clip example's classifier, a monitored fit and validate log both explainers' voxel deletion AUC."""
    from examples.video_clips import ClipClassifier, ClipsDataModule

    L.seed_everything(0, verbose=False)
    monitor = ExplanationMonitor(
        {
            "Extremal": ExtremalPerturbation(areas=(0.1,), steps=4),
            "Meaningful": MeaningfulPerturbation(steps=4),
        },
        metrics=[DeletionAUC(steps=4)],
        probe_size=2,
        stages=("fit", "validate"),
    )
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        callbacks=[monitor],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=2,
        limit_val_batches=1,
        deterministic=True,
    )
    model = ClipClassifier(width=4)
    data = ClipsDataModule(batch_size=8, train_size=16, val_size=8)
    trainer.fit(model, datamodule=data)
    trainer.validate(model, datamodule=data)
    for name in ("Extremal", "Meaningful"):
        assert torch.isfinite(trainer.callback_metrics[f"xai/{name}/deletion_auc"]), name
    assert all(p.grad is None for p in model.parameters())
