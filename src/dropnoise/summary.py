"""Per-condition summaries of per-trial tables: accuracy by each scoring rule with a 95% Wilson interval.

Rows are grouped by an experiment's condition columns, pooled over everything else ("subset" = all) and, where
the experiment has one, broken down by a subset column (sentence length, topic pair, test class).
"""

from __future__ import annotations

import pandas as pd
from statsmodels.stats.proportion import proportion_confint

from .vocabulary import RULES

CONDITIONS = {
    "localization": (["perturbation", "strength"], "sentence_tokens"),
    "localization_control": (["perturbation", "strength"], "topic_pair"),
    "zero_shot": (["alias", "perturbation", "strength"], None),
    "few_shot": (["k", "label_condition", "alias", "dropout_strength", "noise_strength"], "perturbation"),
}


def reads(experiment: str):
    """Which columns of a per-trial table `summarize` reads: a `usecols` for read_csv (a third of a paper-scale
    few-shot table's 36 columns)."""
    condition, column = CONDITIONS[experiment]
    columns = {*condition, column, "logit_diff", *(f"correct_{rule}" for rule in RULES)}
    return lambda name: name in columns


def _accuracy(group: pd.DataFrame) -> pd.Series:
    out = {"n": len(group)}
    for rule in RULES:
        k = int(group[f"correct_{rule}"].sum())
        low, high = proportion_confint(k, len(group), alpha=0.05, method="wilson")
        out.update({f"accuracy_{rule}": k / len(group), f"ci_low_{rule}": low, f"ci_high_{rule}": high})
    out["mean_logit_diff"] = group["logit_diff"].mean()
    return pd.Series(out)


def summarize(trials: pd.DataFrame, experiment: str) -> pd.DataFrame:
    condition, column = CONDITIONS[experiment]
    parts = [trials.groupby(condition).apply(_accuracy, include_groups=False).reset_index().assign(subset="all")]
    if column is not None:
        by = trials.groupby(condition + [column]).apply(_accuracy, include_groups=False).reset_index()
        parts.append(by.assign(subset=column + "=" + by.pop(column).astype(str)))
    table = pd.concat(parts, ignore_index=True)
    table["n"] = table["n"].astype(int)
    return table[[*condition, "subset", *[c for c in table if c not in condition + ["subset"]]]]
