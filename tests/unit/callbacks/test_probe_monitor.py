from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_xai import ProbeMonitor
from lightning_xai.probes import FillInTheBlanks, PrototypeGeneration

PREFIX = "xai/probes"


class DigitsModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(16 * 4 * 4, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


@pytest.fixture(scope="module")
def loaders() -> tuple[DataLoader, DataLoader]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(data.target)
    train = DataLoader(TensorDataset(x[:384], y[:384]), batch_size=64)
    val = DataLoader(TensorDataset(x[1500:1596], y[1500:1596]), batch_size=32)
    return train, val


def _trainer(tmp_path: Path, callbacks: list, max_epochs: int = 2, **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=TensorBoardLogger(str(tmp_path), name="logs"),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        **kwargs,
    )


def _fast_monitor(**kwargs: Any) -> ProbeMonitor:
    defaults: dict[str, Any] = dict(
        fill_in_the_blanks=FillInTheBlanks(steps=5, lr=0.1),
        prototype_generation=PrototypeGeneration(steps=5, lr=0.1, input_range=(0.0, 1.0)),
        num_samples=40,
        target="label",
    )
    defaults.update(kwargs)
    return ProbeMonitor(**defaults)


def test_fit_logs_images_to_tensorboard_and_scalars_to_callback_metrics(
    tmp_path: Path, loaders: tuple[DataLoader, DataLoader]
) -> None:
    pl.seed_everything(0)
    monitor = _fast_monitor()
    trainer = _trainer(tmp_path, [monitor])
    trainer.fit(DigitsModule(), *loaders)

    metrics = trainer.callback_metrics
    layer = "features.3"  # the default: the last Conv2d
    expected = [
        f"{PREFIX}/fill_in_the_blanks/score_before",
        f"{PREFIX}/fill_in_the_blanks/score_after",
        f"{PREFIX}/fill_in_the_blanks/score_gain",
        f"{PREFIX}/prototype_generation/probability",
        f"{PREFIX}/prototype_generation/{layer}/l1",
        f"{PREFIX}/prototype_generation/{layer}/spearman",
        f"{PREFIX}/prototype_baseline/probability",
        f"{PREFIX}/prototype_baseline/{layer}/l1",
        f"{PREFIX}/prototype_baseline/{layer}/spearman",
    ]
    for key in expected:
        assert key in metrics, (key, sorted(metrics))
        assert torch.isfinite(metrics[key]), key
    gain = metrics[f"{PREFIX}/fill_in_the_blanks/score_gain"]
    after, before = (
        metrics[f"{PREFIX}/fill_in_the_blanks/score_after"],
        metrics[f"{PREFIX}/fill_in_the_blanks/score_before"],
    )
    torch.testing.assert_close(gain, after - before)
    assert float(gain) > 0

    accumulator = EventAccumulator(str(Path(trainer.logger.log_dir)), size_guidance={"images": 0})
    accumulator.Reload()
    tags = set(accumulator.Tags()["images"])
    for tag in (
        "fill_in_the_blanks/filled",
        "fill_in_the_blanks/class_mean_fills",
        "prototype_generation/prototypes",
        "prototype_baseline/prototypes",
    ):
        assert f"{PREFIX}/{tag}" in tags, sorted(tags)
        assert len(accumulator.Images(f"{PREFIX}/{tag}")) == 2  # epochs 0 and 1; none in the sanity check
    filled = accumulator.Images(f"{PREFIX}/fill_in_the_blanks/filled")[0]
    assert filled.width > filled.height  # three rows of up to 16 samples
    prototypes = accumulator.Images(f"{PREFIX}/prototype_generation/prototypes")[0]
    assert prototypes.width > 10 * 64  # ten classes, upscaled to 64 pixels


class CountingFill(FillInTheBlanks):
    calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        type(self).calls += 1
        return super().__call__(*args, **kwargs)


def test_schedule_sanity_check_and_unchanged_training(tmp_path: Path, loaders: tuple[DataLoader, DataLoader]) -> None:
    pl.seed_everything(0)
    reference = DigitsModule()
    _trainer(tmp_path / "plain", [], max_epochs=3).fit(reference, *loaders)

    pl.seed_everything(0)
    CountingFill.calls = 0
    monitored = DigitsModule()
    monitor = _fast_monitor(probes=["fill_in_the_blanks"], fill_in_the_blanks=CountingFill(steps=3), every_n_epochs=2)
    _trainer(tmp_path / "monitored", [monitor], max_epochs=3).fit(monitored, *loaders)

    assert CountingFill.calls == 2  # epochs 0 and 2, not the sanity check nor epoch 1
    # Same weights bit for bit: probes leave parameters, .grad, flags and the RNG stream (dropout) as found.
    for (name, a), b in zip(reference.state_dict().items(), monitored.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # The fixed set came from the validation dataloader and is checkpointed.
    state = monitor.state_dict()
    val_x, val_y = loaders[1].dataset.tensors
    assert torch.equal(state["inputs"], val_x[:40]) and torch.equal(state["labels"], val_y[:40])
    restored = ProbeMonitor()
    restored.load_state_dict(state)
    assert torch.equal(restored.state_dict()["inputs"], val_x[:40])


def test_on_error_warn_turns_a_failing_probe_into_a_warning(
    tmp_path: Path, loaders: tuple[DataLoader, DataLoader]
) -> None:
    pl.seed_everything(0)
    monitor = _fast_monitor(layers=["features.no_such_layer"], on_error="warn")
    trainer = _trainer(tmp_path, [monitor], max_epochs=1)
    with pytest.warns(UserWarning, match="probe 'prototype_generation' failed.*no_such_layer"):
        trainer.fit(DigitsModule(), *loaders)
    assert f"{PREFIX}/fill_in_the_blanks/score_gain" in trainer.callback_metrics
    assert not any(key.startswith(f"{PREFIX}/prototype") for key in trainer.callback_metrics)

    pl.seed_everything(0)
    failing = _fast_monitor(layers=["features.no_such_layer"], on_error="raise")
    with pytest.raises(ValueError, match="no_such_layer"):
        _trainer(tmp_path / "raise", [failing], max_epochs=1).fit(DigitsModule(), *loaders)


def test_validate_under_inference_mode_with_given_samples(
    tmp_path: Path, loaders: tuple[DataLoader, DataLoader]
) -> None:
    x, y = loaders[1].dataset.tensors
    monitor = _fast_monitor(inputs=x[:20], labels=y[:20], stages=["validate"], classes=[0, 3], layers=[])
    trainer = _trainer(tmp_path, [monitor])
    trainer.validate(DigitsModule(), loaders[1])  # inference mode by default
    assert f"{PREFIX}/prototype_generation/probability" in trainer.callback_metrics
    assert f"{PREFIX}/fill_in_the_blanks/score_gain" in trainer.callback_metrics
    assert not any(key.endswith("/l1") for key in trainer.callback_metrics)  # layers=[] turns similarity off
    assert torch.equal(monitor.state_dict()["inputs"], x[:20])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(probes=["saliency"]), "`probes` must be one of"),
        (dict(probes=[]), "`probes` must be a non-empty list"),
        (dict(every_n_epochs=0), "`every_n_epochs`"),
        (dict(num_samples=0), "`num_samples`"),
        (dict(on_error="ignore"), "`on_error` must be one of"),
        (dict(stages=["predict"]), "`stages` must be one of"),
        (dict(target="random"), "`target` must be one of"),
        (dict(classes=[-1]), "`classes`"),
        (dict(layers="features.3"), "`layers`"),
        (dict(labels=torch.tensor([0])), "`labels` were given without `inputs`"),
        (dict(inputs=torch.rand(2, 1, 8, 8), labels=torch.tensor([0])), "`labels` must be an integer tensor"),
        (dict(fill_in_the_blanks="center"), "`fill_in_the_blanks` must be a FillInTheBlanks"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        ProbeMonitor(**kwargs)


def test_repr_names_the_probes_and_their_settings() -> None:
    from lightning_xai.probes import FillInTheBlanks as Fill

    monitor = ProbeMonitor(
        probes=["fill_in_the_blanks"],
        fill_in_the_blanks=Fill(steps=7),
        inputs=torch.zeros(5, 1, 8, 8),
        every_n_epochs=3,
        stages=("fit", "validate"),
    )
    text = repr(monitor)
    assert text.startswith("ProbeMonitor(probes=['fill_in_the_blanks'], fill_in_the_blanks=FillInTheBlanks(")
    assert "steps=7" in text and "inputs=<(5, 1, 8, 8)>" in text and "every_n_epochs=3" in text
    assert "stages=['fit', 'validate']" in text and "prototype_generation=" not in text
    assert "num_samples=32" in repr(ProbeMonitor())
