"""Mutual information between layers and labels: normalised HSIC as the reference code computes it, with a
bandwidth sweep and a permutation null.

The reference (Qian et al.'s released code, HSIC-bottleneck "HSIC-CCA") uses, per variable,
``R = K H (K H + eps m I)^-1`` with an RBF kernel K and centring H = I - 11'/m, and reports
``nHSIC(A; B) = tr(R_A R_B)``. It is a regularised kernel-CCA overlap, not a calibrated MI in bits: it depends on
the bandwidth and on eps, hence the sweep (bandwidths in multiples of the median pairwise distance of z-scored
features) and, for I(T;Y), a label-permutation null. Labels get the delta kernel (1 when equal). The calibrated
quantity is the probe bound H(Y) - CE in bits (probes.py), merged into the same table.

The null permutes labels the way the design allows (`null_labels`): rows of one trial, base trial or sentence are
not independent (a trial's perturbed and clean rows, a zero-shot base trial rendered under several aliases), so
labels move within a trial, or whole base trials and sentences trade labels, never single rows across them. Every
site, layer and bandwidth of a labelled set is tested on the same label draws, so the set's p-values are adjusted
together by the Westfall-Young min-p method, which uses their strong correlation instead of paying for each test as
Holm would.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial.distance import pdist
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.preprocessing import StandardScaler

from .label_permutations import null_labels
from .probes import CONDITION_COLUMNS, Dataset
from .vocabulary import derive_seed


def resolvent(kernel: np.ndarray, epsilon: float) -> np.ndarray:
    """R = K H (K H + eps m I)^-1 (the centring on one side only, as in the reference code)."""
    m = len(kernel)
    centred = kernel - kernel.mean(axis=1, keepdims=True)  # K H
    return np.linalg.solve((centred + epsilon * m * np.eye(m)).T, centred.T).T


def rbf(features: np.ndarray, bandwidths: list[float]) -> list[np.ndarray]:
    """RBF kernels of z-scored features, one per width = bandwidth x the median pairwise distance. The distances
    are computed once for all widths (the median's pdist is most of the cost), each kernel then as scikit-learn's
    rbf_kernel computes it from them, bit for bit."""
    z = StandardScaler().fit_transform(features)
    median = np.median(pdist(z)) or 1.0
    squared = euclidean_distances(z, z, squared=True)
    kernels = []
    for bandwidth in bandwidths:
        kernel = squared.copy()
        kernel *= -1.0 / (2.0 * (bandwidth * median) ** 2)  # in place, as rbf_kernel: float32 features stay float32
        kernels.append(np.exp(kernel, out=kernel))
    return kernels


def nhsic(a: np.ndarray, b: np.ndarray) -> float:
    """tr(R_a R_b) of two resolvents."""
    return float(np.sum(a * b.T))


def label_nhsic(r_t: np.ndarray, labels: np.ndarray, epsilon: float) -> np.ndarray:
    """tr(R_T R_Y) for 0/1 labels, one value per column of `labels` ([m] or [m, P]), without forming R_Y.

    The delta kernel of 0/1 labels gives K H = s a' with s = 2y - 1 and a = y - mean(y): rank one, so by
    Sherman-Morrison R_Y = s a' / (eps m + a's) and tr(R_T R_Y) = a' R_T s / (eps m + a's). Every permutation of the
    null then costs one matrix-vector product instead of an m x m solve.
    """
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("label_nhsic takes 0/1 labels")
    y = labels.reshape(len(labels), -1).astype(float)
    s, a = 2 * y - 1, y - y.mean(axis=0)
    return np.einsum("ip,ip->p", a, r_t @ s) / (epsilon * len(y) + np.einsum("ip,ip->p", a, s))


def permutation_p(observed: np.ndarray, nulls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per test of a set ([tests] observed, [tests, P] null on shared label draws): its permutation p-value, and
    that p-value adjusted over the set by the single-step Westfall-Young min-p method (family-wise error).

    The observed labelling joins the draws (P + 1 labellings in all); each labelling's p-value per test is the
    share of labellings at least as large, and a test's adjusted p is the share of labellings whose smallest
    p-value over the set is at most the test's own.
    """
    pool = np.concatenate([observed[:, None], nulls], axis=1)
    ordered = np.sort(pool, axis=1)
    at_least = [len(o) - np.searchsorted(o, v - 1e-9 * np.abs(v)) for o, v in zip(ordered, pool)]  # ties count
    p = np.stack(at_least) / pool.shape[1]
    return p[:, 0], (p.min(axis=0)[None, :] <= p[:, :1]).mean(axis=1)


def run(sites: dict[str, np.ndarray], layers: np.ndarray, sets: list[Dataset], bandwidths: list[float],
        permutations: int, epsilon: float, seed: int) -> pd.DataFrame:
    """nHSIC(T_l; X) with X = the first captured layer (layer 0, the reference's input proxy) and nHSIC(T_l; Y),
    per set, site, layer and bandwidth, with the permutation null of the latter (the same label draws for every
    site, layer and bandwidth of a set). Binary sets only (`label_nhsic`): the three-class none / dropout / noise set
    has its probe's bound in probes.csv."""
    if layers[0] != 0:
        raise ValueError("mutual information needs layer 0 among the captured layers (its input proxy)")
    out = []
    for dataset in [d for d in sets if d.labels.max() == 1]:
        key = derive_seed(seed, "nhsic", *sorted(dataset.condition.items()))
        null_y = null_labels(dataset.labels, dataset.design, permutations, key)
        rows, observed, nulls = [], [], []
        for site in dataset.sites:
            acts = sites[site][dataset.rows]
            found = {}  # (width, slot) -> nHSIC(T;Y), its null draws, nHSIC(T;X); a layer's kernels at once
            for slot in range(len(layers)):
                resolvents = [resolvent(kernel, epsilon) for kernel in rbf(acts[:, slot], bandwidths)]
                if slot == 0:
                    r_x = resolvents  # layer 0, the input proxy
                for width, r_t in enumerate(resolvents):
                    found[width, slot] = (label_nhsic(r_t, dataset.labels, epsilon)[0],
                                          label_nhsic(r_t, null_y, epsilon), nhsic(r_t, r_x[width]))
            for (width, slot), (ty, null, tx) in sorted(found.items()):
                observed.append(ty)
                nulls.append(null)
                rows.append({**dataset.condition, "site": site, "layer": int(layers[slot]),
                             "bandwidth": bandwidths[width], "n": len(dataset.labels),
                             "n_groups": len(np.unique(dataset.groups)), "nhsic_tx": tx, "nhsic_ty": ty,
                             "nhsic_ty_null_mean": null.mean()})
        p, adjusted = permutation_p(np.array(observed), np.array(nulls))
        out += [{**r, "nhsic_ty_p": pi, "nhsic_ty_p_adjusted": ai} for r, pi, ai in zip(rows, p, adjusted)]
    table = pd.DataFrame(out)
    return table.reindex(columns=[*CONDITION_COLUMNS, *[c for c in table if c not in CONDITION_COLUMNS]])


def with_probe_bound(table: pd.DataFrame, probes: pd.DataFrame) -> pd.DataFrame:
    """Add the linear probe's lower bound on I(T;Y) in bits (probes.csv) to each row of its set, site and layer."""
    keys = [*CONDITION_COLUMNS, "site", "layer"]
    bound = probes[probes.features == "linear"][[*keys, "mi_lower_bound_bits"]]
    return table.merge(bound.rename(columns={"mi_lower_bound_bits": "probe_bound_bits"}), on=keys, how="left")
