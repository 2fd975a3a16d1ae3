"""Regression tests for the faults found when the monitor and the gate were tried as users' setups would."""

from __future__ import annotations

import glob
import os
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from examples.digits import DigitsClassifier, DigitsDataModule
from lightning_xai import ExplanationMonitor, FaithfulnessGate, FaithfulnessRegressionError
from lightning_xai.callbacks.analyses import Analysis, EpochContext, ExplainedBatch
from lightning_xai.explainers import GradCAM, Saliency
from lightning_xai.metrics import (
    ROAD,
    DeletionAUC,
    Infidelity,
    InsertionAUC,
    MaxSensitivity,
    MIFLIFFidelity,
    MuFidelity,
)

SIZE = 8


def _trainer(tmp_path: Any, callbacks: list, epochs: int = 1, **kwargs: Any) -> L.Trainer:
    options: dict[str, Any] = {
        "max_epochs": epochs,
        "accelerator": "cpu",
        "logger": TensorBoardLogger(str(tmp_path), name="tb"),
        "callbacks": callbacks,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_train_batches": 2,
        "limit_val_batches": 1,
        "limit_test_batches": 1,
    }
    options.update(kwargs)
    return L.Trainer(**options)


def _quiet(function: Any, *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


class EpochRecorder(Analysis):
    """Records the epoch of every monitored run."""

    name = "epochs"

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def update(self, batch: ExplainedBatch) -> None:
        pass

    def log(self, context: EpochContext) -> None:
        self.epochs.append(context.trainer.current_epoch)


ALL_METRICS = [
    DeletionAUC(steps=4),
    InsertionAUC(steps=4),
    MIFLIFFidelity(steps=4),
    ROAD(percentages=(0.2, 0.5)),
    MuFidelity(grid_size=4, n_samples=8),
    Infidelity(n_samples=4),
    MaxSensitivity(n_samples=2),
]


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_every_metric_runs_in_validate_and_test_twice(tmp_path: Path, stage: str) -> None:
    # Regression: reset() ran inside Lightning's inference mode and update() outside it, so the curve metrics
    # crashed with "Inplace update to inference tensor outside InferenceMode" in trainer.validate()/test().
    monitor = ExplanationMonitor(
        Saliency(), metrics=ALL_METRICS, probe_size=4, stages=("fit", "validate", "test"), regions={"corner": _corner()}
    )
    trainer = _trainer(tmp_path, [monitor])
    model = DigitsClassifier(width=8)
    data = DigitsDataModule(image_size=SIZE)
    _quiet(trainer.fit, model, datamodule=data)
    first = dict(trainer.callback_metrics)
    for _ in range(2):
        run = trainer.validate if stage == "validate" else trainer.test
        _quiet(run, model, datamodule=data, verbose=False)
        for metric in ALL_METRICS:
            key = f"xai/Saliency/{metric.name}"
            assert key in trainer.callback_metrics and torch.isfinite(trainer.callback_metrics[key])
            # the same probe and weights give the same numbers again: no state carried over between runs
            torch.testing.assert_close(trainer.callback_metrics[key], first[key], rtol=1e-5, atol=1e-6)


def _corner() -> Tensor:
    mask = torch.zeros(SIZE, SIZE)
    mask[:3, :3] = 1
    return mask


def test_every_logged_mean_has_its_stderr_under_the_documented_key(tmp_path: Path) -> None:
    # Regression: the region's standard error was logged as relevance_mass_stderr_<region>, so a confidence gate on
    # relevance_mass_<region> could not find <key>_stderr.
    monitor = ExplanationMonitor(
        Saliency(), metrics=[DeletionAUC(steps=4)], probe_size=4, regions={"corner": _corner()}, track_drift=False
    )
    trainer = _trainer(tmp_path, [monitor])
    _quiet(trainer.fit, DigitsClassifier(width=8), datamodule=DigitsDataModule(image_size=SIZE))
    keys = set(trainer.callback_metrics)
    assert {"xai/Saliency/relevance_mass_corner", "xai/Saliency/relevance_mass_corner_stderr"} <= keys
    assert "xai/Saliency/relevance_mass_stderr_corner" not in keys
    means = {"xai/Saliency/deletion_auc", "xai/Saliency/relevance_mass_corner"}
    assert all(f"{key}_stderr" in keys for key in means)
    gate = FaithfulnessGate("xai/Saliency/relevance_mass_corner", mode="min", threshold=1.0, confidence=0.95)
    trainer = _trainer(tmp_path / "gate", [monitor, gate])
    _quiet(trainer.fit, DigitsClassifier(width=8), datamodule=DigitsDataModule(image_size=SIZE))
    assert gate.history and gate.history[0]["stderr"] > 0


def test_float_labels_are_refused_not_truncated(tmp_path: Path) -> None:
    # Regression: target="label" turned 0.2, 0.9, 1.7 into classes 0, 0, 1.
    def soft(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return images, labels.float() + 0.2

    monitor = ExplanationMonitor(Saliency(), probe_size=4, target="label")
    trainer = _trainer(tmp_path, [monitor], num_sanity_val_steps=0)

    class SoftLabels(DigitsClassifier):
        def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
            return super()._step((batch[0], batch[1].round().long()), stage)

    with pytest.raises(ValueError, match=r"target='label'` needs integer class indices.*whole numbers"):
        _quiet(trainer.fit, SoftLabels(width=8), datamodule=DigitsDataModule(image_size=SIZE, transform=soft))


def test_a_gate_after_a_sparse_monitor_judges_fresh_values_only(tmp_path: Path) -> None:
    # Regression: with every_n_epochs=2, epoch 1 re-judged epoch 0's value, and patience=1 raised after a single
    # measurement. Now the checks of epochs 0 and 2 are the only ones, and the second one acts.
    monitor = ExplanationMonitor(Saliency(), metrics=[DeletionAUC(steps=4)], probe_size=4, every_n_epochs=2)
    gate = FaithfulnessGate("xai/Saliency/deletion_auc", mode="min", threshold=0.0, patience=1, strict=False)
    trainer = _trainer(tmp_path, [monitor, gate], epochs=4)
    with pytest.raises(FaithfulnessRegressionError):
        _quiet(trainer.fit, DigitsClassifier(width=8), datamodule=DigitsDataModule(image_size=SIZE))
    assert [entry["epoch"] for entry in gate.history] == [0, 2]
    assert gate.stopped_epoch == 2


def test_monitor_runs_when_validation_is_sparse_too(tmp_path: Path) -> None:
    # Regression: check_val_every_n_epoch=2 validates after epochs 1, 3, 5; every_n_epochs=2 counted epoch numbers
    # (0, 2, 4) and never ran. It now counts the epochs that validate: the 1st and the 3rd, i.e. epochs 1 and 5.
    recorder = EpochRecorder()
    monitor = ExplanationMonitor(Saliency(), probe_size=4, every_n_epochs=2, analyses=[recorder], track_drift=False)
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, every_n_epochs=1)
    trainer = _trainer(tmp_path, [monitor, checkpoint], epochs=4, check_val_every_n_epoch=2, enable_checkpointing=True)
    model = DigitsClassifier(width=8)
    data = DigitsDataModule(image_size=SIZE)
    _quiet(trainer.fit, model, datamodule=data)
    assert monitor.analyses["Saliency"][0].epochs == [1]  # validated epochs 1 and 3: the 1st runs, the 2nd does not
    # resume for two more validating epochs (5 and 7): the count carries over, so epoch 5 (the 3rd) runs
    resumed = ExplanationMonitor(
        Saliency(), probe_size=4, every_n_epochs=2, analyses=[EpochRecorder()], track_drift=False
    )
    trainer = _trainer(tmp_path, [resumed], epochs=8, check_val_every_n_epoch=2, enable_checkpointing=True)
    _quiet(trainer.fit, model, datamodule=data, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert resumed.analyses["Saliency"][0].epochs == [5]
    # trainer.validate() runs whenever its stage is asked for, whatever the schedule
    resumed.stages = ("fit", "validate")
    _quiet(trainer.validate, model, datamodule=data, verbose=False)
    assert resumed.analyses["Saliency"][0].epochs == [5, 8]


@pytest.mark.parametrize("on_error", ["raise", "warn"])
def test_non_finite_inputs_follow_on_error(tmp_path: Path, on_error: str) -> None:
    # Regression: a NaN in a streamed validation image became a silent NaN metric.
    def poison(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        images = images.clone()
        images[::7, 0, 0, 0] = float("nan")  # one image in seven, in the training and the validation split
        return images, labels

    monitor = ExplanationMonitor(
        Saliency(), metrics=[DeletionAUC(steps=4)], probe_size=4, max_samples=64, on_error=on_error
    )
    trainer = _trainer(tmp_path, [monitor], num_sanity_val_steps=0)

    class Robust(DigitsClassifier):
        def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
            return super()._step((torch.nan_to_num(batch[0]), batch[1]), stage)

    data = DigitsDataModule(image_size=SIZE, transform=poison)
    if on_error == "raise":
        with pytest.raises(ValueError, match="hold NaN or infinite values"):
            _quiet(trainer.fit, Robust(width=8), datamodule=data)
        return
    with pytest.warns(UserWarning, match="hold NaN or infinite values"):
        trainer.fit(Robust(width=8), datamodule=data)
    assert "xai/Saliency/deletion_auc" not in trainer.callback_metrics or torch.isfinite(
        trainer.callback_metrics["xai/Saliency/deletion_auc"]
    )


def test_saving_global_maps_never_stops_training(tmp_path: Path) -> None:
    # Regression: an unwritable log dir stopped the run (on_error="raise") with a message that did not name the path.
    blocker = tmp_path / "tb" / "fixed" / "global_maps"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the folder should be")
    monitor = ExplanationMonitor(Saliency(), probe_size=4, max_samples=16, num_labels=10)
    trainer = _trainer(tmp_path, [monitor], logger=TensorBoardLogger(str(tmp_path), name="tb", version="fixed"))
    with pytest.warns(UserWarning, match=r"could not save the global maps of 'Saliency' to '.*global_maps"):
        trainer.fit(DigitsClassifier(width=8), datamodule=DigitsDataModule(image_size=SIZE))
    assert "xai/Saliency/drift_probe" not in trainer.callback_metrics  # one epoch: nothing to compare with yet
    assert monitor.global_maps["Saliency"]["per_label"].shape == (10, 1, SIZE, SIZE)


def test_fast_dev_run_writes_no_global_maps(tmp_path: Path) -> None:
    monitor = ExplanationMonitor(Saliency(), probe_size=4, max_samples=16, num_labels=10)
    trainer = L.Trainer(
        fast_dev_run=True, accelerator="cpu", callbacks=[monitor], default_root_dir=str(tmp_path), logger=False
    )
    _quiet(trainer.fit, DigitsClassifier(width=8), datamodule=DigitsDataModule(image_size=SIZE))
    assert monitor.global_maps["Saliency"]["count"].sum() > 0
    assert glob.glob(os.path.join(str(tmp_path), "**", "*.pt"), recursive=True) == []


class BinaryDigits(DigitsClassifier):
    """Digit 0 against the rest, with one logit: the binary single-logit head users train."""

    def __init__(self) -> None:
        super().__init__(width=8, num_classes=1)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        inputs, labels = batch
        loss = torch.nn.functional.binary_cross_entropy_with_logits(self(inputs)[:, 0], (labels == 0).float())
        self.log(f"{stage}/loss", loss)
        return loss


def test_a_single_logit_head_is_scored_by_its_sigmoid_not_as_perfect(tmp_path: Path) -> None:
    # Regression: the softmax of one logit is 1, so every map scored deletion = insertion = 1.0 exactly.
    L.seed_everything(0, verbose=False)
    monitor = ExplanationMonitor(
        {"Saliency": Saliency(), "GradCAM": GradCAM()},
        metrics=[DeletionAUC(steps=8), InsertionAUC(steps=8)],
        probe_size=16,
        stages=("fit", "validate"),
    )
    trainer = _trainer(tmp_path, [monitor], epochs=2, limit_train_batches=10)
    model = BinaryDigits()
    _quiet(trainer.fit, model, datamodule=DigitsDataModule(image_size=SIZE))
    logged = {key: float(value) for key, value in trainer.callback_metrics.items()}
    for name in ("Saliency", "GradCAM"):
        deletion, insertion = logged[f"xai/{name}/deletion_auc"], logged[f"xai/{name}/insertion_auc"]
        assert 0.0 < deletion < 1.0 and 0.0 < insertion < 1.0
        assert deletion != insertion
    # validate() on the same weights and probe reproduces the numbers
    _quiet(trainer.validate, model, datamodule=DigitsDataModule(image_size=SIZE), verbose=False)
    assert float(trainer.callback_metrics["xai/Saliency/deletion_auc"]) == pytest.approx(
        logged["xai/Saliency/deletion_auc"], abs=1e-6
    )


def test_a_single_logit_head_explained_by_grad_cams_own_forward_logs_what_a_separate_forward_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Grad-CAM picks the "predicted" class (index 0 of one logit) in its own forward: the same numbers as before."""

    def run(folder: str) -> dict[str, Tensor]:
        L.seed_everything(0, verbose=False)
        monitor = ExplanationMonitor(
            GradCAM(), metrics=[DeletionAUC(steps=8), InsertionAUC(steps=8)], probe_size=8, log_curves=False
        )
        trainer = _trainer(tmp_path / folder, [monitor], epochs=2)
        _quiet(trainer.fit, BinaryDigits(), datamodule=DigitsDataModule(image_size=SIZE))
        return {key: value for key, value in trainer.callback_metrics.items() if key.startswith("xai/")}

    own = run("own")
    monkeypatch.setattr(GradCAM, "scores_one_forward", False)
    forwarded = run("forwarded")
    assert own.keys() == forwarded.keys() and "xai/GradCAM/deletion_auc" in own
    for key, value in forwarded.items():
        torch.testing.assert_close(own[key], value, rtol=0, atol=0, msg=key)
    assert 0.0 < float(own["xai/GradCAM/deletion_auc"]) < 1.0


def test_a_second_run_in_the_same_folder_keeps_the_first_runs_global_maps(tmp_path: Path) -> None:
    # Regression: with logger=False both runs wrote ./global_maps/<explainer>_epoch=0.pt, the second over the first.
    def run() -> None:
        monitor = ExplanationMonitor(Saliency(), probe_size=4, max_samples=16, num_labels=10, track_drift=False)
        trainer = _trainer(tmp_path, [monitor], logger=False, default_root_dir=str(tmp_path))
        _quiet(trainer.fit, DigitsClassifier(width=8), datamodule=DigitsDataModule(image_size=SIZE))

    run()
    first = torch.load(tmp_path / "global_maps" / "Saliency_epoch=0.pt")
    run()
    names = sorted(path.name for path in (tmp_path / "global_maps").iterdir())
    assert names == ["Saliency_epoch=0-v1.pt", "Saliency_epoch=0.pt"]
    assert torch.equal(torch.load(tmp_path / "global_maps" / "Saliency_epoch=0.pt")["per_label"], first["per_label"])
