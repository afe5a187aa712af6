"""The activation shard files: one .npz per inference shard, next to its table, readable without torch.

Arrays: ``answer``, ``span_mean``, ``span_last`` ([rows, layers, hidden], float16), the row keys ``trial_id``,
``perturbation`` and ``strength`` (the clean pass of a trial once, as ("none", 0.0)) and the captured ``layers``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .outputs import atomic_write_bytes

SITES = ("answer", "span_mean", "span_last")
CLEAN = "none"


def write(path: str | Path, rows: dict[tuple[int, str, float], np.ndarray], layers: tuple[int, ...]) -> None:
    """rows: key -> [sites, layers, hidden] array; written atomically."""
    keys = sorted(rows, key=lambda k: (k[1], k[2], k[0]))
    stacked = np.stack([rows[k] for k in keys], axis=1) if keys else np.empty((len(SITES), 0, len(layers), 0), np.float16)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        **{site: stacked[i] for i, site in enumerate(SITES)},
        trial_id=np.array([k[0] for k in keys], dtype=np.int64),
        perturbation=np.array([k[1] for k in keys], dtype=str),
        strength=np.array([k[2] for k in keys], dtype=np.float64),
        layers=np.array(layers, dtype=np.int64),
    )
    atomic_write_bytes(path, buffer.getvalue())


def load(paths: list[str | Path]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Concatenate shard files: (site -> [rows, layers, hidden] float32, key columns); a clean row computed in
    several shards is kept once. Rows come in `write`'s order, however the shards split the work, so that the
    seeded shuffles of the probes, MI and steering controls do not depend on it."""
    parts = [np.load(p) for p in paths]
    keys = {name: np.concatenate([p[name] for p in parts]) for name in ("trial_id", "perturbation", "strength")}
    layers = parts[0]["layers"]
    if any(not np.array_equal(p["layers"], layers) for p in parts):
        raise ValueError("activation shards were captured at different layers; rerun the capture")
    first: dict[tuple, int] = {}
    for i, key in enumerate(zip(keys["trial_id"], keys["perturbation"], keys["strength"])):
        first.setdefault(key, i)
    keep = [first[key] for key in sorted(first, key=lambda k: (k[1], k[2], k[0]))]
    sites = {site: np.concatenate([p[site] for p in parts if p[site].size])[keep].astype(np.float32) for site in SITES}
    return sites, {**{name: values[keep] for name, values in keys.items()}, "layers": layers}
