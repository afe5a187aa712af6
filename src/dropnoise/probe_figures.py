"""Figures inside the model: pure functions of probes.csv, represented_vs_reported.csv, mutual_information.csv,
steering.csv and a series' dynamics.csv, drawn with the shared style (dropnoise.style)."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
import numpy as np
import pandas as pd

from . import style

SITE_TITLES = {"answer": "answer position", "span_mean": "span mean", "span_last": "last span token"}
TASK_TITLES = {"perturbed": "perturbed vs clean", "which_sentence": "which sentence", "dropout_vs_noise": "dropout vs noise",
               "none_dropout_noise": "none/dropout/noise"}
COLORMAPS = {"dropout": "Blues", "noise": "Oranges", "matched": "Greens"}


def _panels(table: pd.DataFrame) -> list[tuple]:
    """One row of panels per experiment, task and perturbation, in a fixed order."""
    keys = table[["experiment", "task", "perturbation"]].drop_duplicates()
    order = {task: i for i, task in enumerate(TASK_TITLES)}
    return sorted(map(tuple, keys.to_numpy()), key=lambda k: (k[0], order[k[1]], k[2]))


def _row_title(experiment: str, task: str, perturbation: str) -> str:
    """The row's experiment and label; the perturbation where the label is about one (matched strengths: in the legend)."""
    return f"{experiment}\n{TASK_TITLES[task]}" + ("" if perturbation == "matched" else f" ({perturbation})")


def _label(row) -> str:
    if row.perturbation == "matched":
        return f"p={row.dropout_strength:g} / σ={row.noise_strength:g}"
    return f"{'p' if row.perturbation == 'dropout' else 'σ'}={row.strength:g}"


def _by_level(frame: pd.DataFrame, perturbation: str, x: str = "layer"):
    """(label, colour, rows sorted by `x`) per strength level, light to dark."""
    levels = sorted(frame.level.unique())
    colours = plt.get_cmap(COLORMAPS[perturbation])(np.linspace(0.35, 1.0, len(levels)))
    for level, colour in zip(levels, colours):
        rows = frame[frame.level == level].sort_values(x)
        yield _label(rows.iloc[0]), colour, rows


def probes_accuracy(table: pd.DataFrame, stem) -> None:
    """Accuracy against layer, one line per strength (dotted: the norm-only probe; grey: shuffled labels; dashed:
    the majority class's share, chance for the set)."""
    panels = _panels(table)
    sites = [s for s in SITE_TITLES if s in set(table.site)]
    fig, axes = style.figure(ncols=len(sites), nrows=len(panels), width=style.FULL_WIDTH, height=1.5 * len(panels),
                             sharex=True, sharey=True)
    for r, (experiment, task, perturbation) in enumerate(panels):
        rows = table[(table.experiment == experiment) & (table.task == task) & (table.perturbation == perturbation)]
        for c, site in enumerate(sites):
            ax, here = axes[r, c], rows[rows.site == site]
            if here.empty:  # which sentence: probed at the answer position only (probes.datasets)
                ax.text(0.5, 0.5, "not probed here", ha="center", va="center", transform=ax.transAxes, fontsize=6)
            for label, colour, level in _by_level(here[here.features == "linear"], perturbation):
                ax.plot(level.layer, level.accuracy, color=colour, lw=1.2, label=label)
                norm = here[(here.features == "norm") & (here.level == level.level.iloc[0])].sort_values("layer")
                ax.plot(norm.layer, norm.accuracy, color=colour, lw=0.8, ls=":")
            shuffled = here[here.features == "shuffled"].groupby("layer").accuracy.mean()
            ax.plot(shuffled.index, shuffled.to_numpy(), color="0.6", lw=0.8, label="shuffled labels")
            ax.axhline(here.majority_accuracy.mean() if len(here) else 0.5, **style.CHANCE_STYLE)
            ax.set_ylim(0.25, 1.02)
            if r == 0:
                ax.set_title(SITE_TITLES[site])
            if c == 0:
                ax.set_ylabel(f"{_row_title(experiment, task, perturbation)}\nprobe accuracy", fontsize=6)
            if r == len(panels) - 1:
                ax.set_xlabel("layer")
        axes[r, -1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=5)
    style.save(fig, stem)


def probes_represented_vs_reported(table: pd.DataFrame, stem) -> None:
    """Probe accuracy at the answer position against the model's verbal accuracy, per condition."""
    fig, axes = style.figure()
    ax = axes[0, 0]
    markers = {"localization": "o", "zero_shot": "s"}
    for (experiment, perturbation), rows in table.groupby(["experiment", "perturbation"]):
        colour = plt.get_cmap(COLORMAPS[perturbation])(0.75)
        ax.errorbar(rows.verbal_accuracy, rows.probe_accuracy,
                    yerr=[rows.probe_accuracy - rows.probe_low, rows.probe_high - rows.probe_accuracy],
                    fmt=markers.get(experiment, "^"), color=colour, ms=3, lw=0.6,
                    label=f"{experiment}, {perturbation} (layer {rows.layer.iloc[0]})")
    ax.plot([0, 1], [0, 1], **style.CHANCE_STYLE)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("verbal accuracy (model's answer)")
    ax.set_ylabel("probe accuracy (answer position)")
    titles = [f"{experiment}: r = {part.pearson_r.iloc[0]:.2f}, ρ = {part.spearman_rho.iloc[0]:.2f}"
              if not np.isnan(part.pearson_r.iloc[0]) else f"{experiment}: r undefined"
              for experiment, part in table.groupby("experiment")]
    ax.set_title("; ".join(titles) or "no condition", fontsize=6)
    ax.legend(fontsize=5, loc="lower right")
    style.save(fig, stem)


def mi_layers(table: pd.DataFrame, stem) -> None:
    """At the answer position, per layer: nHSIC(T;X), nHSIC(T;Y) above its permutation null (middle bandwidth of
    the sweep), and the probe's lower bound on I(T;Y) in bits."""
    bandwidths = sorted(table.bandwidth.unique())
    bandwidth = bandwidths[len(bandwidths) // 2]
    table = table[(table.site == "answer") & (table.bandwidth == bandwidth)].assign(
        excess=lambda t: t.nhsic_ty - t.nhsic_ty_null_mean)
    panels = _panels(table)
    columns = [("nhsic_tx", "nHSIC(T; X = layer 0)"), ("excess", "nHSIC(T; Y) − null"),
               ("probe_bound_bits", "probe bound on I(T; Y), bits")]
    fig, axes = style.figure(ncols=3, nrows=len(panels), width=style.FULL_WIDTH, height=1.4 * len(panels), sharex=True)
    for r, (experiment, task, perturbation) in enumerate(panels):
        rows = table[(table.experiment == experiment) & (table.task == task) & (table.perturbation == perturbation)]
        for c, (column, title) in enumerate(columns):
            ax = axes[r, c]
            for label, colour, level in _by_level(rows, perturbation):
                ax.plot(level.layer, level[column], color=colour, lw=1.1, label=label)
            if column != "nhsic_tx":
                ax.axhline(0.0, **style.CHANCE_STYLE)
            if r == 0:
                ax.set_title(title)
            if c == 0:
                ax.set_ylabel(_row_title(experiment, task, perturbation), fontsize=6)
            if r == len(panels) - 1:
                ax.set_xlabel("layer")
        axes[r, -1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=5)
    fig.suptitle(f"answer position; RBF width {bandwidth:g} × median distance", fontsize=7)
    style.save(fig, stem)


STEERING_VECTORS = {"noise_minus_dropout": "noise − dropout vector",
                    "perturbed_minus_clean": "perturbed − clean vector"}
STEERING_KINDS = {"mass_mean": ("-", "mass-mean vector"), "random": ("--", "random direction, same norm"),
                  "shuffled_labels": (":", "shuffled-label vector, same norm")}
STEERING_BASES = {"none": "clean runs", "dropout": "dropout runs", "noise": "noise runs"}
UNITS = {"projection_sd": "SD of dev projections", "residual_norm": "mean residual norm"}


def _base_colour(base: str):
    return "0.15" if base == "none" else plt.get_cmap(COLORMAPS[base])(0.8)


def steering_dose_response(table: pd.DataFrame, stem) -> None:
    """Per vector (columns), against the injected scale: the noise-minus-dropout logit difference and the fraction
    answering noise on held-out trials (colour: the base run; line style: the vector or a control; band: 95%
    interval of the mass-mean vector), and the perplexity ratio on clean text (the guard)."""
    vectors = [v for v in STEERING_VECTORS if v in set(table.vector)]
    rows = [("logit_diff", "logit(noise) − logit(dropout)", 0.0), ("frac_noise", "fraction answering noise", 0.5),
            ("ppl_ratio", "perplexity ratio to scale 0", 1.0)]
    fig, axes = style.figure(ncols=len(vectors), nrows=3, width=style.FULL_WIDTH, height=5.4, sharex=True, sharey="row")
    for c, vector in enumerate(vectors):
        here = table[table.vector == vector]
        for kind, (ls, _) in STEERING_KINDS.items():
            for base in STEERING_BASES:
                line = here[(here.kind == kind) & (here.base == base)].sort_values("scale")
                for r, (column, _, _) in enumerate(rows[:2]):
                    axes[r, c].plot(line.scale, line[column], color=_base_colour(base), ls=ls, lw=1.1, marker=".", ms=3)
                    if kind == "mass_mean":
                        axes[r, c].fill_between(line.scale, line[f"{column}_low"], line[f"{column}_high"],
                                                color=_base_colour(base), alpha=0.12, lw=0)
            guard = here[here.kind == kind].drop_duplicates("scale").sort_values("scale")
            axes[2, c].plot(guard.scale, guard.ppl_ratio, color="0.15", ls=ls, lw=1.1, marker=".", ms=3)
        axes[2, c].axhline(here.max_ppl_ratio.iloc[0], color="tab:red", lw=0.8, ls="-.")
        for r, (_, label, reference) in enumerate(rows):
            axes[r, c].axhline(reference, **style.CHANCE_STYLE)
            if c == 0:
                axes[r, c].set_ylabel(label)
        axes[0, c].set_title(f"{STEERING_VECTORS[vector]} at layer {here.layer.iloc[0]}")
        axes[2, c].set_xlabel(f"scale α (× {UNITS[here.unit.iloc[0]]})")
    axes[1, 0].set_ylim(-0.02, 1.02)
    bases = [Line2D([], [], color=_base_colour(base), label=label) for base, label in STEERING_BASES.items()]
    kinds = [Line2D([], [], color="0.15", ls=ls, label=label) for ls, label in STEERING_KINDS.values()]
    legends = [("colour: trials' own run", bases), ("line style: injected vector", kinds),
               ("guard", [Line2D([], [], color="tab:red", ls="-.", label="perplexity ratio limit")])]
    for r, (title, handles) in enumerate(legends):
        axes[r, -1].legend(handles=handles, title=title, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=6,
                           title_fontsize=6)
    style.save(fig, stem)


# (metric, task, site, row label) per row of the dynamics figure; site None: the model's answer
DYNAMICS_ROWS = (
    ("verbal_accuracy", "which_sentence", None, "verbal answer\nwhich sentence"),
    ("probe_accuracy", "which_sentence", "answer", "probe, answer position\nwhich sentence"),
    ("probe_accuracy", "perturbed", "answer", "probe, answer position\nperturbed vs clean"),
    ("nhsic_tx", "perturbed", "answer", "nHSIC(T; X = layer 0)\nperturbed vs clean"),
    ("nhsic_ty_excess", "perturbed", "answer", "nHSIC(T; Y) − null\nperturbed vs clean"),
)


def step_axis(ax, steps) -> None:
    """Log-scaled training steps when they span two decades or more (symlog when step 0 is among them)."""
    positive = [s for s in steps if s > 0]
    if positive and max(positive) >= 100 * min(positive):
        ax.set_xscale("symlog", linthresh=min(positive)) if 0 in set(steps) else ax.set_xscale("log")


def _accuracy_lines(ax, rows: pd.DataFrame, perturbation: str) -> None:
    """One line per strength with its 95% band."""
    for name, colour, level in _by_level(rows, perturbation, x="step"):
        ax.plot(level.step, level.value, color=colour, lw=1.1, marker="o", ms=2, label=name)
        ax.fill_between(level.step, level.ci_low, level.ci_high, color=colour, alpha=0.15, lw=0)
    ax.axhline(0.5, **style.CHANCE_STYLE)
    ax.set_ylim(-0.02, 1.12)
    ax.legend(loc="upper left", ncol=4, fontsize=4.5, handlelength=1.2, columnspacing=0.8, borderaxespad=0.2)


def _layer_lines(ax, rows: pd.DataFrame, perturbation: str) -> None:
    """One line per layer at the strongest strength."""
    strongest = rows[rows.level == rows.level.max()]
    layers = sorted(strongest.layer.dropna().unique())
    for layer, colour in zip(layers, plt.get_cmap("viridis")(np.linspace(0.0, 0.9, len(layers)))):
        line = strongest[strongest.layer == layer].sort_values("step")
        ax.plot(line.step, line.value, color=colour, lw=1.1, marker="o", ms=2, label=f"layer {int(layer)}")
    if len(strongest):
        ax.set_title(f"{_label(strongest.iloc[0])}", fontsize=6)


def dynamics(table: pd.DataFrame, stem) -> None:
    """Against training step, one column per perturbation: the model's localization accuracy, the answer-position
    probe at its best layer, and nHSIC per layer (rows of DYNAMICS_ROWS that have data)."""
    perturbations = [p for p in ("dropout", "noise") if p in set(table.perturbation)]
    rows = [row for row in DYNAMICS_ROWS if ((table.metric == row[0]) & (table.task == row[1])).any()]
    fig, axes = style.figure(ncols=len(perturbations), nrows=len(rows), width=0.75 * style.FULL_WIDTH,
                             height=1.3 * len(rows), sharex=True)
    for c, perturbation in enumerate(perturbations):
        here = table[table.perturbation == perturbation]
        for r, (metric, task, site, label) in enumerate(rows):
            ax = axes[r, c]
            selected = here[(here.metric == metric) & (here.task == task)]
            selected = selected[selected.site.isna() if site is None else selected.site == site]
            (_layer_lines if metric.startswith("nhsic") else _accuracy_lines)(ax, selected, perturbation)
            if r == 0:
                ax.set_title(perturbation)
            if c == 0:
                ax.set_ylabel(label, fontsize=6)
            if metric.startswith("nhsic") and c == len(perturbations) - 1:
                ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=5)
            step_axis(ax, table.step.unique())
        axes[-1, c].set_xlabel("training step")
    style.save(fig, stem)


FIGURES = {
    "probes_accuracy": probes_accuracy,
    "probes_represented_vs_reported": probes_represented_vs_reported,
    "mi_layers": mi_layers,
    "steering_dose_response": steering_dose_response,
    "dynamics": dynamics,
}
