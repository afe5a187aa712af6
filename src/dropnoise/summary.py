"""Per-condition summaries of per-trial tables: accuracy by each scoring rule with a 95% Wilson interval, the
figures' bands.

Rows are grouped by an experiment's condition columns, pooled over everything else ("subset" = all) and, where
the experiment has one, broken down by a subset column (sentence length, topic pair, test class). Few-shot also
pools each curve over its dropout x noise grid ("subset" = grid, strengths empty: Fig. 5's accuracy against k).
A condition's trials draw sentences with replacement (12 trials per sentence in the topic control), and a few-shot
grid repeats every base trial in each of its cells (121 at the paper's size), so the interval is on the effective
sample size n / deff, deff the design effect of the trials' correctness by sentence (for a condition: the interval
of `stats.condition_tests` for the same trials).
"""

from __future__ import annotations

import pandas as pd

from .stats import CLUSTER_COLUMNS, cell_terms, clusterings, curve_design_effects, effective_interval
from .vocabulary import RULES, STRENGTH_COLUMNS

CONDITIONS = {
    "localization": (["perturbation", "strength"], "sentence_tokens"),
    "localization_control": (["perturbation", "strength"], "topic_pair"),
    "zero_shot": (["alias", "perturbation", "strength"], None),
    "few_shot": (["k", "label_condition", "alias", "dropout_strength", "noise_strength"], "perturbation"),
}
POOLED_GRID = {"few_shot": ["dropout_strength", "noise_strength"]}


def reads(experiment: str):
    """Which columns of a per-trial table `summarize` reads: a `usecols` for read_csv (a third of a paper-scale
    few-shot table's 36 columns)."""
    condition, column = CONDITIONS[experiment]
    columns = {*condition, column, *CLUSTER_COLUMNS, "logit_diff", *(f"correct_{rule}" for rule in RULES)}
    return lambda name: name in columns


def _accuracy(group: pd.DataFrame, experiment: str) -> pd.Series:
    """Counts per scoring rule and what the trials say about their intra-sentence correlation (`stats.icc_terms`);
    the intervals come after, once the curve's other cells are known (`_with_bands`)."""
    clusters = {s: pd.factorize(g, sort=True)[0] for s, g in clusterings(group, experiment).items()}  # once, not per rule
    out = {"n": len(group), "n_sentences": group["sentence_id"].nunique()}
    for rule in RULES:
        correct = group[f"correct_{rule}"].to_numpy(dtype=bool)
        out[f"accuracy_{rule}"] = correct.mean()
        out.update({f"{name}/{rule}": value for name, value in cell_terms(correct, clusters).items()})
    out["mean_logit_diff"] = group["logit_diff"].mean()
    return pd.Series(out)


def _with_bands(part: pd.DataFrame, curve: list[str]) -> pd.DataFrame:
    """Wilson bands on n / deff per rule, deff from each cell's own intra-sentence correlation or its curve's
    (`stats.curve_design_effects`, as `stats.condition_tests`)."""
    for rule in RULES:
        mine = [c for c in part if c.endswith(f"/{rule}")]
        terms = part[curve].assign(**{c.removesuffix(f"/{rule}"): part.pop(c) for c in mine})
        deff = curve_design_effects(terms, curve)
        low, high = effective_interval(part[f"accuracy_{rule}"] * part.n, part.n, deff)
        position = part.columns.get_loc(f"accuracy_{rule}") + 1
        part.insert(position, f"ci_low_{rule}", low)
        part.insert(position + 1, f"ci_high_{rule}", high)
    return part


def summarize(trials: pd.DataFrame, experiment: str) -> pd.DataFrame:
    condition, column = CONDITIONS[experiment]
    curve = [c for c in condition if c not in STRENGTH_COLUMNS]

    def summarized(by: list[str], along: list[str]) -> pd.DataFrame:
        return _with_bands(trials.groupby(by).apply(_accuracy, experiment, include_groups=False).reset_index(), along)

    parts = [summarized(condition, curve).assign(subset="all")]
    if column is not None:
        by = summarized(condition + [column], curve + [column])
        parts.append(by.assign(subset=column + "=" + by.pop(column).astype(str)))
    if experiment in POOLED_GRID:
        pooled = [c for c in condition if c not in POOLED_GRID[experiment]]
        parts.append(summarized(pooled, [c for c in pooled if c != "k"]).assign(subset="grid"))
    table = pd.concat(parts, ignore_index=True)
    table[["n", "n_sentences"]] = table[["n", "n_sentences"]].astype(int)
    return table[[*condition, "subset", *[c for c in table if c not in condition + ["subset"]]]]
