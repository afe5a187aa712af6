"""Paper figures: pure functions of the tables (no model code), one curve or cell per condition, PDF and PNG."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.proportion import proportion_confint

from conftest import kish_design_effect
from dropnoise import figures, stats, style, summary

RULES = ("primary", "aggregate", "argmax")


def trials(experiment: str, rng, n: int = 8, **columns) -> pd.DataFrame:
    """A synthetic per-trial table: every combination of `columns` with n trials, random correctness."""
    grid = pd.MultiIndex.from_product(list(columns.values()), names=list(columns)).to_frame(index=False)
    frame = grid.loc[grid.index.repeat(n)].reset_index(drop=True)
    hits = rng.random(len(frame)) < 0.7
    frame = frame.assign(model="m", experiment=experiment, logit_diff=rng.normal(size=len(frame)),
                         base_id=np.tile(np.arange(n), len(grid)), sentence_id=np.tile(np.arange(n), len(grid)),
                         **{f"correct_{r}": hits for r in RULES})
    return frame


def test_figure_modules_import_no_model_code():
    code = "import sys, dropnoise.figures, dropnoise.stats; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_localization_draws_one_curve_per_model_and_perturbation_with_chance_line(tmp_path):
    rng = np.random.default_rng(0)
    table = trials("localization", rng, perturbation=["dropout", "noise"], strength=[0.0, 0.3, 0.6],
                   sentence_tokens=[3, 7])
    summaries = {"a": summary.summarize(table, "localization"), "b": summary.summarize(table, "localization")}
    fig = figures.localization(summaries)
    for ax in fig.axes:
        data_lines = [line for line in ax.get_lines() if len(line.get_xdata()) == 3]
        assert len(data_lines) == 2  # one per model
        assert any(list(line.get_ydata()) == [50, 50] for line in ax.get_lines())  # chance
        assert ax.get_xlabel()
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["a", "b", "chance (50%)"]
    written = style.save(fig, tmp_path / "fig2")
    assert [p.suffix for p in written] == [".pdf", ".png"] and all(p.stat().st_size > 1000 for p in written)
    assert not list(tmp_path.glob(".*"))

    by_length = figures.localization_by_length(summaries)
    assert len(by_length.axes) == 4 and all(len(ax.get_lines()) == 3 for ax in by_length.axes)  # 2 lengths + chance


def test_zero_shot_emphasises_canonical_aliases_and_dashes_controls():
    rng = np.random.default_rng(1)
    table = trials("zero_shot", rng, alias=["dropout_noise", "x_y"], perturbation=["dropout", "noise"],
                   strength=[0.1, 0.2, 0.4])
    fig = figures.zero_shot(summary.summarize(table, "zero_shot"), {"x_y": "placeholder"}, ["dropout_noise"])
    ax = fig.axes[0]
    styles = {line.get_label(): (line.get_linestyle(), line.get_linewidth()) for line in ax.get_lines()}
    assert styles["dropout_noise"][0] == "-" and styles["x_y (placeholder)"][0] == "--"
    assert styles["dropout_noise"][1] > styles["x_y (placeholder)"][1]
    dodged = {line.get_label(): line.get_xdata() for line in ax.get_lines() if line.get_label() in styles}
    assert np.allclose(dodged["x_y (placeholder)"], [-7.5, 42.5, 92.5])  # strength percentiles, dodged
    assert np.allclose(dodged["dropout_noise"], [7.5, 57.5, 107.5])  # 0.3 of the grid spacing apart


def test_zero_shot_keeps_curves_with_equal_accuracy_apart():
    """A model at chance with few trials gives several aliases the same accuracies; no curve may hide another."""
    rng = np.random.default_rng(3)
    table = trials("zero_shot", rng, alias=["a", "b", "c"], perturbation=["dropout", "noise"], strength=[0.1, 0.2])
    table[[f"correct_{r}" for r in RULES]] = True
    fig = figures.zero_shot(summary.summarize(table, "zero_shot"), {}, ["a", "b", "c"])
    lines = [line for line in fig.axes[0].get_lines() if line.get_label() in {"a", "b", "c"}]
    assert len(lines) == 3 and all(list(line.get_ydata()) == [100, 100] for line in lines)
    assert len({tuple(line.get_xdata()) for line in lines}) == 3


def few_shot_summary(rng):
    table = trials("few_shot", rng, k=[1, 3], label_condition=["correct", "swapped"], alias=["none"],
                   dropout_strength=[0.1, 0.3, 0.5], noise_strength=[1.0, 2.0], perturbation=["dropout", "noise"])
    return table


def test_few_shot_heatmap_has_one_annotated_cell_per_grid_point():
    rng = np.random.default_rng(2)
    fig = figures.few_shot_heatmap(summary.summarize(few_shot_summary(rng), "few_shot"), "none")
    ax = fig.axes[0]
    assert len(ax.texts) == 3 * 2 and "k = 1" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "50", "100"]
    swapped_only = few_shot_summary(rng).query("label_condition != 'correct'")
    with pytest.raises(ValueError, match="lack `correct`"):  # not an empty heatmap
        figures.few_shot_heatmap(summary.summarize(swapped_only, "few_shot"), "none")


def test_few_shot_by_k_and_flipped_labels():
    rng = np.random.default_rng(3)
    table = few_shot_summary(rng)
    table["correct_primary"] = table.sentence_id % 4 > 0  # a sentence's answers agree across the grid
    summarized = summary.summarize(table, "few_shot")
    fig = figures.few_shot_by_k({"m": summarized}, "none")
    assert list(fig.axes[0].get_xticks()) == [1, 3]
    containers = {c.get_label(): c for c in fig.axes[0].containers}  # errorbar containers: line, caps, bars
    assert list(containers) == ["m", "m, swapped labels"] and containers["m, swapped labels"].lines[0].get_linestyle() == "--"
    cells = summarized[(summarized.label_condition == "swapped") & (summarized.subset == "all")]
    pooled = cells.assign(hits=(cells.accuracy_primary * cells.n).round()).groupby("k")[["hits", "n"]].sum()
    swapped = containers["m, swapped labels"]
    assert np.allclose(swapped.lines[0].get_ydata(), 100 * (1 - pooled.hits / pooled.n))  # by the taught labels
    # every grid cell runs the same base trials: the bars are Wilson on the effective sample size by sentence
    bars = [segment[:, 1] for segment in swapped.lines[2][0].get_segments()]
    for (k, part), (low, high) in zip(table[(table.label_condition == "swapped") & (table.alias == "none")].groupby("k"), bars):
        correct = part.correct_primary.to_numpy()
        deff = kish_design_effect(correct, part.sentence_id.to_numpy())
        wilson = proportion_confint(correct.sum() / deff, len(part) / deff, method="wilson")
        assert deff > 2 and np.allclose([low, high], 100 * (1 - np.array(wilson[::-1])))
    pairs = stats.label_pairs(table)
    fig = figures.flipped_labels(pairs, "m", ["none", "x_y"], {"none": "DROPOUT / NOISE"})
    assert len(fig.axes) == 2  # one panel (x_y did not run) and its colour bar
    assert "DROPOUT / NOISE" in fig.axes[0].get_title() and len(fig.axes[0].texts) >= 6
    cells = pairs[(pairs.comparison == "correct - swapped") & (pairs.dropout_strength != "all")
                  & (pairs.k == pairs.k.min())]
    drawn = {t.get_text() for t in fig.axes[0].texts} - {"*"}
    assert drawn == {f"{100 * v:+.0f}" for v in cells.flipped_difference}  # the paper's quantity, not `difference`


def test_fig2_leaves_out_a_models_extension_of_the_shared_grid():
    """As the paper's Fig. 2: a model that ran the shared noise grid plus a finer extension is drawn on the shared
    grid; a perturbation run on a grid of its own keeps its points."""
    from dropnoise import pipeline

    grid = {"dropout": [{"start": 0.0, "stop": 0.5, "step": 0.25}], "noise": [{"start": 0.0, "stop": 0.2, "step": 0.1}]}
    summary = pd.DataFrame({"perturbation": ["noise"] * 5 + ["dropout"] * 2,
                            "strength": [0.0, 0.1, 0.2, 0.15, 0.12, 0.0, 0.3], "subset": "all"})
    drawn = pipeline._on_grid(summary, grid)
    assert sorted(drawn[drawn.perturbation == "noise"].strength) == [0.0, 0.1, 0.2]
    assert sorted(drawn[drawn.perturbation == "dropout"].strength) == [0.0, 0.3]


def test_unknown_figure_is_a_clear_error(tmp_path):
    from conftest import ROOT
    from dropnoise import pipeline

    with pytest.raises(ValueError, match="unknown figure 'fig9'"):
        pipeline.paper_figure("fig9", {}, {"stats": {"rule": "primary"}}, ROOT / "data/aliases.yaml", str(tmp_path / "x"))


def test_few_shot_by_k_names_a_summary_written_before_its_grid_rows():
    summarized = summary.summarize(few_shot_summary(np.random.default_rng(4)), "few_shot")
    with pytest.raises(ValueError, match=r"m: its few-shot summary has no rows pooled over the grid.*--force"):
        figures.few_shot_by_k({"m": summarized[summarized.subset != "grid"]}, "none")
