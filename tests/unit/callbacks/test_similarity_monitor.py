"""SimilarityMonitor's arguments and its seeded views (the Trainer runs are in tests/integration)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from examples.ssl_digits import SimCLRDigits, augment
from lightning_xai import SimilarityMonitor
from lightning_xai.metrics import SimilarityDeletionAUC
from tests.integration.test_similarity_monitor import _data, _monitor, _trainer


def test_bad_arguments_and_bad_augmentations_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="`augment` must be a callable"):
        SimilarityMonitor(augment=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="PairExplainer"):
        SimilarityMonitor(augment=augment, explainers=[object()])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="`metrics` must be one of"):
        SimilarityMonitor(augment=augment, metrics=["deletion_auc"])
    with pytest.raises(ValueError, match="names a metric twice"):
        SimilarityMonitor(augment=augment, metrics=["similarity_deletion_auc", SimilarityDeletionAUC()])
    crop = lambda images, generator: images[..., : 4 + int(torch.randint(2, (1,), generator=generator))]  # noqa: E731
    monitor = SimilarityMonitor(augment=crop, inputs=torch.rand(4, 1, 8, 8))
    with pytest.raises(ValueError, match="same shape"):
        monitor.make_pairs(torch.rand(4, 1, 8, 8))
    trainer = _trainer(tmp_path, [_monitor(stages=("validate",), forward_fn=lambda module, x: module(x)[:, None])])
    with pytest.raises(ValueError, match=r"embeddings of shape \(B, D\)"):
        trainer.validate(SimCLRDigits(width=8, dim=16), datamodule=_data())


def test_the_views_are_seeded_and_the_global_stream_is_untouched() -> None:
    monitor = SimilarityMonitor(augment=augment, seed=3)
    images = torch.rand(5, 1, 8, 8)
    state = torch.get_rng_state()
    x1, x2 = monitor.make_pairs(images)
    assert torch.equal(state, torch.get_rng_state())
    again1, again2 = SimilarityMonitor(augment=augment, seed=3).make_pairs(images)
    assert torch.equal(x1, again1) and torch.equal(x2, again2) and not torch.equal(x1, x2)
    global_draw = lambda images, generator: images + torch.rand(images.shape)  # noqa: E731 - ignores the generator
    SimilarityMonitor(augment=global_draw).make_pairs(images)
    assert torch.equal(state, torch.get_rng_state())
