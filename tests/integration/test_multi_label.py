"""Multi-label heads end to end: two planted markers, each deciding one label, explained per positive label."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_xai import ExplanationMonitor
from lightning_xai.explainers import RISE, InputXGradient, Saliency
from lightning_xai.metrics import DeletionAUC, InsertionAUC

SIZE = 16
MARKERS = {"a": (slice(1, 5), slice(1, 5)), "b": (slice(11, 15), slice(11, 15))}


def marker_region(name: str) -> Tensor:
    mask = torch.zeros(SIZE, SIZE)
    mask[MARKERS[name]] = 1.0
    return mask


def planted_markers(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Noise images; marker "a" (label 0) and marker "b" (label 1) each present with probability 1/2."""
    generator = torch.Generator().manual_seed(seed)
    images = 0.3 * torch.rand(n, 1, SIZE, SIZE, generator=generator)
    labels = (torch.rand(n, 2, generator=generator) < 0.5).long()
    for index, name in enumerate(MARKERS):
        rows, cols = MARKERS[name]
        images[labels[:, index].bool(), 0, rows, cols] = 1.0
    return images, labels


class MultiLabelNet(L.LightningModule):
    """A small CNN with one logit per label, trained with binary cross-entropy."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(8 * SIZE * SIZE, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.binary_cross_entropy_with_logits(self(x), y.float())

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val/acc", ((self(x) > 0).long() == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def _loaders() -> tuple[DataLoader, DataLoader]:
    train, val = planted_markers(512, seed=0), planted_markers(128, seed=1)
    return DataLoader(TensorDataset(*train), batch_size=64, shuffle=True), DataLoader(
        TensorDataset(*val), batch_size=64
    )


@pytest.fixture(scope="module")
def trained() -> MultiLabelNet:
    L.seed_everything(0, verbose=False)
    model = MultiLabelNet()
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, *_loaders())
    return model


def _validate(model: MultiLabelNet, monitor: ExplanationMonitor, tmp_path: Path) -> dict[str, Any]:
    trainer = L.Trainer(
        accelerator="cpu", logger=False, callbacks=[monitor], enable_progress_bar=False, default_root_dir=str(tmp_path)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.validate(model, _loaders()[1], verbose=False)
    return {key: float(value) for key, value in trainer.callback_metrics.items()}


@pytest.mark.parametrize("target", ["positive_labels", "predicted_labels"])
def test_each_label_global_map_sits_on_its_own_marker(trained: MultiLabelNet, tmp_path: Path, target: str) -> None:
    rise = RISE(n_masks=256, grid_size=4)
    monitor = ExplanationMonitor(
        {"IxG": InputXGradient(channel_reduction="abs_sum"), "RISE": rise},
        metrics=[DeletionAUC(steps=8), InsertionAUC(steps=8)],
        target=target,  # type: ignore[arg-type]
        stages=("validate",),
        max_samples=None,
        num_labels=2,
        regions={name: marker_region(name) for name in MARKERS},
        probe_size=8,
        peppr_steps=8,
        save_global_maps=False,
    )
    # each label is scored by its own sigmoid: the monitor's copies say so, the user's objects are left as given
    assert [metric.score for metric in monitor.metrics["IxG"]] == ["sigmoid", "sigmoid"]
    assert monitor.explainers["RISE"].score == "sigmoid" and rise.score == "probability"
    logged = _validate(trained, monitor, tmp_path)
    for name in ("IxG", "RISE"):  # faithful maps: deleting their top pixels kills the label, inserting them restores it
        assert logged[f"xai/{name}/deletion_auc"] + 0.3 < logged[f"xai/{name}/insertion_auc"]
    assert logged["xai/IxG/peppr/erasing_auc"] < logged["xai/IxG/peppr/random_erasing_auc"]
    assert logged["xai/RISE/global_relevance_mass_a/0"] > logged["xai/RISE/global_relevance_mass_a/1"]
    assert logged["val/acc"] > 0.95
    # each marker is 16 of 256 pixels (6 %): the label it decides puts most of its global mass there
    assert logged["xai/IxG/global_relevance_mass_a/0"] > 0.5 > logged["xai/IxG/global_relevance_mass_a/1"]
    assert logged["xai/IxG/global_relevance_mass_b/1"] > 0.5 > logged["xai/IxG/global_relevance_mass_b/0"]
    counts = monitor.global_maps["IxG"]["count"]
    positives = planted_markers(128, seed=1)[1].sum(dim=0).double()
    if target == "positive_labels":  # one explanation per (sample, positive label)
        assert torch.equal(counts, positives)
    else:  # the model predicts nearly every label right
        assert (counts - positives).abs().max() <= 0.05 * positives.max()


def test_probe_drift_compares_the_same_sample_label_rows(trained: MultiLabelNet, tmp_path: Path) -> None:
    monitor = ExplanationMonitor(
        Saliency(), target="predicted_labels", stages=("validate",), probe_size=6, save_global_maps=False
    )
    first = _validate(trained, monitor, tmp_path)
    assert "xai/Saliency/drift_probe" not in first
    again = _validate(trained, monitor, tmp_path)  # same model, same probe rows: the ranking has not moved
    assert again["xai/Saliency/drift_probe"] == pytest.approx(1.0)
    drift = monitor.analysis("Saliency", "drift_probe")
    assert drift.keys is not None and drift.keys.shape[0] == 2
    with torch.no_grad():  # flip the head: other labels are predicted, so other rows, and a new reference
        trained.head.weight.neg_()
        trained.head.bias.neg_()
    try:
        flipped = _validate(trained, monitor, tmp_path)
    finally:
        with torch.no_grad():
            trained.head.weight.neg_()
            trained.head.bias.neg_()
    assert "xai/Saliency/drift_probe" not in flipped


def test_label_mode_refuses_multi_hot_labels(trained: MultiLabelNet, tmp_path: Path) -> None:
    monitor = ExplanationMonitor(Saliency(), target="label", stages=("validate",), probe_size=4)
    with pytest.raises(ValueError, match="use target='positive_labels'"):
        _validate(trained, monitor, tmp_path)
