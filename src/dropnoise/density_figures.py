"""Figures of the data-density analysis, pure functions of its tables (see density_dependence):
accuracy by density decile at each strength, and the odds ratios per SD of log density as a forest plot."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

from . import density_dependence, style


def decile_accuracy(frame: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per (perturbation, strength, density decile); deciles split the sentences (not the trials) by
    log density, fewer than 10 when there are fewer than 10 sentences."""
    parts = []
    for perturbation, part in frame.groupby("perturbation"):
        per_sentence = part.groupby("sentence_id").log_density.first()
        bins = min(10, len(per_sentence))
        decile = pd.qcut(per_sentence.rank(method="first"), bins, labels=False) + 1
        cells = part.assign(decile=part.sentence_id.map(decile)).groupby(["strength", "decile"]).correct
        parts.append(cells.agg(accuracy="mean", n_trials="size").reset_index().assign(perturbation=perturbation))
    return pd.concat(parts, ignore_index=True)


def deciles_figure(tables: dict[tuple[str, str], pd.DataFrame]):
    """One row per model x experiment (x label condition in few-shot: `density_dependence.panels`, whose trials
    they show), one column per perturbation; a line per strength, coloured by strength (one colour bar per
    column)."""
    rows = [((model, experiment, condition), frame, decile_accuracy(part))
            for (model, experiment), frame in tables.items()
            for condition, part in density_dependence.panels(frame, experiment) if len(part)]
    if not rows:
        raise ValueError("no trials to draw: the zero- and few-shot runs ran no canonical alias (none, "
                         "dropout_noise), whose trials the density figures show")
    perturbations = sorted({p for _, _, cells in rows for p in cells.perturbation.unique()})
    fig, axes = style.figure(ncols=len(perturbations), nrows=len(rows), width=style.FULL_WIDTH,
                             height=1.6 * len(rows) + 0.8, sharey=True, layout="constrained")
    cmap = plt.get_cmap("viridis")
    for col, perturbation in enumerate(perturbations):
        strengths = pd.concat([cells.strength[cells.perturbation == perturbation] for _, _, cells in rows])
        norm = Normalize(strengths.min(), strengths.max())
        for row, (names, frame, cells) in enumerate(rows):
            part = cells[cells.perturbation == perturbation]
            ax = axes[row][col]
            for strength, line in part.groupby("strength"):
                ax.plot(line.decile, line.accuracy, marker="o", markersize=2.5, linewidth=1, color=cmap(norm(strength)))
            ax.axhline(1 / len([c for c in frame if c.startswith("prob_")]), **style.CHANCE_STYLE)
            ax.set_ylim(-0.03, 1.03)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(" · ".join(filter(None, (*names, perturbation))))
            if col == 0:
                ax.set_ylabel("accuracy")
        axes[-1][col].set_xlabel("log-density decile (1 = sparsest)")
        fig.colorbar(ScalarMappable(norm, cmap), ax=axes[:, col], location="bottom", shrink=0.8, aspect=30,
                     label=style.STRENGTH_LABELS[perturbation])
    return fig


def forest_figure(dependence: pd.DataFrame):
    """Odds ratio per SD of log density with its 95% CI at the k-NN bandwidth (filled; grey when the fit is
    unreliable) and at the other bandwidth scales (open), one row per fit (model x experiment x perturbation, and
    label condition in few-shot); rows without a fit say so."""
    fits = ["model", "experiment", "perturbation", "label_condition"]
    dependence = dependence.assign(label_condition=dependence.label_condition.fillna(""))
    main = dependence[dependence.bandwidth_scale == 1].reset_index(drop=True)
    others = sorted(s for s in dependence.bandwidth_scale.unique() if s != 1)
    fig, axes = style.figure(width=style.COLUMN_WIDTH, height=0.28 * max(len(main), 1) + 0.9)
    ax = axes[0][0]
    y = np.arange(len(main))[::-1]
    for i, row in main.iterrows():
        if pd.isna(row.odds_ratio):
            ax.annotate("no fit", (1.02, y[i]), xycoords=("axes fraction", "data"), fontsize=6, va="center")
            continue
        color = "C0" if row.status == "ok" else "0.6"
        ax.errorbar(row.odds_ratio, y[i], xerr=[[row.odds_ratio - row.ci_low], [row.ci_high - row.odds_ratio]],
                    fmt="o", color=color, markersize=3, capsize=1.5, linewidth=0.9)
        ax.annotate(f"p={row.p_value:.2g}, adj. p_perm={row.permutation_p_adjusted:.2g}", (1.02, y[i]),
                    xycoords=("axes fraction", "data"), fontsize=6, va="center")
    keyed = main.set_index(fits).index
    for offset, marker, scale in zip(np.linspace(-0.25, 0.25, len(others)), "v^<>", others):
        part = dependence[dependence.bandwidth_scale == scale].set_index(fits)
        ax.plot(part.reindex(keyed).odds_ratio.to_numpy(), y + offset, linestyle="none", marker=marker,
                markersize=2.5, markerfacecolor="none", color="C1", label=f"h × {scale:g}")
    ax.axvline(1, **style.CHANCE_STYLE)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=2))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(y, [" · ".join(part for part in row if part) for row in main[fits].itertuples(index=False)])
    ax.set_ylim(-0.7, len(main) - 0.3)
    ax.set_xlabel("odds ratio per SD of log density (95% CI)")
    if others:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncols=len(others))
    return fig
