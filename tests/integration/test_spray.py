"""SpRAy inside real Trainers: fit, validate, test, two validation runs, resume, multi-hot labels, the gate."""

from __future__ import annotations

import glob
import warnings
from itertools import pairwise
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torchvision
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from examples.digits import DigitsClassifier, DigitsDataModule
from examples.shortcut_digits import (
    Watermark,
    shortcut_gate,
    shortcut_monitor,
    spray_analysis,
    spray_gate,
    watermark_region,
)
from lightning_xai import ExplanationMonitor, FaithfulnessGate, FaithfulnessRegressionError, SpectralRelevanceAnalysis
from lightning_xai.explainers import Explainer, GradCAM, Saliency


def _trainer(tmp_path: Path, callbacks: list, epochs: int = 1, **kwargs: Any) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=TensorBoardLogger(str(tmp_path), name="tb"),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=3,
        deterministic=True,
        **kwargs,
    )


def _monitor(**kwargs: Any) -> ExplanationMonitor:
    return ExplanationMonitor(
        {"Saliency": Saliency()},
        max_samples=None,
        regions={"corner": watermark_region()},
        stages=("fit", "validate", "test"),
        analyses=[SpectralRelevanceAnalysis(num_labels=10, n_neighbors=5, max_per_label=32)],
        **kwargs,
    )


def _spray_keys(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if "spray" in k}


def test_fit_validate_test_twice_and_resume(tmp_path: Path) -> None:
    monitor = _monitor()
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    trainer = _trainer(tmp_path, [monitor, checkpoint], epochs=2)
    data = DigitsDataModule()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(DigitsClassifier(width=8), datamodule=data)
    fitted = _spray_keys(trainer)
    for label in range(10):
        assert 1 <= fitted[f"xai/Saliency/spray/n_clusters/{label}"] <= 8
        assert f"xai/Saliency/spray/eigengap/{label}" in fitted
    assert 0.0 < fitted["xai/Saliency/spray_relevance_mass_corner_max"] < 1.0
    analysis = monitor.analysis("Saliency", "spray")
    assert isinstance(analysis, SpectralRelevanceAnalysis)
    counts = torch.bincount(data.val_set.tensors[1], minlength=10).clamp(max=32)  # max_per_label=32
    assert {label: sum(last["cluster_sizes"]) for label, last in analysis.last.items()} == {
        label: int(count) for label, count in enumerate(counts)
    }

    # two validation runs in a row give the same clusters: each starts from empty states
    runs = []
    for _ in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.validate(trainer.lightning_module, datamodule=data, verbose=False)
        runs.append((_spray_keys(trainer), {k: v["cluster_sizes"] for k, v in analysis.last.items()}))
    assert runs[0] == runs[1]
    assert runs[0][1] == {k: v["cluster_sizes"] for k, v in analysis.last.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.test(trainer.lightning_module, datamodule=data, verbose=False)
    assert _spray_keys(trainer)["xai/Saliency/spray_relevance_mass_corner_max"] == pytest.approx(
        runs[0][0]["xai/Saliency/spray_relevance_mass_corner_max"]
    )

    files = glob.glob(str(tmp_path / "tb" / "**" / "events.out.tfevents.*"), recursive=True)
    images: set[str] = set()
    for file in files:
        events = EventAccumulator(file, size_guidance={"images": 0})
        events.Reload()
        images |= set(events.Tags()["images"])
    assert {f"xai/Saliency/spray/clusters/{label}" for label in range(10)} <= images

    # resume: the analysis's state travels in the checkpoint, and the resumed run logs again
    resumed_monitor = _monitor()
    resumed = _trainer(tmp_path, [resumed_monitor], epochs=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed.fit(DigitsClassifier(width=8), datamodule=data, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert "xai/Saliency/spray_relevance_mass_corner_max" in resumed.callback_metrics
    restored = _monitor()
    restored.load_state_dict(monitor.state_dict())
    assert restored.analysis("Saliency", "spray").last == analysis.last  # type: ignore[attr-defined]


class MultiLabelDigits(DigitsDataModule):
    """Digits with multi-hot labels: the class, plus label 10 ("odd digit")."""

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        images, labels = self.val_set.tensors
        multi_hot = torch.nn.functional.one_hot(labels, 11)
        multi_hot[:, 10] = labels % 2
        self.val_set = torch.utils.data.TensorDataset(images, multi_hot)


class TinyResNet(L.LightningModule):
    """torchvision's resnet18 (weights=None) on 1-channel 16 x 16 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torchvision.models.resnet18(weights=None, num_classes=10)
        self.net.conv1 = nn.Conv2d(1, 64, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val/acc", (self(batch[0]).argmax(1) == batch[1].argmax(1)).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def test_multi_hot_labels_on_a_torchvision_resnet(tmp_path: Path) -> None:
    monitor = ExplanationMonitor(
        {"GradCAM": GradCAM()},
        max_samples=None,
        stages=("validate",),
        analyses=[SpectralRelevanceAnalysis(num_labels=11, n_neighbors=5)],
    )
    trainer = _trainer(tmp_path, [monitor], limit_val_batches=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.validate(TinyResNet(), datamodule=MultiLabelDigits(), verbose=False)
    analysis = monitor.analysis("GradCAM", "spray")
    sizes = {label: sum(last["cluster_sizes"]) for label, last in analysis.last.items()}  # type: ignore[attr-defined]
    data = MultiLabelDigits()
    data.setup()
    counts = data.val_set.tensors[1][:256].sum(0)
    assert sizes == {label: int(counts[label]) for label in range(11)}
    assert "xai/GradCAM/spray/n_clusters/10" in trainer.callback_metrics


class InkExplainer(Explainer):
    """A map whose truth we built: each image's ink, ``x - min(x)``; a watermarked image's map sits partly on it."""

    def attribute(self, model: nn.Module, inputs: torch.Tensor, target: Any) -> torch.Tensor:
        return inputs - inputs.amin(dim=(1, 2, 3), keepdim=True)


def _gated_fit(tmp_path: Path, fraction: float | None, key: str) -> L.Trainer:
    L.seed_everything(0, verbose=False)
    monitor = ExplanationMonitor(
        {"Ink": InkExplainer()},
        num_labels=10,
        max_samples=None,
        regions={"watermark": watermark_region()},
        analyses=[spray_analysis()],
    )
    gate = FaithfulnessGate(f"xai/Ink/{key}", mode="min", threshold=0.15, min_epochs=1)
    trainer = _trainer(tmp_path, [monitor, gate], epochs=2)
    data = DigitsDataModule(transform=None if fraction is None else Watermark(fraction=fraction))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(DigitsClassifier(width=8), datamodule=data)
    return trainer


def test_spray_gate_fails_a_partly_marked_class_the_global_gate_passes(tmp_path: Path) -> None:
    # the 11 watermarked threes of 36 (30 %) put about a quarter of their ink on the corner, the others none
    missed = _gated_fit(tmp_path, 0.3, "global_relevance_mass_watermark_max")
    global_three = float(missed.callback_metrics["xai/Ink/global_relevance_mass_watermark/3"])
    spray_three = float(missed.callback_metrics["xai/Ink/spray_relevance_mass_watermark/3"])
    assert global_three < 0.15 < spray_three
    with pytest.raises(FaithfulnessRegressionError, match="spray_relevance_mass_watermark_max"):
        _gated_fit(tmp_path, 0.3, "spray_relevance_mass_watermark_max")
    clean = _gated_fit(tmp_path, None, "spray_relevance_mass_watermark_max")
    clean_max = float(clean.callback_metrics["xai/Ink/spray_relevance_mass_watermark_max"])
    assert clean_max < 0.15  # the gate passed it: digits' own ink reaches the corner a little
    print(f"ink maps: label 3 global {global_three:.3f}, SpRAy cluster {spray_three:.3f}; clean max {clean_max:.3f}")


@pytest.mark.slow
def test_spray_isolates_the_watermarked_threes_of_a_trained_model() -> None:
    from lightning_xai.functional import spectral_relevance

    region = watermark_region().bool()
    L.seed_everything(0, verbose=False)
    data = DigitsDataModule(transform=Watermark(fraction=0.3, contrast=0.1))  # the example's faint marked scans
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        deterministic=True,
    )
    model = DigitsClassifier()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=data)
    images, labels = data.val_set.tensors
    threes = images[labels == 3]
    marked = threes[:, 0][:, region].amin(dim=1) >= images.max() - 1e-6
    assert int(marked.sum()) == 11  # 30 % of the 36 validation threes
    model.eval()
    maps = Saliency()(model, threes, torch.full((threes.shape[0],), 3))  # the example's SpRAy gate explainer
    result = spectral_relevance(maps, n_neighbors=5)
    cluster = result.labels[marked].unique()
    # every marked three in one cluster, which holds few others (the README: 11 to 15 maps)
    assert cluster.numel() == 1 and 11 <= int((result.labels == cluster).sum()) <= 15


def _shortcut_run(
    tmp_path: Path, fraction: float | None
) -> tuple[FaithfulnessGate, FaithfulnessGate, Exception | None]:
    """The example's 5-epoch run (four validations an epoch) with both gates; PEPPR left out (it changes no map)."""
    L.seed_everything(0, verbose=False)
    monitor = shortcut_monitor(peppr_steps=None, spray=True)
    monitor.save_global_maps = False
    spray, global_gate = spray_gate(), shortcut_gate()
    trainer = L.Trainer(
        max_epochs=5,
        accelerator="cpu",
        logger=False,
        default_root_dir=str(tmp_path),
        callbacks=[monitor, global_gate, spray],
        val_check_interval=0.25,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        deterministic=True,
    )
    data = DigitsDataModule(transform=None if fraction is None else Watermark(fraction=fraction, contrast=0.1))
    error: Exception | None = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            trainer.fit(DigitsClassifier(), datamodule=data)
        except FaithfulnessRegressionError as caught:
            error = caught
    return spray, global_gate, error


def test_on_the_trained_model_the_spray_lift_gate_catches_faint_marked_threes_the_global_gate_misses(
    tmp_path: Path,
) -> None:
    # 30 % of the threes (11 of the 36 validation threes) are faint scans with the watermark: the example's --fraction
    spray, global_gate, error = _shortcut_run(tmp_path, 0.3)
    assert isinstance(error, FaithfulnessRegressionError)
    assert "spray_relevance_lift_watermark_max" in str(error)  # the SpRAy gate failed the run ...
    assert spray.history[-1]["epoch"] == 1  # ... in the first epoch it may act (min_epochs=1)
    assert max(entry["value"] for entry in global_gate.history) < 0.15  # the global-map gate never would have
    marked = [round(entry["value"], 2) for entry in spray.history]
    # the clean run: the same gate passes all 20 validations
    clean_spray, clean_global, clean_error = _shortcut_run(tmp_path, None)
    assert clean_error is None and len(clean_spray.history) == 20 and len(clean_global.history) == 20
    clean = [round(entry["value"], 2) for entry in clean_spray.history]
    # one validation's lift is noisy (the clean run reaches 1.63 once on some CPUs), two in a row are not, hence the
    # gate's patience=1: the marked run ends on two validations above the threshold, the clean run has no such pair
    assert min(marked[-2:]) > 1.55
    assert max(min(pair) for pair in pairwise(clean)) < 1.45
    print(f"SpRAy lift, marked run {marked}; clean run max {max(clean)} of {clean}")
