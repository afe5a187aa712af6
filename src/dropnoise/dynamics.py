"""Checkpoint dynamics: one tidy table of what each checkpoint of a series says and holds, against training step.

Per checkpoint (its localization run, probes and mutual information):
- ``verbal_accuracy``: which-sentence accuracy of the model's answer (primary rule, 95% Wilson interval);
- ``probe_accuracy``: the linear probe at its best layer, chosen once per checkpoint, task, site and perturbation
  (the best mean accuracy over strengths, as represented_vs_reported.csv chooses it, so that strength 0 does not
  get the optimistic maximum of chance-level probes), with its 95% interval (`probes.cross_validated_interval`);
- ``nhsic_tx`` and ``nhsic_ty_excess`` (nHSIC(T;Y) minus its permutation-null mean) per layer at the answer
  position and the middle RBF width, the quantities the reference paper plots against training step.
``level`` is a strength's rank among the strengths a metric has (0: unperturbed), the same at every checkpoint.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

COLUMNS = ["step", "checkpoint", "metric", "experiment", "task", "site", "perturbation", "level", "strength",
           "dropout_strength", "noise_strength", "layer", "value", "ci_low", "ci_high"]
KEYS = ["experiment", "task", "site", "perturbation"]


def verbal(summary: pd.DataFrame) -> pd.DataFrame:
    """Pooled which-sentence accuracy per perturbation and strength (localization.summary.csv)."""
    pooled = summary[summary.subset == "all"].sort_values(["perturbation", "strength"])
    return pd.DataFrame({
        "metric": "verbal_accuracy", "experiment": "localization", "task": "which_sentence",
        "perturbation": pooled.perturbation, "level": pooled.groupby("perturbation").cumcount(),
        "strength": pooled.strength, "value": pooled.accuracy_primary, "ci_low": pooled.ci_low_primary,
        "ci_high": pooled.ci_high_primary,
    })


def best_layer_probes(probes: pd.DataFrame) -> pd.DataFrame:
    """Linear-probe accuracy per strength at each (task, site, perturbation)'s best layer."""
    linear = probes[probes.features == "linear"]
    best = linear.groupby([*KEYS, "layer"]).accuracy.mean().groupby(level=KEYS).idxmax().tolist()
    chosen = linear.set_index([*KEYS, "layer"]).loc[best].reset_index()
    return chosen.rename(columns={"accuracy": "value", "accuracy_low": "ci_low", "accuracy_high": "ci_high"}).assign(
        metric="probe_accuracy")


def nhsic(mi: pd.DataFrame) -> pd.DataFrame:
    """nHSIC(T;X) and nHSIC(T;Y) above its null, per layer, at the answer position and the middle RBF width."""
    bandwidths = sorted(mi.bandwidth.unique())
    here = mi[(mi.site == "answer") & (mi.bandwidth == bandwidths[len(bandwidths) // 2])]
    tx = here.assign(metric="nhsic_tx", value=here.nhsic_tx)
    ty = here.assign(metric="nhsic_ty_excess", value=here.nhsic_ty - here.nhsic_ty_null_mean)
    return pd.concat([tx, ty], ignore_index=True)


def checkpoint_rows(step: int, checkpoint: str, summary: pd.DataFrame, probes: pd.DataFrame,
                    mi: pd.DataFrame) -> pd.DataFrame:
    parts = [verbal(summary), best_layer_probes(probes), nhsic(mi)]
    return pd.concat([p.reindex(columns=COLUMNS) for p in parts], ignore_index=True).assign(step=step, checkpoint=checkpoint)


def table(checkpoints: list[tuple[int, str, pd.DataFrame, pd.DataFrame, pd.DataFrame]]) -> pd.DataFrame:
    """All checkpoints of a series, sorted by step: (step, key, localization summary, probes, MI) each."""
    rows = pd.concat([checkpoint_rows(*point) for point in checkpoints], ignore_index=True)
    rows = rows.sort_values(["metric", "task", "site", "perturbation", "level", "layer", "step"], na_position="first",
                            kind="stable")
    rows["layer"] = rows.layer.astype("Int64")
    rows["level"] = rows.level.astype(np.int64)
    return rows.reset_index(drop=True)
