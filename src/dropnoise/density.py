"""Training-data density of target sentences (LMD3, Kirchenbauer et al., arXiv 2405.06331): a Gaussian kernel
density over sentence embeddings, evaluated at each target against a reference corpus that stands in for the
model's training data.

- Reference corpus: sentences drawn from a source (by default the one the targets come from), distinct, with
  every target left out, so no target is scored against itself.
- Bandwidth: h = median distance from a reference point to its k-th nearest other reference point (brute-force
  k-NN); the density is reported at h times each configured scale (a sensitivity sweep).
- Density: log KDE(q) = logsumexp_i(-|q - x_i|^2 / 2h^2) - log n - (d/2) log(2 pi h^2), an isotropic Gaussian
  kernel. It is summed in log space: in 384 dimensions |q - x|^2 / 2h^2 is often in the hundreds, where a sum of
  exp() underflows (scikit-learn's KernelDensity returns garbage there).
Brute force is exact and takes seconds at our sizes (10^4-10^5 reference sentences). For corpora of millions,
the approximate path is DEANN's (the estimator LMD3 uses): exact kernel values for the k nearest neighbours from
an approximate index (faiss IVF), plus a random sample of m others for the rest, weighted (k/n) and ((n-k)/n).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
from scipy.special import logsumexp
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.neighbors import NearestNeighbors

# Distance matrix entries held in memory at once while evaluating the KDE (about 160 MB of float64).
CHUNK_ENTRIES = 20_000_000


class DensityError(RuntimeError):
    """The reference corpus or the embeddings cannot give a density; the message says why."""


def reference_corpus(candidates: Iterable[str], targets: Iterable[str], size: int, max_candidates: int) -> list[str]:
    """The first `size` distinct candidates that are not targets (candidates come shuffled or seeded)."""
    excluded = set(targets)
    corpus: dict[str, None] = {}
    for seen, sentence in enumerate(candidates):
        if seen >= max_candidates or len(corpus) >= size:
            break
        sentence = sentence.strip()
        if sentence and sentence not in excluded:
            corpus[sentence] = None
    if len(corpus) < 2:
        raise DensityError(f"the reference corpus has {len(corpus)} sentence(s) after leaving out the targets")
    return list(corpus)


def knn_bandwidth(reference: np.ndarray, k: int, sample: int, seed: int) -> float:
    """Median distance from (up to `sample`) reference points to their k-th nearest other reference point."""
    if len(reference) <= k:
        raise DensityError(f"bandwidth needs more than k={k} reference sentences, got {len(reference)}")
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(reference), size=min(sample, len(reference)), replace=False)
    index = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(reference)
    distances, _ = index.kneighbors(reference[rows])  # column 0 is the point itself
    return float(np.median(distances[:, k]))


def _log_kernel_sums(queries: np.ndarray, reference: np.ndarray, bandwidth: float) -> tuple[np.ndarray, np.ndarray]:
    """Per query, log sum_i w_i and log sum_i w_i^2 of the Gaussian kernel weights w_i, in chunks."""
    step = max(1, CHUNK_ENTRIES // len(reference))
    sums, squares = np.empty(len(queries)), np.empty(len(queries))
    for start in range(0, len(queries), step):
        log_w = -euclidean_distances(queries[start : start + step], reference, squared=True) / (2 * bandwidth**2)
        sums[start : start + step] = logsumexp(log_w, axis=1)
        squares[start : start + step] = logsumexp(2 * log_w, axis=1)
    return sums, squares


def log_kde_and_neighbours(queries: np.ndarray, reference: np.ndarray, bandwidth: float) -> tuple[np.ndarray, np.ndarray]:
    """Per query: the exact log density of an isotropic Gaussian KDE (computed in log space, in chunks), and Kish's
    effective number of reference sentences behind it, (sum w)^2 / sum w^2 of the kernel weights: near 1 when one
    neighbour dominates, near the corpus size when every sentence weighs the same. In high dimension distances
    concentrate, and at the k-NN bandwidth the KDE can weigh almost the whole corpus equally; it then measures
    closeness to the corpus as a whole (typicality), not local density. The second number says which one a scale
    gives."""
    n, d = reference.shape
    sums, squares = _log_kernel_sums(queries, reference, bandwidth)
    return sums - np.log(n) - 0.5 * d * np.log(2 * np.pi * bandwidth**2), np.exp(2 * sums - squares)


def scale_column(scale: float) -> str:
    """The density column at a bandwidth scale: `log_density` at 1, `log_density_x0.5` etc. elsewhere."""
    return "log_density" if scale == 1 else f"log_density_x{scale:g}"


def density_table(
    targets: pd.DataFrame, target_embeddings: np.ndarray, reference_embeddings: np.ndarray, k: int,
    scales: list[float], sample: int, seed: int,
) -> tuple[pd.DataFrame, dict]:
    """Per target: its log density at every bandwidth scale. Returns the table and the bandwidth facts."""
    bandwidth = knn_bandwidth(reference_embeddings, k, sample, seed)
    if bandwidth <= 0:
        raise DensityError("the k-NN bandwidth is 0: the reference corpus has more than k identical embeddings")
    table = targets.copy()
    spread = {}
    for scale in scales:
        table[scale_column(scale)], neighbours = log_kde_and_neighbours(target_embeddings, reference_embeddings,
                                                                        bandwidth * scale)
        table[scale_column(scale).replace("log_density", "effective_neighbours")] = neighbours
        spread[f"{scale:g}"] = float(np.median(neighbours))
    facts = {"bandwidth": bandwidth, "k": k, "scales": scales, "n_reference": len(reference_embeddings),
             "dimension": int(reference_embeddings.shape[1]), "median_effective_neighbours": spread}
    return table, facts
