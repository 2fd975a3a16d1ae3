"""End to end on the shortcut digits: global maps find the watermark; the gate fails that run, passes the clean one."""

from __future__ import annotations

import glob
import io
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from examples.digits import DigitsClassifier, DigitsDataModule
from examples.shortcut_digits import Watermark, shortcut_gate, shortcut_monitor
from lightning_xai import ExplanationMonitor, FaithfulnessRegressionError, visualize
from lightning_xai.visualize import ALERT_COLOR

WATERMARKED = 3


def _fit(tmp_path: Path, watermark: bool, callbacks: list, epochs: int = 3) -> L.Trainer:
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=TensorBoardLogger(str(tmp_path), name="tb"),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        deterministic=True,
    )
    data = DigitsDataModule(transform=Watermark(WATERMARKED) if watermark else None)
    trainer.fit(DigitsClassifier(), datamodule=data)
    return trainer


def _masses(trainer: L.Trainer, explainer: str) -> torch.Tensor:
    key = f"xai/{explainer}/global_relevance_mass_watermark/"
    return torch.tensor([float(trainer.callback_metrics[f"{key}{label}"]) for label in range(10)])


@pytest.fixture(scope="module")
def watermarked_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[L.Trainer, ExplanationMonitor, Path]:
    tmp_path = tmp_path_factory.mktemp("watermarked")
    monitor = shortcut_monitor(peppr_steps=8)
    return _fit(tmp_path, True, [monitor]), monitor, tmp_path


def test_watermark_class_global_map_sits_on_the_watermark(watermarked_run: Any) -> None:
    trainer, monitor, _ = watermarked_run
    for explainer in ("InputXGradient", "GradCAM"):
        masses = _masses(trainer, explainer)
        others = torch.cat([masses[:WATERMARKED], masses[WATERMARKED + 1 :]])
        assert masses[WATERMARKED] > 2.0 * others.mean(), f"{explainer}: {masses.tolist()}"
    result = monitor.global_maps["InputXGradient"]
    assert result["per_label"].shape == (10, 1, 16, 16) and int(result["count"].sum()) == 360


def test_global_outputs_reach_tensorboard_checkpoint_and_disk(watermarked_run: Any) -> None:
    trainer, monitor, tmp_path = watermarked_run
    files = glob.glob(str(tmp_path / "tb" / "**" / "events.out.tfevents.*"), recursive=True)
    events = EventAccumulator(files[0], size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    images = set(events.Tags()["images"])
    for key in ("per_label", "overall", "std"):
        assert f"xai/GradCAM/global/{key}" in images
    assert "xai/GradCAM/peppr_curve" in images
    metrics = trainer.callback_metrics
    assert "xai/GradCAM/peppr/erasing_auc" in metrics and "xai/GradCAM/drift_global" in metrics
    assert "xai/GradCAM/drift_probe" in metrics
    saved = sorted(glob.glob(str(tmp_path / "tb" / "**" / "global_maps" / "GradCAM_epoch=*.pt"), recursive=True))
    assert len(saved) == 3
    last = torch.load(saved[-1])
    assert torch.equal(last["per_label"], monitor.global_maps["GradCAM"]["per_label"])
    state = monitor.state_dict()
    restored = shortcut_monitor(peppr_steps=8)
    restored.load_state_dict(state)
    assert torch.equal(restored.global_maps["GradCAM"]["overall"], monitor.global_maps["GradCAM"]["overall"])
    global_maps = next(a for a in restored.analyses["GradCAM"] if a.name == "global_maps")
    assert global_maps.drift.has_previous


def test_gate_fails_the_shortcut_run_and_pictures_the_failing_label(tmp_path: Path) -> None:
    with pytest.raises(FaithfulnessRegressionError, match="global_relevance_mass_watermark_max"):
        _fit(tmp_path, True, [shortcut_monitor(peppr_steps=None), shortcut_gate()])
    files = glob.glob(str(tmp_path / "tb" / "**" / "events.out.tfevents.*"), recursive=True)
    events = EventAccumulator(files[0], size_guidance={"images": 0})
    events.Reload()
    tag = "xai/gate/InputXGradient/global_relevance_mass_watermark_max/global_maps"
    assert tag in events.Tags()["images"] and not any("xai/gate/xai/" in t for t in events.Tags()["images"])
    page = torch.from_numpy(
        np.asarray(Image.open(io.BytesIO(events.Images(tag)[-1].encoded_image_string)).convert("RGB")).copy()
    )
    red = torch.tensor([round(c * 255) for c in ALERT_COLOR], dtype=torch.uint8)
    tile, pad, caption = 96, 4, visualize._CAPTION  # 16 x 16 maps upscaled 6 times, 5 tiles a row
    top = visualize._TITLE + pad + caption
    framed = [
        label
        for label in range(10)
        if torch.equal(page[top + (label // 5) * (tile + pad + caption), pad + (label % 5) * (tile + pad) + 48], red)
    ]
    assert framed == [WATERMARKED]  # the top edge of the watermarked label's tile, and no other, is red


def test_gate_passes_the_clean_run(tmp_path: Path) -> None:
    trainer = _fit(tmp_path, False, [shortcut_monitor(peppr_steps=None), shortcut_gate()])
    assert trainer.current_epoch == 3 and not trainer.should_stop
    assert float(trainer.callback_metrics["xai/InputXGradient/global_relevance_mass_watermark_max"]) < 0.15


def test_resumed_monitor_keeps_its_probe(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    first = shortcut_monitor(max_samples=64, peppr_steps=None)
    _fit(tmp_path, True, [first, checkpoint], epochs=1)
    resumed = shortcut_monitor(max_samples=64, peppr_steps=None)
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        default_root_dir=str(tmp_path),
        callbacks=[resumed],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(
        DigitsClassifier(),
        datamodule=DigitsDataModule(transform=Watermark(WATERMARKED)),
        ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"),
    )
    assert first._probe_inputs is not None and resumed._probe_inputs is not None
    assert torch.equal(first._probe_inputs, resumed._probe_inputs)
    assert "xai/GradCAM/drift_probe" in trainer.callback_metrics  # compared with the epoch before the checkpoint
