"""ConceptAnalysis in a real Trainer: fit, validate, test, resume; table, grid and drift read back from TensorBoard."""

from __future__ import annotations

import glob
import io
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib.pyplot as plt
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from examples.digits import DigitsClassifier, DigitsDataModule
from lightning_xai import LRP, ExplanationMonitor
from lightning_xai.callbacks.analyses import ConceptAnalysis

TAG = "xai/LRP"


def _monitor() -> ExplanationMonitor:
    analysis = ConceptAnalysis(layer="features.4", num_labels=10, top_k=3, grid_samples=2)
    return ExplanationMonitor(
        {"LRP": LRP()}, probe_size=4, max_samples=24, stages=("fit", "validate", "test"), analyses=[analysis]
    )


def _trainer(root: Path, callbacks: list, epochs: int, **kwargs: Any) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=TensorBoardLogger(str(root), name="tb", version=0),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=3,
        limit_val_batches=2,
        limit_test_batches=2,
        deterministic=True,
        **kwargs,
    )


def _events(root: Path) -> list[EventAccumulator]:
    accumulators = []
    for path in sorted(glob.glob(str(root / "tb" / "**" / "events.out.tfevents.*"), recursive=True)):
        accumulator = EventAccumulator(path, size_guidance={"images": 0, "scalars": 0, "tensors": 0})
        accumulator.Reload()
        accumulators.append(accumulator)
    return accumulators


def _texts(accumulators: list[EventAccumulator], tag: str) -> list[str]:
    return [
        event.tensor_proto.string_val[0].decode()
        for accumulator in accumulators
        if tag in accumulator.Tags()["tensors"]
        for event in accumulator.Tensors(tag)
    ]


def _scalars(accumulators: list[EventAccumulator], tag: str) -> list[float]:
    return [e.value for a in accumulators if tag in a.Tags()["scalars"] for e in a.Scalars(tag)]


def _fit_weights(root: Path, callbacks: list) -> dict[str, torch.Tensor]:
    L.seed_everything(3, verbose=False)
    model = DigitsClassifier(width=8)
    _trainer(root, callbacks, epochs=2, enable_checkpointing=False).fit(
        model, datamodule=DigitsDataModule(image_size=8)
    )
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def test_fit_validate_test_log_tables_grids_and_drift_and_leave_training_untouched(tmp_path: Path) -> None:
    warnings.simplefilter("ignore")
    without = _fit_weights(tmp_path / "plain", [])
    monitor = _monitor()
    with_monitor = _fit_weights(tmp_path / "monitored", [monitor])
    for key, value in without.items():
        assert torch.equal(value, with_monitor[key]), f"{key} differs with LRP and ConceptAnalysis attached"
    trainer = _trainer(tmp_path / "monitored", [monitor], epochs=2, enable_checkpointing=False)
    model = DigitsClassifier(width=8)
    model.load_state_dict(with_monitor)
    datamodule = DigitsDataModule(image_size=8)
    trainer.validate(model, datamodule=datamodule, verbose=False)
    trainer.validate(model, datamodule=datamodule, verbose=False)
    drift_after_validate = float(trainer.callback_metrics[f"{TAG}/concept_drift"])
    trainer.test(model, datamodule=datamodule, verbose=False)

    events = _events(tmp_path / "monitored")
    tables = _texts(events, f"{TAG}/concepts/top/text_summary")
    assert len(tables) == 5  # 2 fit epochs, 2 validation runs, 1 test run
    for table in tables:
        lines = table.splitlines()
        assert lines[0] == "| label | samples | concept 1 | concept 2 | concept 3 |"
        assert len(lines) >= 3 and all(line.count("ch ") == 3 for line in lines[2:])
    images = [
        e
        for a in events
        if f"{TAG}/concepts/heatmaps" in a.Tags()["images"]
        for e in a.Images(f"{TAG}/concepts/heatmaps")
    ]
    assert len(images) == 5
    picture = plt.imread(io.BytesIO(images[-1].encoded_image_string), format="png")
    assert picture.shape[0] > 100 and picture.shape[1] > 200
    plt.imsave(tmp_path / "concepts_grid.png", picture)
    # drift from the second monitored epoch on: 1 in fit, then each later run against the one before
    drift = _scalars(events, f"{TAG}/concept_drift")
    assert len(drift) == 4 and all(-1.0 <= value <= 1.0 for value in drift)
    # the two validation runs see the same weights and samples: their concept vectors are identical
    assert drift_after_validate == 1.0
    assert len(_scalars(events, f"{TAG}/concept_drift/1")) == 4  # a label seen in every run


def test_resume_continues_the_drift_from_the_checkpointed_epoch(tmp_path: Path) -> None:
    warnings.simplefilter("ignore")
    L.seed_everything(5, verbose=False)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = _monitor()
    _trainer(tmp_path / "a", [first, checkpoint], epochs=2).fit(
        DigitsClassifier(width=8), datamodule=DigitsDataModule(image_size=8)
    )
    saved = first.analysis("LRP", "concepts").state_dict()
    assert saved["previous"] is not None and saved["previous"].shape == (10, 16)

    resumed = _monitor()
    trainer = _trainer(tmp_path / "b", [resumed, ModelCheckpoint(dirpath=tmp_path / "ckpt2")], epochs=3)
    # a fresh monitor would have no previous epoch: only the checkpointed state lets the first resumed epoch log drift
    trainer.fit(
        DigitsClassifier(width=8),
        datamodule=DigitsDataModule(image_size=8),
        ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"),
    )
    assert trainer.current_epoch == 3
    drift = _scalars(_events(tmp_path / "b"), f"{TAG}/concept_drift")
    assert len(drift) == 1 and -1.0 <= drift[0] <= 1.0
    assert not torch.equal(resumed.analysis("LRP", "concepts").state_dict()["previous"], saved["previous"])
