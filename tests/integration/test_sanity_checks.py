"""Robustness and randomisation metrics through the ExplanationMonitor in a real Trainer, and a gate on MPRT."""

from __future__ import annotations

import glob
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor, nn

from examples.digits import DigitsClassifier, DigitsDataModule
from lightning_xai import ExplanationMonitor, FaithfulnessGate, FaithfulnessRegressionError
from lightning_xai._typing import TargetType
from lightning_xai.explainers import Explainer, Saliency
from lightning_xai.functional import model_randomisation
from lightning_xai.metrics import AvgSensitivity, ModelRandomisation, RandomLogit, RelativeInputStability


class InputEdges(Explainer):
    """|horizontal image gradient| of the input: an explanation that never looks at the model."""

    needs_grad = False

    def attribute(self, model: nn.Module, inputs: Tensor, target: TargetType) -> Tensor:
        edges = torch.zeros_like(inputs)
        edges[..., 1:] = inputs[..., 1:] - inputs[..., :-1]
        return edges.abs().sum(1, keepdim=True)


def _trainer(tmp_path: Any, callbacks: list, epochs: int = 2, checkpointing: bool = False) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=TensorBoardLogger(str(tmp_path), name="tb"),
        callbacks=callbacks,
        enable_checkpointing=checkpointing,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=8,
        limit_val_batches=2,
        limit_test_batches=2,
        deterministic=True,
    )


def _metrics() -> list:
    return [ModelRandomisation(), AvgSensitivity(n_samples=2), RandomLogit(similarity="spearman")]


KEYS = ("mprt_spearman", "mprt_spearman_stderr", "mprt_spearman_last", "avg_sensitivity", "random_logit_spearman")


def test_sanity_metrics_in_fit_validate_and_test(tmp_path: Any) -> None:
    monitor = ExplanationMonitor(
        {"Saliency": Saliency(), "Edges": InputEdges()},
        metrics=_metrics(),
        probe_size=8,
        stages=("fit", "validate", "test"),
    )
    trainer = _trainer(tmp_path, [monitor])
    model, data = DigitsClassifier(width=8), DigitsDataModule(image_size=16)
    trainer.fit(model, datamodule=data)
    logged = dict(trainer.callback_metrics)
    for name in ("Saliency", "Edges"):
        for key in KEYS:
            assert torch.isfinite(logged[f"xai/{name}/{key}"]), (name, key)
    # Edges ignores the weights and the class: similarity 1 at every step; Saliency depends on both.
    assert logged["xai/Edges/mprt_spearman"] == 1.0 and logged["xai/Edges/mprt_spearman_last"] == 1.0
    assert logged["xai/Edges/random_logit_spearman"] == 1.0
    assert logged["xai/Saliency/mprt_spearman"] < 0.5 and logged["xai/Saliency/random_logit_spearman"] < 0.5
    assert monitor.metrics["Saliency"][0].explainer is monitor.explainers["Saliency"]
    assert monitor.metrics["Saliency"][0].steps == ["head.3", "features.5", "features.4", "features.1", "features.0"]
    probe = monitor._probe_inputs
    assert probe is not None
    with torch.no_grad():
        predicted = model(probe).argmax(1)
    curve = model_randomisation(Saliency(), model, probe, predicted)[0].mean(0)
    assert curve[-1] < curve[0] < 0.5, curve  # the trained CNN's Saliency loses similarity as layers are randomised
    for stage in ("validate", "test"):
        getattr(trainer, stage)(model, datamodule=data, verbose=False)
        assert float(trainer.callback_metrics["xai/Edges/mprt_spearman"]) == 1.0, stage
        assert float(trainer.callback_metrics["xai/Saliency/mprt_spearman"]) < 0.5, stage
        assert torch.isfinite(trainer.callback_metrics["xai/Saliency/avg_sensitivity"]), stage
    files = glob.glob(str(tmp_path / "tb" / "**" / "events.out.tfevents.*"), recursive=True)
    events = EventAccumulator(sorted(files)[0], size_guidance={"images": 0})
    events.Reload()
    figures = events.Images("xai/Saliency/mprt_spearman_curve")
    assert len(figures) == 2  # one per validation run of fit
    assert figures[-1].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"


def _fit(tmp_path: Any, callbacks: list) -> tuple[dict[str, Tensor], Tensor]:
    L.seed_everything(3, verbose=False)
    model = DigitsClassifier(width=8)
    _trainer(tmp_path, callbacks).fit(model, datamodule=DigitsDataModule(image_size=16, seed=3))
    return {key: value.detach().clone() for key, value in model.state_dict().items()}, torch.rand(3)


def test_training_is_bitwise_untouched_by_the_randomisation(tmp_path: Any) -> None:
    without, rng_without = _fit(tmp_path / "a", [])
    monitor = ExplanationMonitor(
        Saliency(), metrics=[ModelRandomisation(order="independent"), RelativeInputStability(n_samples=2)], probe_size=4
    )
    with_monitor, rng_with = _fit(tmp_path / "b", [monitor])
    for key, value in without.items():
        assert torch.equal(value, with_monitor[key]), key  # parameters and BatchNorm buffers
    assert torch.equal(rng_without, rng_with)


@pytest.mark.parametrize(("explainer", "fails"), [(InputEdges(), True), (Saliency(), False)])
def test_gate_on_mprt_fails_an_explainer_that_ignores_the_weights(
    tmp_path: Any, explainer: Explainer, fails: bool
) -> None:
    monitor = ExplanationMonitor({"X": explainer}, metrics=[ModelRandomisation()], probe_size=8)
    gate = FaithfulnessGate("xai/X/mprt_spearman", mode="min", threshold=0.5)
    trainer = _trainer(tmp_path, [monitor, gate], epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fails:
            with pytest.raises(FaithfulnessRegressionError, match="mprt_spearman"):
                trainer.fit(DigitsClassifier(width=8), datamodule=DigitsDataModule(image_size=16))
        else:
            trainer.fit(DigitsClassifier(width=8), datamodule=DigitsDataModule(image_size=16))
            assert float(trainer.callback_metrics["xai/X/mprt_spearman"]) < 0.5


@pytest.mark.ddp
@pytest.mark.slow
def test_two_process_ddp_fit_logs_the_same_values_on_every_rank(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for name in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK"):
        env.pop(name, None)
    script = Path(__file__).with_name("_sanity_ddp_script.py")
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    expected = {f"xai/Saliency/{key}" for key in (*KEYS, "relative_output_stability")}
    assert expected <= rank0["metrics"].keys(), sorted(rank0["metrics"])
    assert rank0["metrics"] == rank1["metrics"]
    assert all(math.isfinite(value) for value in rank0["metrics"].values())


def test_resume_from_a_checkpoint(tmp_path: Any) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    data = DigitsDataModule(image_size=16)
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    first = ExplanationMonitor(Saliency(), metrics=_metrics(), probe_size=4)
    trainer = _trainer(tmp_path / "a", [first, checkpoint], epochs=1, checkpointing=True)
    trainer.fit(DigitsClassifier(width=8), datamodule=data)
    resumed = ExplanationMonitor(Saliency(), metrics=_metrics(), probe_size=4)
    trainer = _trainer(tmp_path / "b", [resumed], epochs=2)
    trainer.fit(DigitsClassifier(width=8), datamodule=data, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert trainer.current_epoch == 2
    for key in KEYS:
        assert torch.isfinite(trainer.callback_metrics[f"xai/Saliency/{key}"]), key
