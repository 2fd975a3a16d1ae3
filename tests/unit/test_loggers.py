"""Pictures reach every logger with a backend, and can be read back from what each one wrote to disk."""

from __future__ import annotations

import glob
import io
import os
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger
from PIL import Image

from examples.digits import DigitsClassifier, DigitsDataModule
from lightning_xai import ExplanationMonitor
from lightning_xai.explainers import Saliency
from lightning_xai.loggers import PictureLogger, PictureLoggerNotice
from lightning_xai.metrics import DeletionAUC

#: tags one monitored epoch of the run below logs as pictures
EXPECTED = ("xai/Saliency/heatmaps", "xai/Saliency/deletion_auc_curve", "xai/Saliency/global/per_label")


def _fit(logger: Any, root: Path) -> L.Trainer:
    L.seed_everything(0, verbose=False)
    monitor = ExplanationMonitor(
        Saliency(), metrics=[DeletionAUC(steps=4)], probe_size=4, num_labels=10, max_samples=32, track_drift=False
    )
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        default_root_dir=str(root),  # global maps are saved under the log dir, here for loggers without one
        logger=logger,
        callbacks=[monitor],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=2,
        limit_val_batches=1,
    )
    trainer.fit(DigitsClassifier(width=4), datamodule=DigitsDataModule(image_size=8))
    return trainer


def _expected_size(tag: str) -> tuple[int, int] | None:
    """Width and height of what the monitor draws for ``tag`` (the curve figure is 4.5 x 3.2 inches at 100 dpi)."""
    return (450, 320) if tag.endswith("_curve") else None


def _check(images: dict[str, Image.Image]) -> None:
    for tag in EXPECTED:
        assert tag in images, f"{tag} missing; got {sorted(images)}"
        image = images[tag]
        expected = _expected_size(tag)
        if expected is not None:
            assert image.size == expected
        pixels = np.asarray(image.convert("RGB"))
        assert pixels.shape[0] > 100 and pixels.shape[1] > 300 and pixels.std() > 10  # a picture, not a blank


def test_tensorboard_event_files_hold_the_images(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    _fit(logger, tmp_path)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    images = {
        tag: Image.open(io.BytesIO(events.Images(tag)[-1].encoded_image_string)) for tag in events.Tags()["images"]
    }
    _check(images)


def test_wandb_offline_run_files_hold_the_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="lightning_xai_test")
    try:
        trainer = _fit(logger, tmp_path)
        PictureLogger(trainer, owner="Test").text("xai/gate/GradCAM/insertion_auc", "gate report", step=9)
    finally:
        wandb.finish()
    runs = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
    assert len(runs) == 1
    media = Path(runs[0]) / "files" / "media" / "images"
    files = [Path(p) for p in glob.glob(str(media / "**" / "*.png"), recursive=True)]
    images = {}
    for path in files:  # media/images/<key>_<step>_<hash>.png, the key's '/' kept as folders
        key = str(path.relative_to(media).parent / path.name.rsplit("_", 2)[0])
        images[key.replace(os.sep, "/")] = Image.open(path)
    _check(images)
    tables = glob.glob(str(Path(runs[0]) / "files" / "media" / "table" / "**" / "*.table.json"), recursive=True)
    assert len(tables) == 1 and "gate report" in Path(tables[0]).read_text()


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One SQLite tracking store with local artefacts for the module (creating its schema takes seconds)."""
    pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("mlflow")
    return {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "artifact_location": (root / "artifacts").as_uri()}


def test_mlflow_run_artifacts_hold_the_images(tmp_path: Path, mlflow_store: dict[str, str]) -> None:
    logger = MLFlowLogger(experiment_name="lightning_xai_test", **mlflow_store)
    _fit(logger, tmp_path)
    client = logger.experiment
    names = [info.path for info in client.list_artifacts(logger.run_id, "images")]
    images = {}
    for name in names:
        if name.endswith(".png"):  # images/<key with / as ~>+step+<step>+timestamp+...png
            key = Path(name).name.split("+step+")[0].replace("~", "/")
            local = client.download_artifacts(logger.run_id, name, str(tmp_path / "download"))
            images[key] = Image.open(local)
    _check(images)


def test_text_reaches_mlflow_and_other_loggers_get_a_notice(
    tmp_path: Path, mlflow_store: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    logger = MLFlowLogger(experiment_name="texts", **mlflow_store)
    trainer = L.Trainer(logger=[logger, CSVLogger(tmp_path)], enable_progress_bar=False, enable_model_summary=False)
    pictures = PictureLogger(trainer, owner="Test")
    assert pictures.active
    pictures.text("xai/gate/GradCAM/insertion_auc", "| a | b |", step=3)
    pictures.image("xai/odd name!/x", torch.rand(3, 8, 8), step=3)  # characters MLflow refuses are replaced
    client = logger.experiment
    (folder,) = client.list_artifacts(logger.run_id, "text/xai/gate/GradCAM")
    (report,) = client.list_artifacts(logger.run_id, folder.path)
    assert report.path.endswith("step=3.md")
    assert Path(client.download_artifacts(logger.run_id, report.path, str(tmp_path / "d"))).read_text() == "| a | b |"
    assert any("odd name_~x" in info.path for info in client.list_artifacts(logger.run_id, "images"))
    with caplog.at_level("INFO"):
        PictureLoggerNotice("Test").maybe_notify(trainer)
    assert "CSVLogger" in caplog.text and "MLFlowLogger" in caplog.text


def test_tensorboard_image_is_the_pixels_given_as_uint8_or_float(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = L.Trainer(logger=logger, enable_progress_bar=False, enable_checkpointing=False)
    pictures = PictureLogger(trainer)
    generator = torch.Generator().manual_seed(0)
    as_bytes = torch.randint(0, 256, (3, 17, 23), generator=generator, dtype=torch.uint8)
    as_floats = torch.rand(3, 9, 5, generator=generator)
    pictures.image("bytes", as_bytes, 3)
    pictures.image("floats", as_floats, 4)
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    (read_bytes,), (read_floats,) = events.Images("bytes"), events.Images("floats")
    assert read_bytes.step == 3 and read_floats.step == 4
    pixels = np.asarray(Image.open(io.BytesIO(read_bytes.encoded_image_string)).convert("RGB"))
    assert np.array_equal(pixels, as_bytes.permute(1, 2, 0).numpy())
    pixels = np.asarray(Image.open(io.BytesIO(read_floats.encoded_image_string)).convert("RGB"))
    assert np.array_equal(pixels, (as_floats * 255).round().byte().permute(1, 2, 0).numpy())  # as add_image rounds


def test_png_bytes_decode_to_the_same_pixels_in_pillow() -> None:
    from lightning_xai.loggers import png_bytes
    from lightning_xai.visualize import heatmap_grid

    grid = heatmap_grid(torch.rand(3, 1, 8, 8), torch.randn(3, 1, 8, 8), labels=torch.arange(3), dtype=torch.uint8)
    noise = torch.randint(0, 256, (1, 31, 3), dtype=torch.uint8).numpy()  # one row: nothing above to subtract
    for pixels in (grid.permute(1, 2, 0).numpy(), noise):
        decoded = Image.open(io.BytesIO(png_bytes(pixels)))
        assert decoded.mode == "RGB" and np.array_equal(np.asarray(decoded), pixels)
    with pytest.raises(ValueError, match=r"`image` must be an \(H, W, 3\) uint8 array"):
        png_bytes(np.zeros((2, 2, 3), dtype=np.float32))


def test_tensorboard_images_read_back_exactly_with_valid_records(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    pictures = PictureLogger(L.Trainer(logger=logger, enable_progress_bar=False, enable_checkpointing=False))
    image = torch.randint(0, 256, (3, 40, 70), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    pictures.image("picture", image, 1)
    logger.experiment.add_scalar("scalar", 2.5, 1)  # a scalar through the same record writer
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()  # the reader checks every record's CRC
    assert events.Scalars("scalar")[0].value == 2.5
    decoded = Image.open(io.BytesIO(events.Images("picture")[0].encoded_image_string))
    assert np.array_equal(np.asarray(decoded), image.permute(1, 2, 0).numpy())
