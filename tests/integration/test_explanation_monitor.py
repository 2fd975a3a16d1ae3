"""ExplanationMonitor in a real Trainer on the bundled digits."""

from __future__ import annotations

import glob
import warnings
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor, nn

from examples.digits import DigitsClassifier, DigitsDataModule
from lightning_xai import ExplanationMonitor
from lightning_xai.explainers import Explainer, GradCAM, InputXGradient, IntegratedGradients, Saliency


def _trainer(tmp_path: Any, callbacks: list, epochs: int = 2, logger: Any = None, **kwargs: Any) -> L.Trainer:
    """A short digits Trainer on the CPU; ``kwargs`` add or override Trainer arguments."""
    options: dict[str, Any] = {
        "max_epochs": epochs,
        "accelerator": "cpu",
        "logger": logger if logger is not None else TensorBoardLogger(str(tmp_path), name="tb"),
        "callbacks": callbacks,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_train_batches": 4,
        "limit_val_batches": 2,
        "deterministic": True,
    }
    return L.Trainer(**{**options, **kwargs})


def _events(tmp_path: Any) -> EventAccumulator:
    files = glob.glob(str(tmp_path / "tb" / "**" / "events.out.tfevents.*"), recursive=True)
    assert files, "no TensorBoard event file written"
    accumulator = EventAccumulator(sorted(files)[-1], size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def _fit_weights(tmp_path: Any, callbacks: list) -> tuple[dict[str, Tensor], Tensor]:
    L.seed_everything(7, verbose=False)
    model = DigitsClassifier(width=8)
    _trainer(tmp_path, callbacks).fit(model, datamodule=DigitsDataModule(image_size=8, seed=7))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, torch.rand(3)


def test_training_is_untouched_by_the_monitor(tmp_path: Any) -> None:
    without, rand_without = _fit_weights(tmp_path / "a", [])
    monitor = ExplanationMonitor(
        {"GradCAM": GradCAM(), "Saliency": Saliency(), "IG": IntegratedGradients(n_steps=4)}, probe_size=8
    )
    with_monitor, rand_with = _fit_weights(tmp_path / "b", [monitor])
    assert without.keys() == with_monitor.keys()
    for key in without:
        assert torch.equal(without[key], with_monitor[key]), f"{key} differs with the monitor attached"
    assert torch.equal(rand_without, rand_with), "the global RNG stream moved"


def test_heatmaps_reach_tensorboard_and_probe_is_fixed(tmp_path: Any) -> None:
    monitor = ExplanationMonitor({"GradCAM": GradCAM(), "Saliency": Saliency()}, probe_size=6, class_balanced=True)
    model = DigitsClassifier(width=8)
    _trainer(tmp_path, [monitor]).fit(model, datamodule=DigitsDataModule(image_size=8))
    events = _events(tmp_path)
    tags = events.Tags()["images"]
    assert {"xai/GradCAM/heatmaps", "xai/Saliency/heatmaps"} <= set(tags)
    assert len(events.Images("xai/GradCAM/heatmaps")) == 2  # one per epoch
    assert monitor._probe_inputs is not None and monitor._probe_inputs.shape[0] == 6
    labels = monitor._probe_labels
    assert labels is not None and labels.unique().numel() == 6, "class-balanced probe should hold 6 classes"
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks and not module._forward_pre_hooks


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_validate_and_test_run_under_inference_mode(tmp_path: Any, stage: str) -> None:
    monitor = ExplanationMonitor(GradCAM(), probe_size=4, stages=("fit", "validate", "test"))
    model = DigitsClassifier(width=8)
    trainer = _trainer(tmp_path, [monitor])
    datamodule = DigitsDataModule(image_size=8)
    getattr(trainer, stage)(model, datamodule=datamodule)
    assert "xai/GradCAM/heatmaps" in _events(tmp_path).Tags()["images"]
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_monitor_skips_stages_not_asked_for(tmp_path: Any) -> None:
    monitor = ExplanationMonitor(GradCAM(), probe_size=4)
    trainer = _trainer(tmp_path, [monitor])
    trainer.validate(DigitsClassifier(width=8), datamodule=DigitsDataModule(image_size=8))
    assert monitor._probe_inputs is None


class _NaNExplainer(Explainer):
    def attribute(self, model: nn.Module, inputs: Tensor, target: Any) -> Tensor:
        return torch.full_like(inputs[:, :1], float("nan"))


def test_nan_explainer_raises_by_default(tmp_path: Any) -> None:
    trainer = _trainer(tmp_path, [ExplanationMonitor(_NaNExplainer(), probe_size=4)], epochs=1)
    with pytest.raises(ValueError, match="non-finite attributions"):
        trainer.fit(DigitsClassifier(width=8), datamodule=DigitsDataModule(image_size=8))


def test_nan_explainer_warns_and_logs_no_image(tmp_path: Any) -> None:
    monitor = ExplanationMonitor({"bad": _NaNExplainer(), "GradCAM": GradCAM()}, probe_size=4, on_error="warn")
    trainer = _trainer(tmp_path, [monitor], epochs=1)
    with pytest.warns(UserWarning, match="'bad' failed"):
        trainer.fit(DigitsClassifier(width=8), datamodule=DigitsDataModule(image_size=8))
    tags = _events(tmp_path).Tags()["images"]
    assert "xai/GradCAM/heatmaps" in tags and "xai/bad/heatmaps" not in tags


class _DictBatches(L.LightningModule):
    """A module whose batches are dicts and whose forward takes keyword arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = DigitsClassifier(width=8)

    def forward(self, *, pixels: Tensor) -> Tensor:
        return self.inner(pixels)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return nn.functional.cross_entropy(self(pixels=batch["image"]), batch["label"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _dict_loader() -> torch.utils.data.DataLoader:
    images, labels = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    rows = [{"image": images[i], "label": labels[i]} for i in range(32)]
    return torch.utils.data.DataLoader(rows, batch_size=8)


def test_dict_batches_and_forward_fn(tmp_path: Any) -> None:
    monitor = ExplanationMonitor(
        GradCAM(layer="inner.features.4"),
        probe_size=4,
        target="label",
        forward_fn=lambda module, inputs: module(pixels=inputs),
    )
    trainer = _trainer(tmp_path, [monitor], epochs=1)
    trainer.fit(_DictBatches(), _dict_loader(), _dict_loader())
    assert "xai/GradCAM/heatmaps" in _events(tmp_path).Tags()["images"]


def test_unpackable_batch_gets_a_clear_error(tmp_path: Any) -> None:
    monitor = ExplanationMonitor(GradCAM(), probe_size=4, forward_fn=lambda module, inputs: module(pixels=inputs))
    loader = torch.utils.data.DataLoader([{"pixels": torch.randn(1, 8, 8)} for _ in range(8)], batch_size=4)

    class Module(_DictBatches):
        def training_step(self, batch: dict, batch_idx: int) -> Tensor:
            return self(pixels=batch["pixels"]).sum()

    trainer = _trainer(tmp_path, [monitor], epochs=1)
    with pytest.raises(TypeError, match="batch_transform"):
        trainer.fit(Module(), loader, loader)


def test_other_loggers_get_a_notice_not_an_error(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    monitor = ExplanationMonitor(GradCAM(), probe_size=4)
    trainer = _trainer(tmp_path, [monitor], epochs=1, logger=CSVLogger(str(tmp_path)))
    with caplog.at_level("INFO"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(DigitsClassifier(width=8), datamodule=DigitsDataModule(image_size=8))
    assert sum("CSVLogger" in record.message and "no pictures" in record.message for record in caplog.records) == 1


def test_bad_arguments_are_named() -> None:
    with pytest.raises(TypeError, match="`explainer`"):
        ExplanationMonitor("GradCAM")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`target`"):
        ExplanationMonitor(GradCAM(), target="argmax")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`on_error`"):
        ExplanationMonitor(GradCAM(), on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`probe_size`"):
        ExplanationMonitor(GradCAM(), probe_size=0)
    with pytest.raises(ValueError, match="`stages`"):
        ExplanationMonitor(GradCAM(), stages=("train",))


@pytest.mark.parametrize("max_samples", [0, 40])
def test_metrics_are_logged_for_each_explainer(tmp_path: Any, max_samples: int) -> None:
    from lightning.pytorch.callbacks import EarlyStopping

    from lightning_xai.metrics import ROAD, DeletionAUC, InsertionAUC, MaxSensitivity, MIFLIFFidelity

    metrics = [
        DeletionAUC(steps=8),
        InsertionAUC(steps=8),
        MIFLIFFidelity(steps=8),
        ROAD(percentages=(0.2, 0.5)),
        MaxSensitivity(n_samples=2),
    ]
    monitor = ExplanationMonitor(
        {"GradCAM": GradCAM(), "Saliency": Saliency()}, metrics=metrics, probe_size=8, max_samples=max_samples
    )
    stopping = EarlyStopping("xai/GradCAM/insertion_auc", mode="max", patience=5)
    trainer = _trainer(tmp_path, [monitor, stopping], epochs=2)
    trainer.fit(DigitsClassifier(width=8), datamodule=DigitsDataModule(image_size=8))
    logged = trainer.callback_metrics
    for explainer in ("GradCAM", "Saliency"):
        for key in (
            "deletion_auc",
            "insertion_auc",
            "mif_lif_fidelity",
            "mif_auc",
            "road",
            "road_morf",
            "max_sensitivity",
            "deletion_auc_stderr",
        ):
            assert f"xai/{explainer}/{key}" in logged, key
            assert torch.isfinite(logged[f"xai/{explainer}/{key}"])
    # each copy of MaxSensitivity re-ran the explainer whose maps it measured
    assert monitor.metrics["GradCAM"][-1].explainer is monitor.explainers["GradCAM"]
    assert monitor.metrics["Saliency"][-1].explainer is monitor.explainers["Saliency"]
    assert logged["xai/GradCAM/max_sensitivity"] != logged["xai/Saliency/max_sensitivity"]
    images = set(_events(tmp_path).Tags()["images"])
    assert {"xai/GradCAM/deletion_auc_curve", "xai/Saliency/mif_lif_fidelity_curve", "xai/GradCAM/road_curve"} <= images


def test_bad_global_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="`regions` dict keys"):
        ExplanationMonitor(GradCAM(), regions={"a/b": torch.ones(8, 8)})
    with pytest.raises(ValueError, match=r"`regions\['corner'\]`.*0 and 1"):
        ExplanationMonitor(GradCAM(), regions={"corner": torch.full((8, 8), 0.5)})
    with pytest.raises(ValueError, match=r"`num_labels`.*`max_samples=0`"):
        ExplanationMonitor(GradCAM(), num_labels=10)
    with pytest.raises(ValueError, match=r"`peppr_steps`.*`num_labels`"):
        ExplanationMonitor(GradCAM(), peppr_steps=8)
    with pytest.raises(ValueError, match="`global_labels`"):
        ExplanationMonitor(GradCAM(), num_labels=10, max_samples=None, global_labels="target")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`explainer` dict keys"):
        ExplanationMonitor({"": GradCAM()})


def test_captions_come_from_the_targets_forward_and_match_a_separate_softmax(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lightning_xai.callbacks.explanation_monitor as module

    drawn: list[dict[str, Any]] = []
    grid = module.heatmap_grid

    def recording_grid(images: Tensor, maps: Tensor, **kwargs: Any) -> Tensor:
        drawn.append({"images": images, **kwargs})
        return grid(images, maps, **kwargs)

    def no_second_forward(*args: Any) -> None:
        raise AssertionError("the predicted target's forward should give the captions")

    monkeypatch.setattr(module, "heatmap_grid", recording_grid)
    monkeypatch.setattr(module, "caption_predictions", no_second_forward)
    L.seed_everything(0, verbose=False)
    model = DigitsClassifier(width=4)
    monitor = ExplanationMonitor(Saliency(), probe_size=6, track_drift=False, log_curves=False)
    trainer = L.Trainer(
        max_epochs=1,
        logger=TensorBoardLogger(tmp_path, name="tb"),
        callbacks=[monitor],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=2,
        limit_val_batches=1,
    )
    trainer.fit(model, datamodule=DigitsDataModule(image_size=8))
    (call,) = drawn
    model.eval()
    with torch.no_grad():
        probabilities = torch.softmax(model(call["images"]), dim=1)
    assert torch.equal(call["predictions"], probabilities.argmax(dim=1))
    assert torch.allclose(call["probabilities"], probabilities.max(dim=1).values, atol=1e-6)


def _monitored_fit(tmp_path: Any, monitor: ExplanationMonitor, epochs: int = 2) -> dict[str, Tensor]:
    L.seed_everything(3, verbose=False)
    trainer = _trainer(tmp_path, [monitor], epochs=epochs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(DigitsClassifier(width=8), datamodule=DigitsDataModule(image_size=8, seed=3))
    return {key: value.clone() for key, value in trainer.callback_metrics.items() if key.startswith("xai/")}


@pytest.mark.parametrize("explainer", [GradCAM, Saliency, InputXGradient])
@pytest.mark.parametrize("max_samples", [0, 24])
def test_the_predicted_class_comes_from_the_explainers_own_forward(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, max_samples: int, explainer: type[Explainer]
) -> None:
    """The monitor explains the predicted class without forwarding the batch once more for it, to the same numbers."""
    import lightning_xai.callbacks.explanation_monitor as module

    counts: list[int] = []
    explain = module.ExplanationMonitor._explain_and_measure

    def counting(self: ExplanationMonitor, pl_module: Any, *args: Any, **kwargs: Any) -> Any:
        calls = [0]
        hook = pl_module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        try:
            return explain(self, pl_module, *args, **kwargs)
        finally:
            hook.remove()
            counts.append(calls[0])

    def no_second_forward(*args: Any) -> None:
        raise AssertionError("the explainer's forward should give the captions")

    def fit(folder: str) -> tuple[dict[str, Tensor], list[int]]:
        counts.clear()
        labels = 10 if max_samples else None  # global maps, over the explained validation batches
        monitor = ExplanationMonitor(
            explainer(), probe_size=6, max_samples=max_samples, num_labels=labels, log_curves=False
        )
        return _monitored_fit(tmp_path / folder, monitor), list(counts)

    monkeypatch.setattr(module.ExplanationMonitor, "_explain_and_measure", counting)
    monkeypatch.setattr(module, "caption_predictions", no_second_forward)
    assert explainer.scores_one_forward
    logged, own = fit("own")
    # Grad-CAM's first call also finds its default layer (one forward, remembered); then the explainer's forward only
    assert len(own) >= 2 and set(own[1:]) == {1} and own[0] == (2 if explainer is GradCAM else 1)
    assert f"xai/{explainer.__name__}/drift_probe" in logged
    monkeypatch.setattr(explainer, "scores_one_forward", False)  # the monitor forwards to pick the class itself
    expected, forwarded = fit("forwarded")
    assert [a - b for a, b in zip(forwarded, own, strict=True)] == [1] * len(own)
    assert logged.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(logged[key], value, rtol=0, atol=0, msg=key)


class _FailingResolver(Explainer):
    """Claims one forward, and fails before it (``after=False``) or after applying the target (``after=True``)."""

    scores_one_forward = True

    def __init__(self, after: bool) -> None:
        self.after = after

    def attribute(self, model: nn.Module, inputs: Tensor, target: Any) -> Tensor:
        if self.after:
            target(model(inputs))
        raise RuntimeError("broken explainer")


@pytest.mark.parametrize("after", [False, True])
def test_the_other_explainers_keep_the_predicted_class_when_the_resolving_one_fails(tmp_path: Any, after: bool) -> None:
    from lightning_xai.metrics import DeletionAUC

    monitor = ExplanationMonitor(
        {"broken": _FailingResolver(after), "Saliency": Saliency()},
        metrics=[DeletionAUC(steps=4)],
        probe_size=6,
        on_error="warn",
        log_curves=False,
    )
    logged = _monitored_fit(tmp_path / "with", monitor)
    alone = _monitored_fit(
        tmp_path / "alone",
        ExplanationMonitor({"Saliency": Saliency()}, metrics=[DeletionAUC(steps=4)], probe_size=6, log_curves=False),
    )
    assert "broken" in monitor._failed and not any(key.startswith("xai/broken/") for key in logged)
    for key, value in alone.items():
        torch.testing.assert_close(logged[key], value, rtol=0, atol=0, msg=key)


def test_drift_is_measured_and_kept_on_the_models_device(tmp_path: Any, device: torch.device) -> None:
    """Probe and global drift rank the maps where they are (no copy to the host); the value logged with
    ``sync_dist=True`` is then a device tensor, which a NCCL all-reduce needs."""
    L.seed_everything(3, verbose=False)
    monitor = ExplanationMonitor(GradCAM(), probe_size=6, max_samples=24, num_labels=10, log_curves=False)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    trainer = _trainer(tmp_path, [monitor], accelerator=accelerator, devices=1, deterministic=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(DigitsClassifier(width=8), datamodule=DigitsDataModule(image_size=8, seed=3))
    for key in ("xai/GradCAM/drift_probe", "xai/GradCAM/drift_global"):
        assert -1.0 <= float(trainer.callback_metrics[key]) <= 1.0, key
    for name in ("drift_probe", "global_maps"):
        kept = monitor.analysis("GradCAM", name).drift.previous  # type: ignore[attr-defined]
        assert kept is not None and kept.device.type == device.type, name
