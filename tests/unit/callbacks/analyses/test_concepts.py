"""ConceptAnalysis on its own: the table, the drift against scipy's Spearman, the state for resume, the grid."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pytest
import torch
from scipy.stats import spearmanr
from torch import Tensor, nn

from lightning_xai.callbacks.analyses import ConceptAnalysis, ExplainedBatch
from lightning_xai.callbacks.analyses.concepts import concept_grid, concept_table
from lightning_xai.explainers import ConceptRelevance
from tests.unit.explainers.test_concept_relevance import PatchDetector, patch_images


@dataclass
class Pictures:
    active: bool = True


@dataclass
class StubContext:
    """What ConceptAnalysis.log uses of an EpochContext, recording what it logs."""

    model: nn.Module
    probe_inputs: Tensor | None = None
    probe_target: Any = None
    pictures: Pictures = field(default_factory=Pictures)
    scalars: dict[str, Tensor] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    images: dict[str, Tensor] = field(default_factory=dict)

    def log(self, values: dict[str, Tensor], sync_dist: bool = False) -> None:
        self.scalars.update(values)

    def text(self, key: str, text: str) -> None:
        self.texts[key] = text

    def image(self, key: str, image: Tensor) -> None:
        self.images[key] = image


def feed(analysis: ConceptAnalysis, relevances: Tensor, labels: Tensor) -> None:
    analysis.reset()
    analysis.global_concepts.update(relevances, labels)


def test_drift_is_scipys_spearman_per_label_and_survives_a_resume() -> None:
    generator = torch.Generator().manual_seed(0)
    first, second = torch.rand(6, 5, generator=generator), torch.rand(6, 5, generator=generator)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    analysis = ConceptAnalysis(layer="features", num_labels=4, top_k=2, grid_samples=0, normalize=False)
    context = StubContext(model=PatchDetector())
    feed(analysis, first, labels)
    analysis.log(context)  # type: ignore[arg-type]
    assert context.scalars == {}  # no previous epoch yet
    assert "| 0 | 2 | ch " in context.texts["concepts/top"] and "| 3 |" not in context.texts["concepts/top"]
    resumed = ConceptAnalysis(layer="features", num_labels=4, top_k=2, grid_samples=0, normalize=False)
    resumed.load_state_dict(copy.deepcopy(analysis.state_dict()))
    for run in (analysis, resumed):
        context = StubContext(model=PatchDetector())
        feed(run, second, torch.tensor([0, 0, 1, 1, 3, 3]))  # label 2 not seen now, label 3 not seen before
        run.log(context)  # type: ignore[arg-type]
        expected = {
            label: spearmanr(second[rows].mean(0).numpy(), first[rows].mean(0).numpy()).statistic
            for label, rows in ((0, [0, 1]), (1, [2, 3]))
        }
        assert set(context.scalars) == {"concept_drift/0", "concept_drift/1", "concept_drift", "concept_drift_min"}
        for label, value in expected.items():
            assert float(context.scalars[f"concept_drift/{label}"]) == pytest.approx(value, abs=1e-9)
        assert float(context.scalars["concept_drift"]) == pytest.approx(sum(expected.values()) / 2, abs=1e-9)
        assert float(context.scalars["concept_drift_min"]) == pytest.approx(min(expected.values()), abs=1e-9)
    # the same vectors again: a drift of exactly 1
    context = StubContext(model=PatchDetector())
    feed(analysis, second, torch.tensor([0, 0, 1, 1, 3, 3]))
    analysis.log(context)  # type: ignore[arg-type]
    assert float(context.scalars["concept_drift"]) == 1.0


def test_update_runs_crp_on_the_batch_and_groups_by_the_monitor_labels() -> None:
    model = PatchDetector().eval()
    images, _ = patch_images(4)
    target = torch.ones(4, dtype=torch.long)
    analysis = ConceptAnalysis(layer="features", num_labels=3, top_k=2)
    maps = torch.zeros(4, 1, 16, 16)
    analysis.update(ExplainedBatch(model, images, maps, target, target, groups=target, probe=False))
    analysis.update(ExplainedBatch(model, images, maps, target, target, groups=None, probe=False))  # nothing to group
    result = analysis.global_concepts.compute()
    assert result["count"].tolist() == [0, 4, 0]
    reference = ConceptRelevance("features").channel_relevance(model, images, target)
    reference = reference / reference.abs().sum(1, keepdim=True)
    torch.testing.assert_close(result["per_label"][1], reference.mean(0))
    assert int(result["per_label"][1].argmax()) == 2  # the patch channel leads class 1


def test_grid_shows_each_probe_images_top_concepts(tmp_path: Path) -> None:
    model = PatchDetector().eval()
    images, _ = patch_images(3, seed=2)
    analysis = ConceptAnalysis(layer="features", num_labels=3, top_k=3, grid_samples=2)
    analysis.global_concepts.update(torch.rand(3, 4), torch.tensor([1, 1, 1]))
    context = StubContext(model=model, probe_inputs=images)  # no probe target given: the predicted class
    analysis.log(context)  # type: ignore[arg-type]
    grid = context.images["concepts/heatmaps"]
    assert grid.ndim == 3 and grid.shape[0] == 3 and float(grid.min()) >= 0 and float(grid.max()) <= 1
    plt.imsave(tmp_path / "concepts.png", grid.permute(1, 2, 0).numpy())
    concepts = ConceptRelevance("features", top_k=3).concepts(model, images[:2], torch.ones(2, dtype=torch.long))
    torch.testing.assert_close(concept_grid(images[:2], concepts, torch.ones(2, dtype=torch.long)), grid)
    # without an active picture logger nothing is drawn
    quiet = StubContext(model=model, probe_inputs=images, pictures=Pictures(active=False))
    analysis.log(quiet)  # type: ignore[arg-type]
    assert quiet.images == {} and "concepts/top" in quiet.texts


def test_table_names_labels_and_bad_arguments_are_named() -> None:
    table = concept_table(
        torch.tensor([[0.1, 0.7], [0.0, 0.0]]), torch.tensor([5, 0]), top=3, label_names=["cat", "dog"]
    )
    assert table.splitlines() == [
        "| label | samples | concept 1 | concept 2 |",
        "|---|---|---|---|",
        "| cat | 5 | ch 1 (0.700) | ch 0 (0.100) |",
    ]
    with pytest.raises(ValueError, match=r"`label_names` must be a list of 3 names or None, got \['a'\]"):
        ConceptAnalysis(layer="features", num_labels=3, label_names=["a"])
    with pytest.raises(ValueError, match="`grid_samples` must be an int >= 0, got -1"):
        ConceptAnalysis(layer="features", num_labels=3, grid_samples=-1)
    with pytest.raises(ValueError, match="`composite` must be one of"):
        ConceptAnalysis(layer="features", num_labels=3, composite="lrp")


def test_multi_label_groups_and_a_single_logit_head() -> None:
    """Multi-hot aggregation labels count a sample for each positive label; a (B, 1) head's probe falls back to
    index 0 (the only logit)."""
    detector = PatchDetector().eval()
    images, _ = patch_images(3)
    target = torch.ones(3, dtype=torch.long)
    analysis = ConceptAnalysis(layer="features", num_labels=3, top_k=2, grid_samples=1)
    groups = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 1]])
    analysis.update(ExplainedBatch(detector, images, torch.zeros(3, 1, 16, 16), target, groups, groups, probe=False))
    assert analysis.global_concepts.compute()["count"].tolist() == [2, 2, 1]
    binary = PatchDetector().eval()
    binary.fc = nn.Linear(4, 1)  # a single-logit head; the layer names stay the same
    context = StubContext(model=binary, probe_inputs=images)
    analysis.log(context)  # type: ignore[arg-type]
    assert context.images["concepts/heatmaps"].shape[0] == 3
