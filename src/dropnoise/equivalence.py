"""The dropout <-> noise strength equivalence map (the paper's auxiliary analysis, `notebooks/equivalence_map.py`):
which noise sigma makes a sentence as easy to localize as dropout rate p?

Per condition (model x sentence length) and perturbation, the localization curve is the mean log-probability of
the correct letter's primary token against strength (`log_prob_correct`), with its standard error clustered by
sentence. As the reference:
1. the monotone range: from the first point at or above min + 5% of the dynamic range before the peak, up to the
   peak, and at least the two points up to the peak where the peak is not the first point;
2. an increasing isotonic regression (scikit-learn) of each curve within its range;
3. the noise fit's plateaus dropped (the smallest sigma of each fitted level kept), so that it can be inverted;
4. the noise fit inverted by linear interpolation at the dropout fit's levels: the matched sigma of each p, missing
   outside the levels the noise fit reaches, and everywhere where fewer than two distinct levels are left.
Strength 0, where the grids have it, is the clean pass: kept in the curves (the figure draws it), but left out of the
ranges and fits as the reference's sweeps (from p = 0.05) had it, so that a dip below the clean value before the
rise cannot pool the clean point into a level no perturbed point has, nor make sigma = 0 a match.
Tables: `curves` (every condition's points and fits), `pairs` (the matched pairs, the reference's
matched_pairs.csv) and `mapping` (per dropout rate the mean, standard deviation and count of the matched sigma across
conditions, kept where at least three conditions give one: the reference's mean_mapping.csv).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression

from .stats import cluster_totals

CONDITION = ["model", "sentence_tokens"]
RANGE_FLOOR = 0.05  # share of the pre-peak dynamic range a point must rise above to start the monotone range
MIN_CONDITIONS = 3  # conditions a dropout rate's mean matched sigma must rest on
READS = ("model", "perturbation", "strength", "sentence_tokens", "sentence_id", "log_prob_correct")
CURVE_COLUMNS = [*CONDITION, "perturbation", "strength", "mean", "se", "n", "level"]
PAIR_COLUMNS = [*CONDITION, "dropout_strength", "level", "dropout_se", "noise_strength", "n"]


def _curve(trials: pd.DataFrame) -> pd.DataFrame:
    """Mean log P(correct) per strength of one condition's trials of one perturbation, its standard error clustered
    by sentence (the sandwich variance of a mean: a sentence drawn twice at a strength is one cluster), and n."""
    rows = []
    for strength, at in trials.groupby("strength", sort=True):
        values = at.log_prob_correct.to_numpy(dtype=float)
        mean = values.mean()
        residuals, _ = cluster_totals(values - mean, at.sentence_id.to_numpy())
        clusters = len(residuals)
        se = np.sqrt(clusters / (clusters - 1) * (residuals**2).sum()) / len(values) if clusters > 1 else np.nan
        rows.append({"strength": strength, "mean": mean, "se": se, "n": len(values)})
    return pd.DataFrame(rows, columns=["strength", "mean", "se", "n"])


def monotone_range(means: np.ndarray) -> slice:
    """The points of a curve (sorted by strength) from the first one at or above min + 5% of the pre-peak dynamic
    range up to the peak, and no fewer than two where the peak has a point before it (a steep rise would otherwise
    leave the peak alone, a level nothing can be interpolated to)."""
    peak = int(np.argmax(means))
    floor = means[: peak + 1].min()
    threshold = floor + RANGE_FLOOR * (means[peak] - floor)
    start = next(i for i in range(peak + 1) if means[i] >= threshold)
    return slice(min(start, max(peak - 1, 0)), peak + 1)


def _fit(points: pd.DataFrame) -> pd.Series:
    """The increasing isotonic fit of a curve's perturbed points within their monotone range (missing outside it)."""
    perturbed = points[points.strength > 0]
    if perturbed.empty:
        return pd.Series(np.nan, index=points.index)
    within = perturbed.iloc[monotone_range(perturbed["mean"].to_numpy())]
    level = IsotonicRegression(increasing=True).fit_transform(within.strength, within["mean"])
    return pd.Series(level, index=within.index).reindex(points.index)


def curves(trials: pd.DataFrame) -> pd.DataFrame:
    """Every condition's dropout and noise curves with their fits (`level`), columns CURVE_COLUMNS; conditions where
    either perturbation ran fewer than two strengths are left out."""
    out = []
    for key, condition in trials.groupby(CONDITION, sort=True):
        parts = {kind: condition[condition.perturbation == kind] for kind in ("dropout", "noise")}
        if any(part.strength.nunique() < 2 for part in parts.values()):
            continue
        for kind, part in parts.items():
            points = _curve(part)
            out.append(points.assign(**dict(zip(CONDITION, key)), perturbation=kind, level=_fit(points)))
    return pd.concat(out, ignore_index=True)[CURVE_COLUMNS] if out else pd.DataFrame(columns=CURVE_COLUMNS)


def match(dropout: pd.DataFrame, noise: pd.DataFrame) -> np.ndarray:
    """Each fitted dropout point's matched sigma: the noise fit (sorted by strength), plateaus dropped (the smallest
    sigma of each level), inverted by linear interpolation at the dropout level; NaN outside the noise fit's levels,
    and everywhere when it has one level only (a flat fit inverts to no sigma)."""
    inverse = noise.drop_duplicates("level", keep="first")
    levels, sigmas = inverse.level.to_numpy(), inverse.strength.to_numpy()
    if len(levels) < 2:
        return np.full(len(dropout), np.nan)
    inside = (dropout.level >= levels.min()) & (dropout.level <= levels.max())
    return np.where(inside, np.interp(dropout.level, levels, sigmas), np.nan)


def pairs(fitted: pd.DataFrame) -> pd.DataFrame:
    """Every condition's matched (p, sigma) pairs from its fitted `curves` (columns PAIR_COLUMNS)."""
    out = []
    for _, condition in fitted.dropna(subset=["level"]).groupby(CONDITION, sort=True):
        dropout, noise = (condition[condition.perturbation == kind] for kind in ("dropout", "noise"))
        if dropout.empty or noise.empty:
            continue
        matched = dropout.assign(noise_strength=match(dropout, noise)).dropna(subset=["noise_strength"])
        out.append(matched.rename(columns={"strength": "dropout_strength", "se": "dropout_se"})[PAIR_COLUMNS])
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=PAIR_COLUMNS)


def mapping(matched: pd.DataFrame) -> pd.DataFrame:
    """Per dropout rate: the mean, standard deviation and count of the matched sigma across conditions, where at
    least MIN_CONDITIONS give one; `scope`: every model together ("all") and each model alone."""
    columns = ["scope", "dropout_strength", "noise_strength", "noise_strength_sd", "conditions"]
    out = []
    for scope, part in [("all", matched), *matched.groupby("model", sort=True)]:
        table = part.groupby("dropout_strength").noise_strength.agg(["mean", "std", "count"]).reset_index()
        table.columns = ["dropout_strength", "noise_strength", "noise_strength_sd", "conditions"]
        out.append(table[table.conditions >= MIN_CONDITIONS].assign(scope=scope))
    return pd.concat(out, ignore_index=True)[columns] if len(matched) else pd.DataFrame(columns=columns)
