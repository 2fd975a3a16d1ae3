"""SimilarityMonitor with real Trainers: training untouched, resume, fit/validate/test, pictures, DDP, ResNet-18."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from examples._common import save_pictures
from examples.digits import DigitsDataModule
from examples.ssl_digits import SimCLRDigits, augment
from lightning_xai import SimilarityMonitor
from lightning_xai.explainers import ConditionalOcclusion, InteractionCAM, PairwiseOcclusion
from lightning_xai.metrics import SimilarityDeletionAUC
from tests.helpers.ddp import load_rank_results, run_ddp_script

SCRIPT = Path(__file__).with_name("_similarity_ddp_script.py")
KEYS = {
    "xai/similarity/pair_similarity",
    "xai/similarity/ConditionalOcclusion/similarity_deletion_auc",
    "xai/similarity/ConditionalOcclusion/similarity_deletion_auc_stderr",
    "xai/similarity/ConditionalOcclusion/similarity_insertion_auc",
    "xai/similarity/InteractionCAM/similarity_insertion_auc_stderr",
}


def _monitor(**kwargs: Any) -> SimilarityMonitor:
    return SimilarityMonitor(
        augment=augment,
        explainers=[ConditionalOcclusion(window=2, stride=2, baseline=-1.0), InteractionCAM()],
        steps=4,
        num_pairs=6,
        heatmap_pairs=3,
        **kwargs,
    )


def _trainer(root: Path, callbacks: list[Any], **kwargs: Any) -> L.Trainer:
    options: dict[str, Any] = {
        "max_epochs": 2,
        "limit_train_batches": 3,
        "limit_val_batches": 2,
        "limit_test_batches": 1,
        "logger": False,
        "enable_checkpointing": False,
    }
    options.update(kwargs)
    return L.Trainer(
        accelerator="cpu",
        default_root_dir=str(root),
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        callbacks=callbacks,
        **options,
    )


def _data() -> DigitsDataModule:
    return DigitsDataModule(image_size=8, batch_size=32)


def _fit(root: Path, callbacks: list[Any]) -> tuple[dict[str, Tensor], Tensor, dict[str, float]]:
    L.seed_everything(0, verbose=False)
    model = SimCLRDigits(width=8, dim=16)
    trainer = _trainer(root, callbacks)
    trainer.fit(model, datamodule=_data())
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("xai/")}
    return {k: v.clone() for k, v in model.state_dict().items()}, torch.rand(4), metrics


def test_training_with_the_monitor_is_bitwise_identical_to_training_without(tmp_path: Path) -> None:
    weights, stream, metrics = _fit(tmp_path / "with", [_monitor()])
    reference_weights, reference_stream, none = _fit(tmp_path / "without", [])
    assert metrics.keys() >= KEYS, sorted(metrics)
    assert not none
    assert weights.keys() == reference_weights.keys()
    for key, value in weights.items():
        assert torch.equal(value, reference_weights[key]), key
    assert torch.equal(stream, reference_stream)  # the global RNG stream after the fit


def test_resume_keeps_the_pairs_and_the_schedule(tmp_path: Path) -> None:
    first = _monitor(every_n_epochs=2)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    L.seed_everything(0, verbose=False)
    _trainer(tmp_path, [first, checkpoint], max_epochs=1, enable_checkpointing=True).fit(
        SimCLRDigits(width=8, dim=16), datamodule=_data()
    )
    assert first._pairs is not None and first._validated_epochs == 1
    resumed = _monitor(every_n_epochs=2)
    trainer = _trainer(tmp_path, [resumed], max_epochs=3)
    trainer.fit(SimCLRDigits(width=8, dim=16), datamodule=_data(), ckpt_path=str(tmp_path / "last.ckpt"))
    assert resumed._pairs is not None
    for ours, theirs in zip(resumed._pairs, first._pairs, strict=True):
        assert torch.equal(ours, theirs)
    assert resumed._validated_epochs == 3  # epochs 1 and 3 are monitored (every second validated epoch)
    assert trainer.callback_metrics.keys() >= KEYS


def test_validate_and_test_log_and_the_pair_heatmaps_reach_tensorboard(tmp_path: Path) -> None:
    monitor = _monitor(stages=("validate", "test"))
    logger = TensorBoardLogger(str(tmp_path), name="ssl")
    trainer = _trainer(tmp_path, [monitor], logger=logger)
    model = SimCLRDigits(width=8, dim=16)
    trainer.validate(model, datamodule=_data())
    assert trainer.callback_metrics.keys() >= KEYS
    trainer.test(model, datamodule=_data())
    assert trainer.callback_metrics.keys() >= KEYS
    logger.experiment.flush()
    pictures = save_pictures(logger.log_dir, str(tmp_path / "pictures"))
    names = {Path(path).name for path in pictures}
    assert names == {"similarity_ConditionalOcclusion_pair_heatmaps.png", "similarity_InteractionCAM_pair_heatmaps.png"}


@pytest.mark.slow  # a Lightning DDP fit (about 25 s on 2 cores); the metric states' DDP test is in the default run
@pytest.mark.ddp
def test_ddp_metrics_are_synchronised_over_both_ranks_pairs(tmp_path: Path) -> None:
    result = run_ddp_script(SCRIPT, tmp_path, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0, rank1 = load_rank_results(tmp_path)
    assert rank0["metrics"].keys() >= KEYS
    assert rank0["metrics"] == rank1["metrics"]
    assert not torch.equal(rank0["pairs"][0], rank1["pairs"][0])  # each rank probes its own shard
    # one process over both ranks' pairs with the final weights gives the logged, synchronised values
    model = SimCLRDigits(width=8, dim=16)
    model.load_state_dict(rank0["weights"])
    x1 = torch.cat([rank0["pairs"][0], rank1["pairs"][0]])
    x2 = torch.cat([rank0["pairs"][1], rank1["pairs"][1]])
    maps1, maps2 = ConditionalOcclusion(window=2, stride=2, baseline=-1.0).explain_pair(model, x1, x2)
    metric = SimilarityDeletionAUC(steps=4)
    metric.update(model, x1, x2, maps1, maps2)
    summary = metric.summary()
    key = "xai/similarity/ConditionalOcclusion/similarity_deletion_auc"
    assert rank0["metrics"][key] == pytest.approx(float(summary["similarity_deletion_auc"]), abs=1e-5)
    assert rank0["metrics"][key + "_stderr"] == pytest.approx(
        float(summary["similarity_deletion_auc_stderr"]), abs=1e-5
    )


@pytest.mark.slow
def test_a_torchvision_resnet18_embedding(tmp_path: Path) -> None:
    """resnet18(weights=None) with fc = Identity as the embedding, 32 px RGB pairs, every pair method."""
    import torchvision

    torch.manual_seed(0)
    backbone = torchvision.models.resnet18(weights=None)
    backbone.fc = torch.nn.Identity()
    images = torch.rand(3, 3, 32, 32)
    flip = lambda x, generator: torch.where(torch.rand(len(x), 1, 1, 1, generator=generator) < 0.5, x, x.flip(-1))  # noqa: E731
    monitor = SimilarityMonitor(
        augment=lambda x, g: flip(x, g) + 0.05 * torch.randn(x.shape, generator=g),
        explainers=[
            ConditionalOcclusion(window=8, stride=8),
            PairwiseOcclusion(window=8, stride=8),
            InteractionCAM(),  # default layer: layer4
        ],
        steps=4,
    )
    x1, x2 = monitor.make_pairs(images)
    for explainer in monitor.explainers.values():
        maps1, maps2 = explainer.explain_pair(backbone, x1, x2)
        assert maps1.shape == maps2.shape == (3, 1, 32, 32)
        assert float(maps1.std()) > 0 and float(maps2.std()) > 0
        metric = SimilarityDeletionAUC(steps=4)
        metric.update(backbone, x1, x2, maps1, maps2)
        assert torch.isfinite(metric.compute())
    assert all(p.grad is None for p in backbone.parameters())


def test_a_gate_judges_the_similarity_metrics_and_their_standard_errors(tmp_path: Path) -> None:
    """The logged keys are what FaithfulnessGate reads: a ceiling no map can meet fails the run at epoch 0,
    a ceiling every map meets passes, and ``confidence`` finds the ``_stderr`` key."""
    from lightning_xai import FaithfulnessGate
    from lightning_xai.callbacks import FaithfulnessRegressionError

    key = "xai/similarity/ConditionalOcclusion/similarity_deletion_auc"
    L.seed_everything(0, verbose=False)
    failing = FaithfulnessGate(key, mode="min", threshold=-0.5)  # a ceiling below any deletion AUC seen here
    with pytest.raises(FaithfulnessRegressionError, match="similarity_deletion_auc"):
        _trainer(tmp_path / "fail", [_monitor(), failing]).fit(SimCLRDigits(width=8, dim=16), datamodule=_data())

    L.seed_everything(0, verbose=False)
    passing = FaithfulnessGate(key, mode="min", threshold=1.5, confidence=0.95)
    trainer = _trainer(tmp_path / "pass", [_monitor(), passing])
    trainer.fit(SimCLRDigits(width=8, dim=16), datamodule=_data())
    assert f"{key}_stderr" in trainer.callback_metrics
    assert trainer.current_epoch == 2 and not trainer.should_stop
