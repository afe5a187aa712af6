"""Mutual information between layers and labels: normalised HSIC as the reference code computes it, with a
bandwidth sweep and a permutation null.

The reference (Qian et al.'s released code, HSIC-bottleneck "HSIC-CCA") uses, per variable,
``R = K H (K H + eps m I)^-1`` with an RBF kernel K and centring H = I - 11'/m, and reports
``nHSIC(A; B) = tr(R_A R_B)``. It is a regularised kernel-CCA overlap, not a calibrated MI in bits: it depends on
the bandwidth and on eps, hence the sweep (bandwidths in multiples of the median pairwise distance of z-scored
features) and, for I(T;Y), a label-permutation null. Labels get the delta kernel (1 when equal). The calibrated
quantity is the probe bound H(Y) - CE in bits (probes.py), merged into the same table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial.distance import pdist
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.preprocessing import StandardScaler

from .activations import SITES
from .probes import CONDITION_COLUMNS, Dataset
from .vocabulary import derive_seed


def resolvent(kernel: np.ndarray, epsilon: float) -> np.ndarray:
    """R = K H (K H + eps m I)^-1 (the centring on one side only, as in the reference code)."""
    m = len(kernel)
    centred = kernel - kernel.mean(axis=1, keepdims=True)  # K H
    return np.linalg.solve((centred + epsilon * m * np.eye(m)).T, centred.T).T


def rbf(features: np.ndarray, bandwidth: float) -> np.ndarray:
    """RBF kernel of z-scored features, width = `bandwidth` x the median pairwise distance."""
    z = StandardScaler().fit_transform(features)
    median = np.median(pdist(z)) or 1.0
    return rbf_kernel(z, gamma=1.0 / (2.0 * (bandwidth * median) ** 2))


def label_kernel(labels: np.ndarray) -> np.ndarray:
    return (labels[:, None] == labels[None, :]).astype(float)


def nhsic(a: np.ndarray, b: np.ndarray) -> float:
    """tr(R_a R_b) of two resolvents."""
    return float(np.sum(a * b.T))


def permutation_null(r_t: np.ndarray, r_y: np.ndarray, permutations: int, seed: int) -> np.ndarray:
    """nHSIC(T;Y) with the labels permuted: permuting Y permutes R_Y's rows and columns alike (H commutes)."""
    rng = np.random.default_rng(seed)
    null = np.empty(permutations)
    for i in range(permutations):
        order = rng.permutation(len(r_y))
        null[i] = nhsic(r_t, r_y[np.ix_(order, order)])
    return null


def run(sites: dict[str, np.ndarray], layers: np.ndarray, sets: list[Dataset], bandwidths: list[float],
        permutations: int, epsilon: float, seed: int) -> pd.DataFrame:
    """nHSIC(T_l; X) with X = the first captured layer (layer 0, the reference's input proxy) and nHSIC(T_l; Y),
    per set, site, layer and bandwidth, with the permutation null of the latter."""
    if layers[0] != 0:
        raise ValueError("mutual information needs layer 0 among the captured layers (its input proxy)")
    out = []
    for dataset in sets:
        r_y = resolvent(label_kernel(dataset.labels), epsilon)
        key = derive_seed(seed, "nhsic", *sorted(dataset.condition.items()))
        for site in SITES:
            acts = sites[site][dataset.rows]
            for bandwidth in bandwidths:
                r_x = resolvent(rbf(acts[:, 0], bandwidth), epsilon)
                for slot, layer in enumerate(layers):
                    r_t = resolvent(rbf(acts[:, slot], bandwidth), epsilon)
                    ty = nhsic(r_t, r_y)
                    null = permutation_null(r_t, r_y, permutations, key)
                    out.append({**dataset.condition, "site": site, "layer": int(layer), "bandwidth": bandwidth,
                                "n": len(dataset.labels), "nhsic_tx": nhsic(r_t, r_x), "nhsic_ty": ty,
                                "nhsic_ty_null_mean": null.mean(),
                                "nhsic_ty_p": (1 + np.sum(null >= ty)) / (1 + permutations)})
    table = pd.DataFrame(out)
    return table.reindex(columns=[*CONDITION_COLUMNS, *[c for c in table if c not in CONDITION_COLUMNS]])


def with_probe_bound(table: pd.DataFrame, probes: pd.DataFrame) -> pd.DataFrame:
    """Add the linear probe's lower bound on I(T;Y) in bits (probes.csv) to each row of its set, site and layer."""
    keys = [*CONDITION_COLUMNS, "site", "layer"]
    bound = probes[probes.features == "linear"][[*keys, "mi_lower_bound_bits"]]
    return table.merge(bound.rename(columns={"mi_lower_bound_bits": "probe_bound_bits"}), on=keys, how="left")
