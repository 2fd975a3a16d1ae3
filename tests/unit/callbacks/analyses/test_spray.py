"""SpectralRelevanceAnalysis on hand-built batches: region masses, the minimum cluster size, notices and errors."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lightning_xai.callbacks.analyses import ExplainedBatch, SpectralRelevanceAnalysis
from lightning_xai.functional import relevance_mass


class FakeContext:
    """The parts of EpochContext the analysis uses, recording what it logs."""

    def __init__(self, regions: dict[str, Tensor], pictures: bool = False) -> None:
        self.regions = regions
        self.logged: dict[str, float] = {}
        self.images: dict[str, Tensor] = {}
        self.pictures = type("Pictures", (), {"active": pictures})()

    def log(self, values: dict[str, Tensor], sync_dist: bool = False) -> None:
        self.logged.update({key: float(value) for key, value in values.items()})

    def image(self, key: str, image: Tensor) -> None:
        self.images[key] = image


def _batch(maps: Tensor, groups: Tensor | None) -> ExplainedBatch:
    inputs = torch.zeros(maps.shape[0], 1, *maps.shape[-2:])
    target = torch.zeros(maps.shape[0], dtype=torch.long)
    return ExplainedBatch(nn.Identity(), inputs, maps, target, groups, groups, probe=False)


def _label_maps(n: int, marked: int, seed: int) -> Tensor:
    """``n`` maps on the digit area; the first ``marked`` of them also on the bottom-right corner."""
    generator = torch.Generator().manual_seed(seed)
    maps = torch.rand(n, 1, 16, 16, generator=generator) * 0.2
    maps[:, :, 2:12, 4:12] += 1.0 + torch.rand(n, 1, 10, 8, generator=generator)
    maps[:marked, :, -4:, -4:] += 6.0
    return maps


CORNER = torch.zeros(16, 16)
CORNER[-4:, -4:] = 1.0


def test_region_masses_are_the_clusters_mean_per_sample_mass() -> None:
    analysis = SpectralRelevanceAnalysis(num_labels=2, n_neighbors=5)
    maps = torch.cat([_label_maps(40, 12, seed=0), _label_maps(30, 0, seed=1)])
    groups = torch.cat([torch.zeros(40), torch.ones(30)]).long()
    analysis.update(_batch(maps[:50], groups[:50]))
    analysis.update(_batch(maps[50:], groups[50:]))
    context = FakeContext({"corner": CORNER}, pictures=True)
    analysis.log(context)  # type: ignore[arg-type]
    result = analysis.metric.compute()[0]
    assert result.n_clusters == 2 and result.cluster_sizes.tolist() == [28, 12]
    per_sample = relevance_mass(maps[:40], CORNER)  # the reference: Quantus-checked relevance mass, full resolution
    expected = [float(per_sample[result.labels == c].mean()) for c in range(2)]
    assert analysis.last[0]["masses"]["corner"] == pytest.approx(expected, abs=1e-5)
    assert context.logged["spray_relevance_mass_corner/0"] == pytest.approx(max(expected), abs=1e-5)
    assert context.logged["spray_relevance_mass_corner_max"] == pytest.approx(max(expected), abs=1e-5)
    assert context.logged["spray/n_clusters/0"] == 2.0 and context.logged["spray/n_clusters/1"] == 1.0
    assert context.logged["spray/eigengap/0"] == pytest.approx(float(result.eigengap))
    image = context.images["spray/clusters/0"]
    assert image.shape[0] == 3 and float(image.min()) >= 0.0 and float(image.max()) <= 1.0


def test_clusters_below_the_minimum_size_do_not_count() -> None:
    maps = _label_maps(40, 4, seed=2)  # 4 odd maps of 40: below max(5, 10 %)
    groups = torch.zeros(40, dtype=torch.long)
    strict = SpectralRelevanceAnalysis(num_labels=1, n_neighbors=3, min_cluster_size=5)
    loose = SpectralRelevanceAnalysis(num_labels=1, n_neighbors=3, min_cluster_size=1, min_cluster_fraction=0.0)
    for analysis in (strict, loose):
        analysis.update(_batch(maps, groups))
    strict_context, loose_context = FakeContext({"corner": CORNER}), FakeContext({"corner": CORNER})
    strict.log(strict_context)  # type: ignore[arg-type]
    loose.log(loose_context)  # type: ignore[arg-type]
    assert strict.last[0]["cluster_sizes"][-1] == 4  # the odd maps are found as a cluster ...
    assert loose_context.logged["spray_relevance_mass_corner_max"] > 0.3  # ... and would trip a gate
    assert strict_context.logged["spray_relevance_mass_corner_max"] < 0.1  # ... but do not count
    assert strict.minimum_size(40) == 5 and strict.minimum_size(100) == 10


def test_multi_hot_groups_feed_each_positive_label() -> None:
    analysis = SpectralRelevanceAnalysis(num_labels=3, n_neighbors=5)
    maps = _label_maps(30, 10, seed=3)
    groups = torch.zeros(30, 3, dtype=torch.long)
    groups[:, 0] = 1
    groups[:15, 2] = 1
    analysis.update(_batch(maps, groups))
    context = FakeContext({})
    analysis.log(context)  # type: ignore[arg-type]
    assert sorted(analysis.last) == [0, 2]
    assert sum(analysis.last[0]["cluster_sizes"]) == 30 and sum(analysis.last[2]["cluster_sizes"]) == 15
    assert "spray/n_clusters/2" in context.logged and "spray/n_clusters/1" not in context.logged


def test_notices_instead_of_crashes_and_errors_for_bad_arguments() -> None:
    analysis = SpectralRelevanceAnalysis(num_labels=2, n_neighbors=5)
    with pytest.warns(UserWarning, match="no labels to group the maps by"):
        analysis.update(_batch(torch.rand(4, 1, 8, 8), None))
    maps = _label_maps(20, 0, seed=4)
    maps[3] = float("nan")
    with pytest.warns(UserWarning, match="1 maps with NaN or inf values were left out"):
        analysis.update(_batch(maps, torch.zeros(20, dtype=torch.long)))
    assert int(analysis.metric.seen) == 19
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # each notice once
        analysis.update(_batch(maps, torch.zeros(20, dtype=torch.long)))
    empty = SpectralRelevanceAnalysis(num_labels=2, n_neighbors=5)
    context = FakeContext({})
    with pytest.warns(UserWarning, match="no label had enough maps"):
        empty.log(context)  # type: ignore[arg-type]
    assert context.logged == {}
    with pytest.raises(ValueError, match=r"class indices \[7\] outside the valid range 0..1"):
        analysis.update(_batch(torch.rand(2, 1, 8, 8), torch.tensor([0, 7])))
    bad: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"n_neighbors": 0}, ValueError, "`n_neighbors` must be an int >= 1"),
        ({"min_cluster_fraction": 1.5}, ValueError, r"`min_cluster_fraction` must lie in \[0.0, 1.0\]"),
        ({"min_cluster_size": 0}, ValueError, "`min_cluster_size` must be an int >= 1"),
        ({"samples": "all"}, ValueError, "`samples` must be one of"),
        ({"size": (16,)}, ValueError, "`size` must be a pair"),
        ({"max_clusters": 2, "max_per_label": 5}, ValueError, "`max_per_label` must be at least"),
    ]
    for kwargs, error, message in bad:
        with pytest.raises(error, match=message):
            SpectralRelevanceAnalysis(num_labels=2, **kwargs)
