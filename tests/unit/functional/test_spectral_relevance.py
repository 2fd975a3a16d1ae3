"""SpRAy against scikit-learn (kNN graph, spectral clustering), planted strategies and per-cluster loops."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.cluster import SpectralClustering
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import kneighbors_graph

from lightning_xai.functional import spectral_relevance
from lightning_xai.functional.spectral_relevance import knn_affinity, spray_features


def planted(strategies: int, per_strategy: int, noise: float, seed: int = 0, size: int = 16) -> tuple:
    """Maps whose relevance sits on one band of rows per strategy, plus uniform noise of amplitude ``noise``."""
    generator = torch.Generator().manual_seed(seed)
    maps, truth = [], []
    for strategy in range(strategies):
        base = torch.zeros(size, size)
        base[3 * strategy : 3 * strategy + 4] = 1.0
        for _ in range(per_strategy):
            maps.append(base + noise * torch.rand(size, size, generator=generator))
            truth.append(strategy)
    return torch.stack(maps).unsqueeze(1), torch.tensor(truth)


def sklearn_affinity(maps: torch.Tensor, n_neighbors: int = 10) -> np.ndarray:
    features = spray_features(maps, (16, 16)).flatten(1).double().numpy()
    graph = kneighbors_graph(features, n_neighbors, mode="connectivity", include_self=False)
    return (0.5 * (graph + graph.T)).toarray()


def test_features_are_pooled_and_mass_normalised() -> None:
    maps = torch.rand(3, 2, 8, 8) - 0.5
    features = spray_features(maps, (4, 4))
    pooled = maps.abs().sum(1).view(3, 4, 2, 4, 2).mean(dim=(2, 4))
    torch.testing.assert_close(features, pooled / pooled.sum(dim=(1, 2), keepdim=True))
    assert torch.equal(spray_features(torch.zeros(1, 1, 4, 4), (2, 2)), torch.zeros(1, 2, 2))


def test_affinity_is_sklearns_symmetrised_knn_graph() -> None:
    maps = torch.rand(40, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    ours = knn_affinity(spray_features(maps, (16, 16)), 7).numpy()
    np.testing.assert_allclose(ours, sklearn_affinity(maps, 7))


@pytest.mark.parametrize(("strategies", "noise"), [(2, 4.0), (3, 6.0), (4, 8.0)])
def test_clusters_agree_with_sklearn_spectral_clustering(strategies: int, noise: float) -> None:
    maps, _ = planted(strategies, 40, noise)
    ours = spectral_relevance(maps, n_clusters=strategies)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = SpectralClustering(n_clusters=strategies, affinity="precomputed", random_state=0).fit_predict(
            sklearn_affinity(maps)
        )
    # the harder settings are far from the truth (ARI to truth 0.3 at noise 8): agreement is not a trivial split
    assert adjusted_rand_score(reference, ours.labels.numpy()) > 0.95


@pytest.mark.parametrize("strategies", [1, 2, 3, 4, 5])
def test_eigengap_counts_planted_strategies(strategies: int) -> None:
    maps, truth = planted(strategies, 30, noise=2.0, seed=strategies)
    result = spectral_relevance(maps)
    assert result.n_clusters == strategies
    assert result.eigenvalues.shape == (9,)
    assert bool((result.eigenvalues[1:] >= result.eigenvalues[:-1]).all())
    # a split into `strategies` components: that many (near) zero eigenvalues, then the gap
    assert float(result.eigenvalues[strategies - 1]) < 1e-8 and float(result.eigengap) > 0.3
    assert adjusted_rand_score(truth.numpy(), result.labels.numpy()) == 1.0


def test_eigengap_on_connected_graph_and_planted_subpopulation() -> None:
    # noise 4: the kNN graph is connected (one zero eigenvalue), the eigengap still finds the two strategies
    majority, _ = planted(1, 56, noise=4.0, seed=3)
    minority, _ = planted(2, 24, noise=4.0, seed=4)
    minority = minority[24:]  # 24 maps of the second strategy only: 30 % of the label
    maps = torch.cat([majority, minority])
    result = spectral_relevance(maps)
    assert float(result.eigenvalues[1]) > 1e-6  # connected
    assert result.n_clusters == 2
    truth = torch.cat([torch.zeros(56), torch.ones(24)]).long()
    assert adjusted_rand_score(truth.numpy(), result.labels.numpy()) == 1.0
    assert result.cluster_sizes.tolist() == [56, 24] and bool((result.labels[56:] == 1).all())


def test_cluster_means_and_sizes_match_a_per_cluster_loop() -> None:
    maps, _ = planted(3, 20, noise=2.0)
    maps = torch.nn.functional.interpolate(maps, size=(32, 32))  # clustering at 16 x 16, means at 32 x 32
    result = spectral_relevance(maps)
    assert result.cluster_means.shape == (3, 32, 32)
    for cluster in range(result.n_clusters):
        members = maps[result.labels == cluster, 0].abs()
        expected = (members / members.sum(dim=(1, 2), keepdim=True)).mean(0)
        torch.testing.assert_close(result.cluster_means[cluster], expected)
        assert int(result.cluster_sizes[cluster]) == members.shape[0]
    assert bool((result.cluster_sizes[1:] <= result.cluster_sizes[:-1]).all())


def test_same_seed_same_clusters_and_order_independence_of_the_partition() -> None:
    maps, _ = planted(3, 20, noise=5.0)
    first, again = spectral_relevance(maps, seed=3), spectral_relevance(maps, seed=3)
    assert torch.equal(first.labels, again.labels) and torch.equal(first.eigenvalues, again.eigenvalues)
    permutation = torch.randperm(maps.shape[0], generator=torch.Generator().manual_seed(0))
    shuffled = spectral_relevance(maps[permutation], seed=3)
    assert adjusted_rand_score(first.labels[permutation].numpy(), shuffled.labels.numpy()) == 1.0


def test_few_maps_return_fewer_eigenvalues() -> None:
    maps, _ = planted(1, 6, noise=1.0)
    result = spectral_relevance(maps, n_neighbors=3, max_clusters=8)
    assert result.eigenvalues.shape == (6,) and result.labels.shape == (6,)


def test_bad_input_is_named() -> None:
    maps = torch.rand(20, 1, 8, 8)
    with pytest.raises(ValueError, match=r"non-finite values \(NaN or inf\) in samples \[2\]"):
        spectral_relevance(torch.where(torch.arange(20).view(20, 1, 1, 1) == 2, float("nan"), maps))
    with pytest.raises(ValueError, match=r"more maps than `n_neighbors`=10 .* got `maps` with 8"):
        spectral_relevance(maps[:8])
    with pytest.raises(ValueError, match="`n_clusters` must be at most `max_clusters`=4"):
        spectral_relevance(maps, n_clusters=5, max_clusters=4)
    with pytest.raises(TypeError, match=r"`maps` must be a torch\.Tensor"):
        spectral_relevance(maps.numpy())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floating-point"):
        spectral_relevance(maps.long())
    with pytest.raises(ValueError, match=r"`size` must be a pair"):
        spectral_relevance(maps, size=(4,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`maps` must have shape"):
        spectral_relevance(maps[0, 0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_the_maps_device_and_agrees_with_the_cpu() -> None:
    maps, truth = planted(3, 30, noise=2.0)
    result = spectral_relevance(maps.cuda())
    assert result.labels.device.type == "cuda" and result.cluster_means.device.type == "cuda"
    assert adjusted_rand_score(truth.numpy(), result.labels.cpu().numpy()) == 1.0
