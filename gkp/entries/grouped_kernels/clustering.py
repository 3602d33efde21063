"""The three equal-size filter clusterings of TMI-GKP (Zhong et al., ICLR 2022), with scikit-learn.

Each takes the flattened filters of one conv (N, D) and returns a label per filter, every one of the
``n_clusters`` clusters holding exactly N / n_clusters filters:

- ``kernel_pca``: kernel PCA on the precomputed kernel 0.5 (W W^T)^2 + 0.5 RBF(W), then equal-size k-means;
- ``spectral``: mutual k-nearest-neighbour graph (cosine distance of the L2-normalised filters), its
  normalised spectral embedding, then equal-size k-means;
- ``same_size_dbscan``: on the L2-normalised filters, DBSCAN with a radius grown in ``eps_step``
  increments until some cluster holds a group's worth of filters; the filters of that cluster nearest
  its centroid form a group; repeated on the rest.

Equal-size k-means (our definition, as TMI-GKP's code is not published under a licence we can use):
k-means (scikit-learn, seeded) gives centres; filters are then assigned to centres by an optimal
balanced assignment (``scipy.optimize.linear_sum_assignment`` on the squared distances, each centre
offering N / n_clusters places), centres are recomputed, and this repeats until the labels stop changing.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist


def equal_size_kmeans(points: np.ndarray, n_clusters: int, seed: int, iterations: int = 20) -> np.ndarray:
    from sklearn.cluster import KMeans

    size = len(points) // n_clusters
    centres = KMeans(n_clusters, n_init=10, random_state=seed).fit(points).cluster_centers_
    labels = None
    for _ in range(iterations):
        places = np.repeat(cdist(points, centres, "sqeuclidean"), size, axis=1)
        _, place = linear_sum_assignment(places)
        new_labels = place // size
        if labels is not None and np.array_equal(labels, new_labels):
            break
        labels = new_labels
        centres = np.stack([points[labels == c].mean(axis=0) for c in range(n_clusters)])
    return labels


def _unit(filters: np.ndarray) -> np.ndarray:
    return filters / np.maximum(np.linalg.norm(filters, axis=1, keepdims=True), 1e-12)


def kernel_pca(filters: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    from sklearn.decomposition import KernelPCA
    from sklearn.metrics.pairwise import rbf_kernel

    kernel = 0.5 * (filters @ filters.T) ** 2 + 0.5 * rbf_kernel(filters)
    components = min(n_clusters, len(filters) - 1)
    embedding = KernelPCA(components, kernel="precomputed", random_state=seed).fit_transform(kernel)
    return equal_size_kmeans(embedding, n_clusters, seed)


def spectral(filters: np.ndarray, n_clusters: int, seed: int, neighbours: int = 16) -> np.ndarray:
    from sklearn.manifold import spectral_embedding

    unit = _unit(filters)
    distance = 1 - unit @ unit.T
    np.fill_diagonal(distance, np.inf)
    k = min(neighbours, len(filters) - 1)
    nearest = np.argsort(distance, axis=1, kind="stable")[:, :k]
    knn = np.zeros(distance.shape, dtype=bool)
    knn[np.arange(len(filters))[:, None], nearest] = True
    mutual = (knn & knn.T).astype(float)
    with warnings.catch_warnings():  # a mutual-kNN graph may be disconnected; the embedding still works
        warnings.simplefilter("ignore", UserWarning)
        embedding = spectral_embedding(
            mutual, n_components=n_clusters, norm_laplacian=True, random_state=seed, drop_first=False
        )
    return equal_size_kmeans(embedding, n_clusters, seed)


def same_size_dbscan(filters: np.ndarray, n_clusters: int, seed: int, eps_step: float = 0.05) -> np.ndarray:
    from sklearn.cluster import DBSCAN

    unit = _unit(filters)
    size = len(filters) // n_clusters
    labels = np.full(len(filters), -1)
    remaining = np.arange(len(filters))
    for label in range(n_clusters - 1):
        eps = eps_step
        while True:
            found = DBSCAN(eps=eps, min_samples=1).fit(unit[remaining]).labels_
            counts = np.bincount(found)
            if counts.max() >= size:
                break
            eps += eps_step
        members = remaining[found == np.argmax(counts)]
        centroid = unit[members].mean(axis=0)
        nearest = members[np.argsort(np.linalg.norm(unit[members] - centroid, axis=1), kind="stable")[:size]]
        labels[nearest] = label
        remaining = remaining[labels[remaining] == -1]
    labels[remaining] = n_clusters - 1
    return labels


CLUSTERINGS = {"kernel_pca": kernel_pca, "spectral": spectral, "same_size_dbscan": same_size_dbscan}
