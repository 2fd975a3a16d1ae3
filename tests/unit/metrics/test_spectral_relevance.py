"""SpectralRelevance: the functional on each label's maps, the per-label bound, multi-hot labels, DDP == one process."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lightning_xai.functional import spectral_relevance
from lightning_xai.metrics import SpectralRelevance
from tests.helpers.ddp import run_distributed


def _data(n: int = 90, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three labels; label 1 holds two strategies (left or right column), the others noise."""
    generator = torch.Generator().manual_seed(seed)
    maps = torch.rand(n, 1, 16, 16, generator=generator)
    labels = torch.arange(n) % 3
    right = (torch.arange(n) // 3) % 2 == 1
    maps[(labels == 1) & right, :, :, -4:] += 4.0
    maps[(labels == 1) & ~right, :, :, :4] += 4.0
    return maps, labels


def _assert_same(result: Any, reference: Any) -> None:
    assert result.n_clusters == reference.n_clusters
    assert torch.equal(result.labels, reference.labels)
    assert torch.equal(result.cluster_sizes, reference.cluster_sizes)
    torch.testing.assert_close(result.eigenvalues, reference.eigenvalues)
    torch.testing.assert_close(result.cluster_means, reference.cluster_means)


def test_compute_is_the_functional_on_each_labels_maps_in_order() -> None:
    maps, labels = _data()
    metric = SpectralRelevance(num_labels=4, n_neighbors=5)
    for start in range(0, 90, 32):
        metric.update(maps[start : start + 32], labels[start : start + 32])
    results = metric.compute()
    assert list(results) == [0, 1, 2]  # label 3 was never seen
    for label, result in results.items():
        _assert_same(result, spectral_relevance(maps[labels == label], n_neighbors=5))
    assert results[1].n_clusters == 2 and results[1].cluster_sizes.tolist() == [15, 15]


def test_each_label_keeps_its_first_max_per_label_maps() -> None:
    maps, labels = _data()
    metric = SpectralRelevance(num_labels=3, max_per_label=12, n_neighbors=5)
    metric.update(maps[:40], labels[:40])
    metric.update(maps[40:], labels[40:])
    assert torch.bincount(metric.label).tolist() == [12, 12, 12] and metric.maps.shape == (36, 16, 16)
    assert int(metric.seen) == 90
    results = metric.compute()
    for label in range(3):
        _assert_same(results[label], spectral_relevance(maps[labels == label][:12], n_neighbors=5))


def test_multi_hot_labels_keep_a_map_for_each_positive_label() -> None:
    maps, labels = _data()
    multi_hot = torch.nn.functional.one_hot(labels, 3)
    multi_hot[::2, 0] = 1  # every second map also belongs to label 0
    metric = SpectralRelevance(num_labels=3, n_neighbors=5)
    metric.update(maps, multi_hot)
    results = metric.compute()
    for label in range(3):
        _assert_same(results[label], spectral_relevance(maps[multi_hot[:, label] == 1], n_neighbors=5))


def test_one_element_results_keep_their_shapes() -> None:
    maps = torch.rand(12, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    metric = SpectralRelevance(num_labels=1, size=(4, 4), n_neighbors=3, n_clusters=1)
    metric.update(maps, torch.zeros(12, dtype=torch.long))
    result = metric.compute()[0]
    assert result.cluster_sizes.shape == (1,) and result.cluster_means.shape == (1, 4, 4)


def test_small_labels_are_skipped_with_one_notice_and_bad_input_is_named() -> None:
    maps, labels = _data()
    metric = SpectralRelevance(num_labels=3, n_neighbors=10)
    metric.update(maps[:36], labels[:36])  # 12 maps per label: enough
    metric.update(maps[36:40], torch.full((4,), 2))
    small = SpectralRelevance(num_labels=3, n_neighbors=10)
    small.update(maps[:40], torch.cat([torch.zeros(30, dtype=torch.long), torch.ones(10, dtype=torch.long)]))
    with pytest.warns(UserWarning, match="label 1 has 10 maps, fewer than `n_neighbors \\+ 1` = 11"):
        assert list(small.compute()) == [0]
    small.reset()
    small.update(maps[:40], torch.cat([torch.zeros(30, dtype=torch.long), torch.ones(10, dtype=torch.long)]))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the notice is shown once
        small.compute()
    with pytest.raises(ValueError, match=r"class indices \[5\] outside the valid range 0..2"):
        metric.update(maps[:2], torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="non-finite"):
        metric.update(torch.full((2, 1, 16, 16), float("inf")), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="`n_clusters` must be at most `max_clusters`=3"):
        SpectralRelevance(num_labels=3, n_clusters=4, max_clusters=3)
    with pytest.raises(ValueError, match="`max_per_label` must be at least `n_neighbors \\+ 1` = 11"):
        SpectralRelevance(num_labels=3, max_per_label=8)
    with pytest.raises(TypeError, match="`num_labels` must be an int"):
        SpectralRelevance(num_labels=2.0)  # type: ignore[arg-type]


CAPS = (256, 20)


def _rank_results(rank: int, world_size: int, maps: torch.Tensor, labels: torch.Tensor) -> Any:
    # what a non-shuffling DistributedSampler gives: rank r takes samples r, r + W, ...; uneven batches per rank
    mine = torch.arange(rank, maps.shape[0], world_size)
    out = {}
    for cap in CAPS:
        metric = SpectralRelevance(num_labels=3, max_per_label=cap, n_neighbors=5)
        for chunk in mine.split(7 if rank == 0 else 11):
            metric.update(maps[chunk], labels[chunk])
        out[cap] = {label: vars(result) for label, result in metric.compute().items()}
    # a rank that sees no sample at all still takes part in the gather
    empty = SpectralRelevance(num_labels=3, n_neighbors=5)
    if rank == 1:
        empty.update(maps, labels)
    out["empty"] = {label: vars(result) for label, result in empty.compute().items()}
    return out


@pytest.mark.ddp
def test_two_processes_with_an_uneven_split_give_the_one_process_result() -> None:
    maps, labels = _data(n=91)  # 46 samples on rank 0, 45 on rank 1
    ranks = run_distributed(_rank_results, maps, labels)
    for cap in (*CAPS, "empty"):
        single = SpectralRelevance(num_labels=3, max_per_label=256 if cap == "empty" else int(cap), n_neighbors=5)
        single.update(maps, labels)
        _compare([rank[cap] for rank in ranks], single.compute())


def _compare(ranks: list[Any], reference: Any) -> None:
    for results in ranks:
        assert list(results) == list(reference)
        for label, result in results.items():
            expected = reference[label]
            assert result["n_clusters"] == expected.n_clusters
            assert torch.equal(result["labels"], expected.labels)
            assert torch.equal(result["cluster_sizes"], expected.cluster_sizes)
            torch.testing.assert_close(result["cluster_means"], expected.cluster_means)
            torch.testing.assert_close(result["eigenvalues"], expected.eigenvalues)
    assert reference[1].n_clusters == 2
