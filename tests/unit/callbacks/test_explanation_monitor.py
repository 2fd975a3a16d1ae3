"""ExplanationMonitor's argument checks: each bad value is refused with a message naming it and what is accepted."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lightning_xai import ExplanationMonitor
from lightning_xai.explainers import Saliency
from lightning_xai.metrics import DeletionAUC, InsertionAUC


def _region() -> Tensor:
    mask = torch.zeros(8, 8)
    mask[:2, :2] = 1
    return mask


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"metrics": DeletionAUC()}, TypeError, r"`metrics` must be a list .* got a single DeletionAUC; wrap it"),
        ({"metrics": [DeletionAUC(), "x"]}, TypeError, r"`metrics\[1\]` must be a lightning_xai FaithfulnessMetric"),
        ({"stages": "fit"}, TypeError, r"`stages` must be a list of any of .*such as \['fit'\], got 'fit'"),
        ({"stages": []}, ValueError, r"`stages` must name at least one of"),
        ({"regions": _region()}, TypeError, r"`regions` must be a dict name -> \(H, W\) 0/1 mask.*got Tensor"),
        ({"regions": {"empty": torch.zeros(8, 8)}}, ValueError, r"`regions\['empty'\]` is all zero"),
        ({"track_drift": "no"}, TypeError, r"`track_drift` must be True or False, got 'no'"),
        ({"log_curves": 0}, TypeError, r"`log_curves` must be True or False"),
        ({"class_balanced": "yes"}, TypeError, r"`class_balanced` must be True or False"),
        ({"target": "labels"}, ValueError, r"`target`"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ExplanationMonitor(Saliency(), **kwargs)


def test_two_metrics_with_one_name_are_refused() -> None:
    # Regression: they were accepted and averaged under one key.
    with pytest.raises(ValueError, match="more than one entry with the metric `name` 'deletion_auc'"):
        ExplanationMonitor(Saliency(), metrics=[DeletionAUC(steps=4), DeletionAUC(steps=8)])
    renamed = DeletionAUC(steps=8)
    renamed.name = "deletion_auc_8"
    monitor = ExplanationMonitor(Saliency(), metrics=[DeletionAUC(steps=4), renamed, InsertionAUC()])
    assert [metric.name for metric in monitor.metrics["Saliency"]] == [
        "deletion_auc",
        "deletion_auc_8",
        "insertion_auc",
    ]


class _DictModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"logits": self.conv(x).mean(dim=(2, 3))}


def test_unpack_refuses_what_is_not_an_image_batch() -> None:
    monitor = ExplanationMonitor(Saliency())
    with pytest.raises(ValueError, match=r"must have shape \(B, C, H, W\).*got shape \(2, 8, 8\)"):
        monitor._unpack((torch.rand(2, 8, 8), torch.tensor([0, 1])), limit=2)
    with pytest.raises(TypeError, match=r"must be a floating-point tensor, got dtype torch\.uint8"):
        monitor._unpack((torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1])), limit=2)


def test_multi_label_target_modes_expand_one_row_per_label() -> None:
    inputs = torch.rand(3, 1, 8, 8)
    labels = torch.tensor([[1, 0, 1], [0, 0, 0], [0, 1, 0]])
    monitor = ExplanationMonitor(Saliency(), target="positive_labels")
    rows, target, row_labels, samples, _ = monitor._resolve(nn.Identity(), inputs, labels)
    assert torch.equal(rows, inputs[[0, 0, 2]]) and samples.tolist() == [0, 0, 2]
    assert target.tolist() == [0, 2, 1] and row_labels.tolist() == [0, 2, 1]  # type: ignore[union-attr]
    logits = torch.tensor([[2.0, -1.0, 0.5], [-1.0, -1.0, -1.0], [-3.0, 1.0, -2.0]])

    class Fixed(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return logits

    monitor = ExplanationMonitor(Saliency(), target="predicted_labels")
    rows, target, _, _, _ = monitor._resolve(Fixed(), inputs, None)
    assert target.tolist() == [0, 2, 1] and rows.shape[0] == 3  # type: ignore[union-attr]
    with pytest.raises(ValueError, match=r"needs multi-hot labels of shape \(B, L\)"):
        ExplanationMonitor(Saliency(), target="positive_labels")._resolve(Fixed(), inputs, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"for multi-hot labels \(B, L\) use target='positive_labels'"):
        ExplanationMonitor(Saliency(), target="label")._resolve(Fixed(), inputs, labels)


def test_a_dict_output_gets_an_error_that_names_forward_fn() -> None:
    monitor = ExplanationMonitor(Saliency())
    with pytest.raises(ValueError, match=r"needs model outputs of shape \(B, num_classes\), got dict.*forward_fn"):
        monitor._resolve(_DictModel(), torch.rand(2, 1, 8, 8), None)


@pytest.mark.parametrize("explainer", ["Saliency", "GradCAM", "RISE"])
def test_a_dict_output_with_class_indices_names_forward_fn_in_every_explainer(explainer: str) -> None:
    # Regression: target="label" with a dict-returning forward gave AttributeError: 'dict' object has no 'ndim'.
    from lightning_xai import explainers

    method = explainers.RISE(n_masks=4) if explainer == "RISE" else getattr(explainers, explainer)()
    with pytest.raises(TypeError, match=r"returned dict; pass `forward_fn`"):
        method(_DictModel(), torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))
