"""GlobalConceptRelevance against a per-sample loop, over batches, reset, errors, and 2 gloo processes == one."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from lightning_xai.explainers import ConceptRelevance
from lightning_xai.functional import global_concept_relevance
from lightning_xai.metrics import GlobalConceptRelevance
from tests.helpers.ddp import run_distributed
from tests.helpers.models import primed_residual_cnn


def loop_reference(relevances: Tensor, labels: Tensor, num_labels: int, normalize: bool) -> Tensor:
    """Mean per label, one sample at a time in float64 (multi-hot rows count for each positive label)."""
    sums = torch.zeros(num_labels, relevances.shape[1], dtype=torch.float64)
    counts = torch.zeros(num_labels, dtype=torch.float64)
    for row, label in zip(relevances.double(), labels, strict=True):
        if normalize and row.abs().sum() > 0:
            row = row / row.abs().sum()
        positives = [int(label)] if label.ndim == 0 else label.nonzero().flatten().tolist()
        for positive in positives:
            sums[positive] += row
            counts[positive] += 1
    return (sums / counts.clamp(min=1).view(-1, 1)).float()


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("multi", [False, True])
def test_matches_a_per_sample_loop_over_several_updates(normalize: bool, multi: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    relevances = torch.randn(10, 5, generator=generator)
    relevances[3] = 0.0  # an all-zero row stays zero under normalisation
    labels = (torch.rand(10, 4, generator=generator) > 0.5).long() if multi else torch.tensor([0, 2, 2, 1, 0] * 2)
    expected = loop_reference(relevances, labels, 4, normalize)
    metric = GlobalConceptRelevance(num_labels=4, normalize=normalize)
    for start in range(0, 10, 3):
        metric.update(relevances[start : start + 3], labels[start : start + 3])
    result = metric.compute()
    torch.testing.assert_close(result["per_label"], expected)
    torch.testing.assert_close(global_concept_relevance(relevances, labels, 4, normalize)["per_label"], expected)
    counts = labels.sum(0) if multi else torch.bincount(labels, minlength=4)
    assert result["count"].tolist() == counts.tolist()
    # a second epoch starts from zero, keeps the channel count, and forward returns the batch alone
    metric.reset()
    assert metric.num_channels == 5 and metric.compute()["count"].sum() == 0
    batch = metric(relevances[:4], labels[:4])
    torch.testing.assert_close(batch["per_label"], loop_reference(relevances[:4], labels[:4], 4, normalize))


def test_bad_input_is_named() -> None:
    metric = GlobalConceptRelevance(num_labels=3)
    with pytest.raises(RuntimeError, match=r"compute\(\) was called before any update"):
        metric.compute()
    with pytest.raises(ValueError, match=r"`relevances` must have shape \(B, C\)"):
        metric.update(torch.rand(2, 3, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"`labels` holds class indices \[3\] outside the valid range 0\.\.2"):
        metric.update(torch.rand(2, 4), torch.tensor([0, 3]))
    metric.update(torch.rand(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="must keep the 4 channels of the earlier updates"):
        metric.update(torch.rand(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="`relevances` holds non-finite values"):
        metric.update(torch.tensor([[float("nan"), 1.0, 0.0, 0.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="`num_labels` must be an int >= 1, got 0"):
        GlobalConceptRelevance(num_labels=0)
    with pytest.raises(TypeError, match="`normalize` must be a bool"):
        GlobalConceptRelevance(num_labels=2, normalize="abs")  # type: ignore[arg-type]


SPLITS = ((0, 7), (7, 11))  # rank 0 gets 7 samples, rank 1 gets 4


def _data() -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "inputs": torch.randn(11, 3, 8, 8, generator=generator),
        "labels": torch.tensor([0, 1, 0, 1, 0, 0, 1, 2, 2, 1, 0]),  # label 2 only on rank 1, label 3 nowhere
        "multi_labels": (torch.rand(11, 4, generator=generator) > 0.5).long(),
    }


def _results(data: dict[str, Tensor], start: int, stop: int, sized_range: tuple[int, int]) -> dict[str, Any]:
    torch.manual_seed(0)  # the same weights in every process
    model = primed_residual_cnn()
    explainer = ConceptRelevance("head_conv", top_k=3)
    single, multi = GlobalConceptRelevance(num_labels=4), GlobalConceptRelevance(num_labels=4, normalize=False)
    sized = GlobalConceptRelevance(num_labels=4, num_channels=8)  # sized up front: a rank may see nothing
    for offset in range(start, stop, 3):  # several updates per rank, channel relevances from a real CRP run
        end = min(offset + 3, stop)
        inputs, labels = data["inputs"][offset:end], data["labels"][offset:end]
        relevances = explainer.channel_relevance(model, inputs, labels)
        single.update(relevances, labels)
        multi.update(relevances, data["multi_labels"][offset:end])
    for offset in range(*sized_range, 4):
        end = min(offset + 4, sized_range[1])
        inputs, labels = data["inputs"][offset:end], data["labels"][offset:end]
        sized.update(explainer.channel_relevance(model, inputs, labels), labels)
    return {"single": single.compute(), "multi": multi.compute(), "sized": sized.compute()}


def _worker(rank: int, world_size: int) -> dict[str, Any]:
    start, stop = SPLITS[rank]
    return _results(_data(), start, stop, sized_range=(0, 11) if rank == 0 else (0, 0))  # rank 1: no sample


@pytest.mark.ddp
def test_two_gloo_processes_give_the_single_process_result() -> None:
    expected = _results(_data(), 0, 11, sized_range=(0, 11))
    assert int(expected["single"]["count"].sum()) == 11 and expected["single"]["per_label"].abs().sum() > 0
    for result in run_distributed(_worker, world_size=2):
        for key in ("single", "multi", "sized"):
            torch.testing.assert_close(result[key]["per_label"], expected[key]["per_label"], rtol=1e-6, atol=1e-8)
            assert result[key]["count"].tolist() == expected[key]["count"].tolist()
