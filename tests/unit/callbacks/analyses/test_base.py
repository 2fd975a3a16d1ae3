"""The Analysis contract: the monitor copies, feeds, logs, resets and checkpoints each analysis per explainer."""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torchmetrics import SumMetric

from examples.digits import DigitsClassifier, DigitsDataModule
from lightning_xai import ExplanationMonitor
from lightning_xai.callbacks.analyses import Analysis, EpochContext, ExplainedBatch
from lightning_xai.explainers import GradCAM, Saliency


class CountingAnalysis(Analysis):
    """Counts the streamed samples with a synchronised sum; remembers how many epochs it logged."""

    name: ClassVar[str] = "counting"

    def __init__(self) -> None:
        self.total = SumMetric()
        self.epochs_logged = 0
        self.probe_seen: list[int] = []

    def metrics(self) -> list[Any]:
        return [self.total]

    def update(self, batch: ExplainedBatch) -> None:
        assert batch.maps.shape[0] == batch.inputs.shape[0] and not batch.probe
        self.total.update(torch.tensor(float(batch.inputs.shape[0])))

    def log(self, context: EpochContext) -> None:
        self.epochs_logged += 1
        assert context.probe_maps is not None
        self.probe_seen.append(context.probe_maps.shape[0])
        context.log({"counted": self.total.compute(), "epochs_logged": torch.tensor(float(self.epochs_logged))})

    def state_dict(self) -> dict[str, Any]:
        return {"epochs_logged": self.epochs_logged}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs_logged = state_dict["epochs_logged"]


def _trainer(tmp_path: Any, monitor: ExplanationMonitor, epochs: int) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=TensorBoardLogger(str(tmp_path), name="tb"),
        callbacks=[monitor],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=2,
        limit_val_batches=2,
    )


def test_each_explainer_gets_its_own_copy_fed_and_reset_every_epoch(tmp_path: Any) -> None:
    template = CountingAnalysis()
    monitor = ExplanationMonitor(
        {"GradCAM": GradCAM(), "Saliency": Saliency()},
        probe_size=4,
        max_samples=10,
        analyses=[template],
        track_drift=False,
    )
    assert monitor.analyses["GradCAM"][0] is not monitor.analyses["Saliency"][0]
    trainer = _trainer(tmp_path, monitor, epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(DigitsClassifier(width=8), datamodule=DigitsDataModule(image_size=8))
        # a second run in another stage starts its counts from zero again
        monitor.stages = ("validate",)
        trainer.validate(trainer.lightning_module, datamodule=DigitsDataModule(image_size=8), verbose=False)
    for name in ("GradCAM", "Saliency"):
        assert float(trainer.callback_metrics[f"xai/{name}/counted"]) == 10.0
        assert monitor.analyses[name][0].epochs_logged == 3
        assert monitor.analyses[name][0].probe_seen == [4, 4, 4]
    assert template.epochs_logged == 0
    restored = ExplanationMonitor(
        {"GradCAM": GradCAM(), "Saliency": Saliency()},
        probe_size=4,
        max_samples=10,
        analyses=[CountingAnalysis()],
        track_drift=False,
    )
    restored.load_state_dict(monitor.state_dict())
    assert restored.analyses["Saliency"][0].epochs_logged == 3


def test_bad_analyses_are_named() -> None:
    with pytest.raises(TypeError, match=r"`analyses\[0\]` must be a lightning_xai Analysis, got str"):
        ExplanationMonitor(Saliency(), analyses=["spray"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="more than one entry with the analysis `name` 'counting'"):
        ExplanationMonitor(Saliency(), analyses=[CountingAnalysis(), CountingAnalysis()])
