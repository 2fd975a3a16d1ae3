"""Spectral Relevance Analysis (SpRAy): cluster one label's explanation maps to expose its strategies.

Follows Lapuschkin et al., "Unmasking Clever Hans predictors and assessing what machines really learn" (Nature
Communications 10, 2019): explain every sample of one class, downsample and normalise the maps, build a
k-nearest-neighbour graph of them, embed it with the normalised graph Laplacian's eigenvectors and cluster the
embedding with k-means; a large gap after the ``k``-th smallest eigenvalue suggests ``k`` strategies (a subset that
relies on a watermark forms a cluster, often its own connected component, whatever region it looks at).

The project's choices, all in torch on the maps' device (METHODS.md, "SpRAy"; scikit-learn's
``SpectralClustering`` and CoRelAy are test oracles, not dependencies):

- each ``(C, H, W)`` attribution becomes one relevance map ``Σ_c |a_c|`` (as :func:`normalize_maps` with
  ``absolute=True``), is average-pooled (``adaptive_avg_pool2d``) to ``size`` and divided by its mass (sum), so
  every map sums to 1 and the clustering compares *where* relevance lies, not how much there is. A map that is zero
  everywhere stays zero.
- affinity: the ``n_neighbors`` nearest other maps by Euclidean distance get an edge of weight 1 (connectivity,
  self excluded), symmetrised as ``A = (K + Kᵀ) / 2``: scikit-learn's ``kneighbors_graph(mode="connectivity",
  include_self=False)`` followed by its symmetrisation.
- the normalised Laplacian ``L = I - D^{-1/2} A D^{-1/2}`` is decomposed with ``torch.linalg.eigh`` in float64; the
  ``max_clusters + 1`` smallest eigenvalues are kept (fewer when ``N`` is smaller).
- the number of clusters ``k`` is the ``k`` in ``1..max_clusters`` with the largest eigengap ``λ_k - λ_{k-1}``
  (0-based ascending eigenvalues; the smallest ``k`` on ties), unless ``n_clusters`` is given.
- the embedding is the first ``k`` eigenvectors divided by ``sqrt(D)`` with a deterministic sign (the largest
  entry of each positive), as scikit-learn's ``spectral_embedding``; k-means uses k-means++ seeding from a
  ``torch.Generator`` seeded with ``seed``, 10 restarts and up to 100 Lloyd iterations, keeping the lowest inertia.
- clusters are numbered by decreasing size (ties: the cluster holding the earlier sample first).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_xai._checks import check_finite, check_positive_int

_KMEANS_RESTARTS = 10
_KMEANS_ITERATIONS = 100


@dataclass
class SpectralRelevanceResult:
    """What :func:`spectral_relevance` finds in one set of maps (a dataclass; tensors on the maps' device).

    Attributes:
        labels: ``(N,)`` long, the cluster of each map, ``0..n_clusters-1``, numbered by decreasing cluster size.
        eigenvalues: ``(M,)`` the ``M = min(max_clusters + 1, N)`` smallest eigenvalues of the normalised graph
            Laplacian, ascending, in ``[0, 2]``. ``m`` eigenvalues near 0 mean ``m`` connected components.
        n_clusters: the number of clusters ``k`` (chosen by the eigengap unless it was given).
        eigengap: 0-dim, ``λ_k - λ_{k-1}``: how clearly the graph splits into ``k`` groups (higher is clearer).
        cluster_means: ``(k, H, W)`` the mean of each cluster's mass-normalised maps at the input resolution (each
            sums to 1 unless its maps were all zero).
        cluster_sizes: ``(k,)`` long, the number of maps in each cluster, non-increasing.
    """

    labels: Tensor
    eigenvalues: Tensor
    n_clusters: int
    eigengap: Tensor
    cluster_means: Tensor
    cluster_sizes: Tensor


def check_spray_arguments(
    n_clusters: int | None, max_clusters: int, n_neighbors: int, size: tuple[int, int] | list[int]
) -> tuple[int, int]:
    """Check the clustering arguments shared by the function and the metric; return ``size`` as a tuple."""
    check_positive_int(max_clusters, "max_clusters")
    check_positive_int(n_neighbors, "n_neighbors")
    if n_clusters is not None:
        check_positive_int(n_clusters, "n_clusters")
        if n_clusters > max_clusters:
            raise ValueError(
                f"`n_clusters` must be at most `max_clusters`={max_clusters} (or None to pick it by the eigengap), "
                f"got {n_clusters}."
            )
    if not (isinstance(size, (tuple, list)) and len(size) == 2):
        raise ValueError(f"`size` must be a pair (H, W) of ints >= 1, got {size!r}.")
    check_positive_int(size[0], "size[0]")
    check_positive_int(size[1], "size[1]")
    return int(size[0]), int(size[1])


def _check_maps(maps: object) -> Tensor:
    if not isinstance(maps, Tensor):
        raise TypeError(
            f"`maps` must be a torch.Tensor of shape (N, 1, H, W) or (N, C, H, W), got {type(maps).__name__}"
        )
    if maps.ndim == 3:
        maps = maps.unsqueeze(1)
    if maps.ndim != 4 or maps.shape[0] == 0:
        raise ValueError(
            f"`maps` must have shape (N, 1, H, W), (N, C, H, W) or (N, H, W) with N >= 1, got {tuple(maps.shape)}."
        )
    if not maps.is_floating_point():
        raise TypeError(f"`maps` must be a floating-point tensor, got dtype {maps.dtype}.")
    check_finite(maps, "maps")
    return maps


def _mass_normalize(maps: Tensor) -> Tensor:
    """Divide each ``(N, H, W)`` non-negative map by its sum (all-zero maps stay zero)."""
    mass = maps.flatten(1).sum(dim=1)
    mass = torch.where(mass > 0, mass, torch.ones_like(mass))
    return maps / mass.view(-1, 1, 1)


def spray_features(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """The maps SpRAy compares: ``Σ_c |a_c|`` pooled to ``size`` and divided by its mass.

    Args:
        maps: ``(N, C, H, W)``, ``(N, 1, H, W)`` or ``(N, H, W)``, finite.
        size: ``(H', W')`` after average pooling.

    Returns:
        ``(N, H', W')`` non-negative maps that each sum to 1 (or are all zero).

    Example:
        >>> spray_features(torch.tensor([[[[1.0, 1.0], [0.0, 2.0]]]]), (1, 2))
        tensor([[[0.2500, 0.7500]]])
    """
    maps = _check_maps(maps)
    relevance = maps.abs().sum(dim=1, keepdim=True)
    pooled = F.adaptive_avg_pool2d(relevance, size) if tuple(relevance.shape[-2:]) != tuple(size) else relevance
    return _mass_normalize(pooled[:, 0])


def knn_affinity(features: Tensor, n_neighbors: int) -> Tensor:
    """Symmetric k-nearest-neighbour connectivity ``(N, N)`` in float64: ``(K + Kᵀ) / 2``, self excluded.

    ``K[i, j] = 1`` when ``j`` is one of the ``n_neighbors`` nearest other rows of ``features`` ``(N, D)`` to row
    ``i`` (Euclidean distance; ties broken by ``torch.topk``).
    """
    n = features.shape[0]
    if n < n_neighbors + 1:
        raise ValueError(
            f"SpRAy needs more maps than `n_neighbors`={n_neighbors} (at least {n_neighbors + 1}), got {n}."
        )
    points = features.reshape(n, -1).double()
    distances = torch.cdist(points, points)
    distances.fill_diagonal_(float("inf"))
    neighbors = distances.topk(n_neighbors, dim=1, largest=False).indices
    connectivity = torch.zeros(n, n, dtype=torch.float64, device=features.device)
    connectivity.scatter_(1, neighbors, 1.0)
    return (connectivity + connectivity.T) / 2


def _kmeans(points: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """Cluster ``(N, D)`` points into ``k`` groups: k-means++ seeding, restarts, Lloyd; the lowest inertia wins."""
    n = points.shape[0]
    best_labels = torch.zeros(n, dtype=torch.long, device=points.device)
    best_inertia = float("inf")
    for _ in range(_KMEANS_RESTARTS):
        first = torch.randint(n, (1,), generator=generator, device=points.device)
        centers = points[first]
        for _ in range(1, k):
            nearest = torch.cdist(points, centers).min(dim=1).values.square()
            total = nearest.sum()
            weights = nearest / total if total > 0 else torch.full_like(nearest, 1.0 / n)
            chosen = torch.multinomial(weights, 1, generator=generator)
            centers = torch.cat([centers, points[chosen]])
        for _ in range(_KMEANS_ITERATIONS):
            labels = torch.cdist(points, centers).argmin(dim=1)
            counts = torch.bincount(labels, minlength=k).to(points.dtype)
            sums = torch.zeros_like(centers).index_add_(0, labels, points)
            # an empty cluster keeps its centre
            updated = torch.where(counts.unsqueeze(1) > 0, sums / counts.clamp(min=1).unsqueeze(1), centers)
            converged = torch.equal(updated, centers)
            centers = updated
            if converged:
                break
        distances = torch.cdist(points, centers).square()
        labels = distances.argmin(dim=1)
        inertia = float(distances.gather(1, labels.unsqueeze(1)).sum())
        if best_inertia == float("inf") or inertia < best_inertia - 1e-12 * max(1.0, best_inertia):
            best_inertia, best_labels = inertia, labels
    return best_labels


def _relabel_by_size(labels: Tensor, k: int) -> Tensor:
    """Number clusters by decreasing size, ties by the first sample they hold; empty clusters are dropped."""
    n = labels.shape[0]
    sizes = torch.bincount(labels, minlength=k)
    first = torch.full((k,), n, dtype=torch.long, device=labels.device)
    first.scatter_reduce_(0, labels, torch.arange(n, device=labels.device), reduce="amin")
    present = (sizes > 0).nonzero().flatten()
    order = present[torch.argsort(sizes[present] * (n + 1) - first[present], descending=True, stable=True)]
    mapping = torch.full((k,), -1, dtype=torch.long, device=labels.device)
    mapping[order] = torch.arange(order.numel(), device=labels.device)
    return mapping[labels]


def spectral_relevance(
    maps: Tensor,
    n_clusters: int | None = None,
    max_clusters: int = 8,
    n_neighbors: int = 10,
    size: tuple[int, int] = (16, 16),
    seed: int = 0,
) -> SpectralRelevanceResult:
    """Spectral Relevance Analysis of one label's maps (Lapuschkin et al. 2019): its clusters of strategies.

    The steps and choices are listed in :mod:`lightning_xai.functional.spectral_relevance`. Everything runs on the
    maps' device; the cost is dominated by ``eigh`` of an ``N x N`` matrix, ``O(N^3)``.

    Args:
        maps: the attributions of ``N`` samples of one label, ``(N, 1, H, W)``, ``(N, C, H, W)`` or ``(N, H, W)``,
            finite, ``N >= n_neighbors + 1``.
        n_clusters: the number of clusters, or ``None`` to pick it by the largest eigengap (at most ``max_clusters``).
        max_clusters: the largest number of clusters considered (``max_clusters + 1`` eigenvalues are returned).
        n_neighbors: the neighbours of each map in the affinity graph.
        size: ``(H', W')`` the maps are pooled to before they are compared.
        seed: seeds k-means (the same seed gives the same clusters on the same device).

    Returns:
        A :class:`SpectralRelevanceResult`.

    Raises:
        TypeError: ``maps`` is not a floating-point tensor, or an argument has the wrong type.
        ValueError: a wrong shape, non-finite maps, fewer than ``n_neighbors + 1`` maps, or ``n_clusters`` above
            ``max_clusters``.

    Example:
        >>> left = torch.zeros(12, 1, 4, 4); left[:, :, :, 0] = 1 + torch.rand(12, 1, 4)
        >>> right = torch.zeros(12, 1, 4, 4); right[:, :, :, 3] = 1 + torch.rand(12, 1, 4)
        >>> result = spectral_relevance(torch.cat([left, right]), n_neighbors=5, size=(4, 4))
        >>> result.n_clusters, result.cluster_sizes.tolist(), result.labels[:12].unique().numel()
        (2, [12, 12], 1)
    """
    size = check_spray_arguments(n_clusters, max_clusters, n_neighbors, size)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"`seed` must be an int, got {seed!r}.")
    maps = _check_maps(maps)
    n = maps.shape[0]
    if n < n_neighbors + 1:
        raise ValueError(
            f"SpRAy needs more maps than `n_neighbors`={n_neighbors} (at least {n_neighbors + 1}), got `maps` with "
            f"{n}; lower `n_neighbors` or gather more samples."
        )
    features = spray_features(maps, size)
    affinity = knn_affinity(features, n_neighbors)
    degree = affinity.sum(dim=1)
    scale = degree.rsqrt()
    laplacian = torch.eye(n, dtype=torch.float64, device=maps.device) - scale[:, None] * affinity * scale[None, :]
    eigenvalues, eigenvectors = torch.linalg.eigh(laplacian)
    kept = min(max_clusters + 1, n)
    values = eigenvalues[:kept].clamp(min=0.0)
    gaps = values[1:] - values[:-1]
    if n_clusters is None:
        k = int(gaps.argmax()) + 1
    else:
        if n_clusters > n:
            raise ValueError(f"`n_clusters`={n_clusters} exceeds the number of maps {n}.")
        k = n_clusters
    gap = gaps[k - 1] if k - 1 < gaps.numel() else values.new_zeros(())
    embedding = eigenvectors[:, :k] * scale[:, None]
    signs = torch.sign(embedding.gather(0, embedding.abs().argmax(dim=0, keepdim=True)))
    embedding = embedding * torch.where(signs == 0, torch.ones_like(signs), signs)
    generator = torch.Generator(device=maps.device).manual_seed(seed)
    labels = _relabel_by_size(_kmeans(embedding, k, generator), k) if k > 1 else torch.zeros_like(degree).long()
    k = int(labels.max()) + 1
    sizes = torch.bincount(labels, minlength=k)
    full = _mass_normalize(maps.abs().sum(dim=1))
    means = torch.zeros(k, *full.shape[1:], dtype=full.dtype, device=full.device).index_add_(0, labels, full)
    means = means / sizes.to(full.dtype).view(-1, 1, 1)
    return SpectralRelevanceResult(
        labels=labels,
        eigenvalues=values.to(maps.dtype),
        n_clusters=k,
        eigengap=gap.to(maps.dtype),
        cluster_means=means,
        cluster_sizes=sizes,
    )
