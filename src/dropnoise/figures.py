"""The paper's results figures (figs. 2-6) and its auxiliary equivalence map, as pure functions of the summary and
statistics tables.

Each plot function takes the tables it needs (already read) and returns a matplotlib figure; `render` saves it as
PDF and PNG with the shared style. Nothing here imports model code.

Inputs: per-model summaries (`results/{model}/{experiment}.summary.csv`: accuracy by rule with Wilson 95%
intervals on the effective sample size, pooled (`subset == "all"`), per subset, and few-shot over its grid
(`subset == "grid"`)), `results/stats/label_pairs.csv` and the equivalence map's
`results/stats/equivalence_{curves,pairs,mapping}.csv`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from . import style
from .vocabulary import PERTURBATIONS

CLASS_TITLES = {"dropout": "dropout trials", "noise": "noise trials"}


def _pooled(summary: pd.DataFrame) -> pd.DataFrame:
    return summary[summary["subset"] == "all"]


def _percentile(values: pd.Series) -> pd.Series:
    """Rank of each strength among the model's grid, 0 (weakest) to 100 (strongest), as the paper's x-axes."""
    levels = np.sort(values.unique())
    position = {v: (100 * i / (len(levels) - 1) if len(levels) > 1 else 0.0) for i, v in enumerate(levels)}
    return values.map(position)


def _accuracy_curve(ax, frame: pd.DataFrame, x: str, rule: str, band: bool = True, **line) -> None:
    frame = frame.sort_values(x)
    line = {"marker": "o", "markersize": 2.5, "linewidth": 1.2, **line}
    ax.plot(frame[x], 100 * frame[f"accuracy_{rule}"], **line)
    if band:
        ax.fill_between(frame[x], 100 * frame[f"ci_low_{rule}"], 100 * frame[f"ci_high_{rule}"],
                        color=line.get("color"), alpha=0.18, linewidth=0)


def _strength_panels(summaries: dict[str, pd.DataFrame], rule: str, reference: float, reference_label: str,
                     ylabel: str):
    fig, axes = style.figure(ncols=2, width=style.FULL_WIDTH, height=2.3, sharey=True)
    colors = dict(zip(summaries, sns.color_palette("colorblind", len(summaries))))
    for ax, kind in zip(axes[0], PERTURBATIONS):
        for model, summary in summaries.items():
            rows = _pooled(summary)
            _accuracy_curve(ax, rows[rows["perturbation"] == kind], "strength", rule, color=colors[model], label=model)
        ax.axhline(100 * reference, label=reference_label, **style.CHANCE_STYLE)
        ax.set(xlabel=style.STRENGTH_LABELS[kind], ylim=(-2, 102))
    axes[0][0].set_ylabel(ylabel)
    axes[0][1].legend(loc="best")
    return fig


def localization(summaries: dict[str, pd.DataFrame], rule: str = "primary"):
    """Fig. 2: which sentence was perturbed? Accuracy vs strength, one curve per model, 95% Wilson bands."""
    return _strength_panels(summaries, rule, 0.5, "chance (50%)", "localization accuracy (%)")


def control(summaries: dict[str, pd.DataFrame], rule: str = "primary"):
    """Fig. 3: topic comprehension while one sentence is perturbed, with the 95% threshold line."""
    return _strength_panels(summaries, rule, 0.95, "95% threshold", "topic accuracy (%)")


def localization_by_length(summaries: dict[str, pd.DataFrame], rule: str = "primary"):
    """Fig. 2 variant: per model (rows) and perturbation (columns), one curve per sentence length (no bands: six
    overlapping intervals hide the curves; they are in the summary table)."""
    fig, axes = style.figure(ncols=2, nrows=len(summaries), width=style.FULL_WIDTH, height=2.0 * len(summaries),
                             sharey=True)
    for row, (model, summary) in zip(axes, summaries.items()):
        rows = summary[summary["subset"].str.startswith("sentence_tokens=")].copy()
        rows["length"] = rows["subset"].str.split("=").str[1].astype(int)
        lengths = sorted(rows["length"].unique())
        colors = dict(zip(lengths, sns.color_palette("viridis", len(lengths))))
        for ax, kind in zip(row, PERTURBATIONS):
            for length in lengths:
                part = rows[(rows["perturbation"] == kind) & (rows["length"] == length)]
                _accuracy_curve(ax, part, "strength", rule, band=False, color=colors[length], label=f"{length}")
            ax.axhline(50, **style.CHANCE_STYLE)
            ax.set(xlabel=style.STRENGTH_LABELS[kind], ylim=(-2, 102), title=model)
        row[0].set_ylabel("localization accuracy (%)")
        row[1].legend(title="sentence tokens", loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def _dodge(series: list, spacing: float, share: float = 0.3) -> dict:
    """x offsets that spread the series over `share` of the spacing between grid points, so curves with equal
    values (small samples, a model at chance) stay visible side by side instead of hiding one another."""
    if len(series) < 2:
        return dict.fromkeys(series, 0.0)
    step = share * spacing / (len(series) - 1)
    return {item: step * (i - (len(series) - 1) / 2) for i, item in enumerate(series)}


def zero_shot(summary: pd.DataFrame, groups: dict[str, str], emphasis: list[str], rule: str = "primary"):
    """Fig. 4: zero-shot accuracy vs strength percentile per alias; emphasised aliases solid, controls dashed. The
    aliases' points are dodged by a fraction of the grid spacing (a curve sits within 15% of it from its
    percentile)."""
    rows = _pooled(summary).copy()
    rows["percentile"] = rows.groupby("perturbation")["strength"].transform(_percentile)
    aliases = list(dict.fromkeys(rows["alias"]))
    strong = [a for a in aliases if a in emphasis]
    controls = [a for a in aliases if a not in emphasis]
    levels = rows.groupby("perturbation")["strength"].nunique().max()
    rows["percentile"] += rows["alias"].map(_dodge(controls + strong, 100 / max(levels - 1, 1)))
    colors = dict(zip(strong, sns.color_palette("colorblind", len(strong))))
    grey = dict(zip(controls, sns.color_palette("Greys", len(controls) + 2)[2:]))
    label_controls = len(controls) <= 6
    fig, axes = style.figure(ncols=2, width=style.FULL_WIDTH, height=2.4, sharey=True)
    for ax, kind in zip(axes[0], PERTURBATIONS):
        part = rows[rows["perturbation"] == kind]
        for i, alias in enumerate(controls):
            label = f"{alias} ({groups.get(alias, 'control')})" if label_controls else (
                f"controls (n={len(controls)})" if i == 0 else None)
            _accuracy_curve(ax, part[part["alias"] == alias], "percentile", rule, color=grey[alias], label=label,
                            band=False, linestyle="--", linewidth=0.8, markersize=1.5)
        for alias in strong:
            _accuracy_curve(ax, part[part["alias"] == alias], "percentile", rule, color=colors[alias], label=alias,
                            linewidth=2.0)
        ax.axhline(50, **style.CHANCE_STYLE)
        ax.set(xlabel="strength percentile of the model's grid", ylim=(-2, 102), title=CLASS_TITLES[kind],
               xticks=[0, 25, 50, 75, 100])
    axes[0][0].set_ylabel("zero-shot accuracy (%)")
    axes[0][1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def _heatmap(ax, frame: pd.DataFrame, value: str, fmt: str, **kwargs) -> None:
    """Dropout percentile on x, noise percentile on y (weakest at the origin), cell values annotated."""
    frame = frame.assign(dropout=_percentile(frame["dropout_strength"].astype(float)).round().astype(int),
                         noise=_percentile(frame["noise_strength"].astype(float)).round().astype(int))
    grid = frame.pivot_table(index="noise", columns="dropout", values=value).sort_index(ascending=False)
    annot_size = 7 if len(grid) <= 6 else 4.5
    sns.heatmap(grid, ax=ax, annot=True, fmt=fmt, annot_kws={"size": annot_size}, square=True, linewidths=0.3,
                cbar_kws={"shrink": 0.8}, **kwargs)
    ax.set(xlabel="dropout strength percentile", ylabel="noise strength percentile")


def few_shot_heatmap(summary: pd.DataFrame, canonical: str, rule: str = "primary"):
    """Fig. 5 (left): accuracy over the dropout x noise grid at the smallest k, correct labels, canonical alias."""
    rows = _pooled(summary)
    k = rows["k"].min()
    rows = rows[(rows["k"] == k) & (rows["label_condition"] == "correct") & (rows["alias"] == canonical)]
    if rows.empty:
        raise ValueError(f"the few-shot heatmap reads the correct-label trials of alias {canonical}; this run has none "
                         "(the few-shot label_conditions, experiments.few_shot or the model's settings, lack `correct`)")
    fig, axes = style.figure(width=style.COLUMN_WIDTH, height=2.9)
    _heatmap(axes[0][0], rows.assign(value=100 * rows[f"accuracy_{rule}"]), "value", ".0f",
             cmap="viridis", vmin=0, vmax=100)
    axes[0][0].set_title(f"k = {k} teaching pair{'s' if k > 1 else ''}: accuracy (%)")
    return fig


def few_shot_by_k(summaries: dict[str, pd.DataFrame], canonical: str, rule: str = "primary"):
    """Fig. 5 (right): accuracy pooled over the dropout x noise grid vs k (the summaries' "grid" rows: 95% Wilson
    on the effective sample size, since every cell runs the same base trials), canonical alias, one colour per
    model: correct teaching labels (solid) and, as the paper, swapped ones as accuracy under the labels taught,
    100 - the accuracy against the true perturbation (dashed)."""
    fig, axes = style.figure(width=style.COLUMN_WIDTH, height=2.4)
    ax = axes[0][0]
    colors = sns.color_palette("colorblind", len(summaries))
    for color, (model, summary) in zip(colors, summaries.items()):
        rows = summary[summary["subset"] == "grid"]
        if rows.empty:
            raise ValueError(f"{model}: its few-shot summary has no rows pooled over the grid (subset 'grid'); it was "
                             f"written before they existed: `snakemake --force results/{model}/few_shot.summary.csv` "
                             "(with the run's --configfile), then this figure again")
        for condition, linestyle, label in (("correct", "-", model), ("swapped", "--", f"{model}, swapped labels")):
            part = rows[(rows["label_condition"] == condition) & (rows["alias"] == canonical)].sort_values("k")
            if part.empty or (condition == "swapped" and rule == "argmax"):  # argmax may answer neither option
                continue
            share, low, high = (part[f"{c}_{rule}"].to_numpy() for c in ("accuracy", "ci_low", "ci_high"))
            if condition == "swapped":  # right by the taught labels = wrong against the truth
                share, low, high = 1 - share, 1 - high, 1 - low
            ax.errorbar(part["k"], 100 * share, yerr=[100 * (share - low), 100 * (high - share)], color=color,
                        linestyle=linestyle, marker="o", markersize=3, capsize=2, linewidth=1.2, label=label)
    ax.axhline(50, label="chance (50%)", **style.CHANCE_STYLE)
    ks = sorted({int(k) for s in summaries.values() for k in s["k"].unique()})
    ax.set(xlabel="teaching pairs k", ylabel="mean accuracy over grid (%)\n(swapped: by the taught labels)",
           ylim=(-2, 102), xticks=ks)
    ax.legend(loc="best")
    return fig


def flipped_labels(pairs: pd.DataFrame, model: str, aliases: list[str], names: dict[str, str]):
    """Fig. 6: the paper's "correct - flipped" per cell (k = smallest), one panel per alias: accuracy with correct
    teaching labels minus the swapped run's accuracy under the labels it was taught (100 - its accuracy), so 0 for a
    model that follows whatever labels it is taught and positive for one that keeps the words' meaning
    (`stats._flipped`).

    Cells whose exact test of 0 survives the within-panel correction carry a star. `names` maps an alias to the
    label words the model saw (e.g. "MASKING / JITTER").
    """
    rows = pairs[(pairs["model"] == model) & (pairs["comparison"] == "correct - swapped")
                 & (pairs["dropout_strength"].astype(str) != "all")]
    k = rows["k"].min()
    rows = rows[rows["k"] == k]
    present = [a for a in aliases if a in set(rows["alias"])] or list(dict.fromkeys(rows["alias"]))
    fig, axes = style.figure(ncols=len(present), width=min(style.FULL_WIDTH, 2.6 * len(present)), height=2.6)
    limit = max(1.0, float(np.nanmax(np.abs(100 * rows["flipped_difference"])))) if len(rows) else 1.0
    for ax, alias in zip(axes[0], present):
        part = rows[rows["alias"] == alias]
        part = part.assign(value=100 * part["flipped_difference"])
        _heatmap(ax, part, "value", "+.0f", cmap="RdBu", center=0, vmin=-limit, vmax=limit)
        for (y, x), significant in _cell_flags(part, "flipped_significant").items():
            if significant:
                ax.text(x + 0.85, y + 0.3, "*", fontsize=8, ha="center", va="center")
        ax.set_title(f"{names.get(alias, alias)}, k = {k}\ncorrect − flipped (pp)")
    return fig


def _cell_flags(part: pd.DataFrame, column: str) -> dict:
    """(row, column) heatmap positions -> whether the cell's corrected test (`column`) is significant."""
    d = _percentile(part["dropout_strength"].astype(float)).round().astype(int)
    n = _percentile(part["noise_strength"].astype(float)).round().astype(int)
    columns, rows = sorted(d.unique()), sorted(n.unique(), reverse=True)
    return {(rows.index(b), columns.index(a)): bool(s) for a, b, s in zip(d, n, part[column])}



def equivalence_map(curves: pd.DataFrame, pairs: pd.DataFrame, mapping: pd.DataFrame):
    """The dropout <-> noise equivalence map: each perturbation's localization curves (mean log P(correct), thin) and
    isotonic fits over their monotone range (thick, open markers) per model (colour) and sentence length (shade),
    then each condition's matched sigma per p (thin) and the mean over conditions per model (thick, +/- one SD) and,
    with several models, over all of them (black, dashed)."""
    fig, axes = style.figure(ncols=3, width=style.FULL_WIDTH, height=2.4)
    models = list(dict.fromkeys(curves["model"]))
    palette = dict(zip(models, sns.color_palette("colorblind", len(models))))
    lengths = sorted(curves["sentence_tokens"].unique())
    shade = {n: 0.45 + 0.55 * i / max(len(lengths) - 1, 1) for i, n in enumerate(lengths)}
    for ax, kind in zip(axes[0][:2], PERTURBATIONS):
        for (model, length), part in curves[curves["perturbation"] == kind].groupby(["model", "sentence_tokens"]):
            part = part.sort_values("strength")
            color = (*palette[model], shade[length])
            ax.plot(part["strength"], part["mean"], color=color, linewidth=0.6, marker="o", markersize=1.5)
            ax.plot(part["strength"], part["level"], color=color, linewidth=1.8, marker="o", markersize=3.5,
                    markerfacecolor="none")
        ax.set(xlabel=style.STRENGTH_LABELS[kind], title=f"{kind}: curves, isotonic fits (thick)")
    axes[0][0].set_ylabel("log P(correct letter)")
    axes[0][0].legend([Line2D([], [], color=palette[m]) for m in models], models, loc="best")
    ax = axes[0][2]
    for (model, _), part in pairs.groupby(["model", "sentence_tokens"]):
        ax.plot(part["dropout_strength"], part["noise_strength"], color=palette[model], linewidth=0.5, alpha=0.5)
    scopes = {model: palette[model] for model in models} | ({"all": "black"} if len(models) > 1 else {})
    for scope, color in scopes.items():
        mean = mapping[mapping["scope"] == scope].sort_values("dropout_strength")
        if mean.empty:
            continue
        ax.plot(mean["dropout_strength"], mean["noise_strength"], color=color, linewidth=1.8,
                linestyle="--" if scope == "all" else "-", label="all models" if scope == "all" else None)
        ax.fill_between(mean["dropout_strength"], mean["noise_strength"] - mean["noise_strength_sd"],
                        mean["noise_strength"] + mean["noise_strength_sd"], color=color, alpha=0.15, lw=0)
    if pairs.empty:
        ax.text(0.5, 0.5, "no matched pairs", ha="center", va="center", transform=ax.transAxes)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best")
    ax.set(xlabel=style.STRENGTH_LABELS["dropout"], ylabel="matched noise SD σ", title="noise σ matching each p")
    fig.tight_layout()
    return fig
