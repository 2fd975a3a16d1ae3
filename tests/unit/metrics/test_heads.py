"""Binary single-logit and multi-label heads: the score each metric and black-box explainer reads (issue 15 item 3).

References: hand-computed scores (a per-sample loop with a callable sigmoid target), a model whose evidence we
built (one region decides the logit), and a numpy loop for the multi-hot global maps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from lightning_xai._targets import class_scores, predicted_correct
from lightning_xai.explainers import RISE, SIDU, ScoreCAM, Sobol
from lightning_xai.functional import deletion_curve
from lightning_xai.metrics import DeletionAUC, GlobalAttribution, InsertionAUC
from tests.helpers.models import region_mask


class BinaryRegionModel(nn.Module):
    """One logit ``(B, 1)``: ``scale * (mean of channel 0 over a square region - 0.25)``; nothing else matters."""

    def __init__(self, size: int = 16, scale: float = 8.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, kernel_size=1)  # channel 0 is read; 1 and 2 give SIDU distinct masks
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 1.2, 1.5]).view(3, 1, 1, 1))
            self.conv.bias.zero_()
        self.register_buffer("mask", region_mask(size, size, top=2, left=2, size=5))
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv(x))[:, 0]
        evidence = (h * self.mask).sum(dim=(1, 2)) / self.mask.sum()
        return self.scale * (evidence[:, None] - 0.25)


def test_single_logit_head_is_scored_by_its_sigmoid_not_a_softmax_of_one() -> None:
    logits = torch.tensor([[-3.0], [0.0], [4.0]])
    torch.testing.assert_close(class_scores(logits, "probability"), torch.sigmoid(logits))
    torch.testing.assert_close(class_scores(logits, "log_probability"), torch.log(torch.sigmoid(logits)))
    torch.testing.assert_close(class_scores(logits, "softmax"), torch.ones_like(logits))  # asked for explicitly
    torch.testing.assert_close(class_scores(logits, "logit"), logits)
    assert predicted_correct(logits, torch.zeros(3, dtype=torch.long), "probability").tolist() == [0.0, 0.0, 1.0]


def test_binary_head_deletion_is_below_insertion_for_the_true_region() -> None:
    # Before the fix the softmax of one logit made both AUCs exactly 1.0 for any model and any map.
    model, inputs = BinaryRegionModel(), torch.rand(4, 1, 16, 16) * 0.5 + 0.5
    target = torch.zeros(4, dtype=torch.long)
    faithful = region_mask(16, 16, top=2, left=2, size=5).expand(4, 1, 16, 16).clone()
    deletion = DeletionAUC(steps=16, batch_size=32)
    insertion = InsertionAUC(steps=16, baseline=0.0, batch_size=32)
    deletion.update(model, inputs, faithful, target)
    insertion.update(model, inputs, faithful, target)
    assert float(deletion.compute()) < 0.3 < 0.7 < float(insertion.compute())
    anti = 1.0 - faithful
    deletion.reset()
    deletion.update(model, inputs, anti, target)
    assert float(deletion.compute()) > 0.6  # the region is deleted last


def test_binary_head_rise_map_peaks_in_the_region() -> None:
    model, inputs = BinaryRegionModel(), torch.rand(2, 1, 16, 16) * 0.5 + 0.5
    maps = RISE(n_masks=400, grid_size=4, batch_size=200)(model, inputs, torch.zeros(2, dtype=torch.long))
    inside = region_mask(16, 16, top=2, left=2, size=5).bool()
    assert bool((maps[:, 0][:, inside].mean(1) > maps[:, 0][:, ~inside].mean(1) + 0.05).all())
    assert all(bool(inside.flatten()[int(m.argmax())]) for m in maps[:, 0].flatten(1))
    assert float(maps.std()) > 0  # a softmax of one logit gave a constant map


@pytest.mark.parametrize(
    "explainer", [ScoreCAM(layer="conv"), SIDU(layer="conv", threshold=0.9), Sobol(grid_size=4, n_design=32)]
)
def test_black_box_explainers_depend_on_a_binary_model(explainer) -> None:
    model, inputs = BinaryRegionModel(), torch.rand(2, 1, 16, 16) * 0.5 + 0.5
    maps = explainer(model, inputs, torch.zeros(2, dtype=torch.long))
    assert float(maps.flatten(1).std(1).min()) > 0


def test_multi_label_sigmoid_scores_equal_a_hand_loop() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5)
    )
    inputs, attributions = torch.rand(4, 3, 8, 8), torch.rand(4, 1, 8, 8)
    labels = torch.tensor([0, 3, 3, 4])  # one row per (image, positive label) pair
    curves = deletion_curve(model, inputs, attributions, labels, steps=4, score="sigmoid")
    for row in range(4):
        label = int(labels[row])
        expected = deletion_curve(
            model,
            inputs[row : row + 1],
            attributions[row : row + 1],
            lambda out, c=label: torch.sigmoid(out[:, c]),
            steps=4,
        )
        torch.testing.assert_close(curves[row : row + 1], expected)
    softmax = deletion_curve(model, inputs, attributions, labels, steps=4, score="probability")
    assert not torch.allclose(curves, softmax)


def test_global_attribution_metric_aggregates_multi_hot_labels_per_label() -> None:
    generator = torch.Generator().manual_seed(3)
    batches = [(torch.rand(5, 1, 4, 4, generator=generator), (torch.rand(5, 3, generator=generator) > 0.5).long())]
    batches.append(
        (torch.rand(4, 1, 4, 4, generator=generator), torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 1], [0, 1, 0]]))
    )
    metric = GlobalAttribution(num_labels=3)
    for maps, labels in batches:
        metric.update(maps, labels)
    result = metric.compute()
    per_label: list[list[np.ndarray]] = [[], [], []]
    for maps, labels in batches:
        for image, row in zip(maps.double().numpy(), labels.numpy(), strict=True):
            for label in np.flatnonzero(row):
                per_label[label].append(image[0] / image[0].sum())
    for label in range(3):
        np.testing.assert_allclose(result["per_label"][label, 0].numpy(), np.mean(per_label[label], axis=0), rtol=1e-5)
    np.testing.assert_array_equal(result["count"].numpy(), [len(m) for m in per_label])


def _multi_label_setup():
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 3)
    )
    inputs = torch.rand(6, 1, 6, 6)
    labels = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 1]])
    return model.eval(), inputs, labels, torch.rand(3, 1, 6, 6)


def test_peppr_multi_hot_labels_give_per_label_sigmoid_aucs() -> None:
    from lightning_xai.functional import peppr
    from lightning_xai.metrics import PEPPR

    model, inputs, labels, per_label_map = _multi_label_setup()
    result = peppr(model, inputs, labels, per_label_map, steps=4)
    for label in range(3):
        rows = labels[:, label].bool()
        alone = peppr(
            model, inputs[rows], torch.full((int(rows.sum()),), label), per_label_map, steps=4, score="sigmoid"
        )
        for key in ("erasing_auc", "restoration_auc", "peppr", "restoration_accuracy_auc", "random_erasing_auc"):
            prefix, name = ("random_", key[7:]) if key.startswith("random_") else ("", key)
            torch.testing.assert_close(result[f"{prefix}per_label_{name}"][label], alone[key])
        with torch.no_grad():  # hand-computed first point: the unperturbed per-label sigmoid score
            expected = torch.sigmoid(model(inputs[rows])[:, label]).mean()
        torch.testing.assert_close(alone["erasing_curve"][0], expected)
    assert result["per_label_count"].tolist() == [3.0, 3.0, 3.0]
    metric = PEPPR(per_label_map, steps=4, num_labels=3)
    metric.update(model, inputs[:3], labels[:3])
    metric.update(model, inputs[3:], labels[3:])
    computed = metric.compute()
    for key in ("per_label_erasing_auc", "per_label_restoration_auc", "per_label_peppr", "peppr"):
        torch.testing.assert_close(computed[key], result[key])
    with pytest.raises(ValueError, match="num_labels = 3 columns"):
        metric.update(model, inputs, labels[:, :2])
    unseen = PEPPR(per_label_map, steps=4, num_labels=3)
    unseen.update(model, inputs[:2], torch.tensor([[1, 0, 0], [1, 0, 0]]))
    assert torch.isnan(unseen.compute()["per_label_peppr"][1:]).all()
