"""Statistics on synthetic per-trial tables with known answers: planted effects are found, null ones are not."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import patsy
import pytest
import statsmodels.api as sm
from scipy.stats import binomtest
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from conftest import kish_design_effect
from dropnoise import outputs, pipeline, stats, summary
from dropnoise.labels import load_aliases
from dropnoise.separation import separation
from dropnoise.vocabulary import STATS_TABLES

GROUPS = {"dropout_noise": "canonical", "none": "canonical", "x_y": "placeholder", "masking_jitter": "synonym"}


def bernoulli(rng, p):
    return rng.random(np.shape(p)) < p


def zero_shot_trials(rng, accuracy: dict, n_sentences: int = 40, strengths=(0.1, 0.2, 0.3, 0.4)) -> pd.DataFrame:
    """Single-class zero-shot trials: every alias runs on the same base trials (one sentence each) at every strength.
    `accuracy` maps alias -> function(strength) -> P(correct)."""
    rows = []
    for alias, p in accuracy.items():
        for kind in ("dropout", "noise"):
            for strength in strengths:
                correct = bernoulli(rng, np.full(n_sentences, p(strength)))
                for base, hit in enumerate(correct):
                    rows.append({"model": "m", "experiment": "zero_shot", "alias": alias, "perturbation": kind,
                                 "strength": strength, "base_id": f"{kind}-{base}", "sentence_id": f"s{base}",
                                 **{f"correct_{r}": bool(hit) for r in ("primary", "aggregate", "argmax")}})
    return pd.DataFrame(rows)


def test_condition_tests_chance_is_not_significant_and_a_strong_condition_is():
    rng = np.random.default_rng(0)
    trials = zero_shot_trials(rng, {"dropout_noise": lambda s: 0.5 if s < 0.4 else 0.95}, n_sentences=200)
    table = stats.condition_tests(trials, "zero_shot")
    primary = table[table.rule == "primary"].set_index(["perturbation", "strength"])
    assert not primary.loc[("dropout", 0.1), "significant"] and primary.loc[("dropout", 0.4), "significant"]
    assert (primary.p_adjusted >= primary.p_value).all()  # Holm never lowers a p-value
    row = primary.loc[("noise", 0.4)]
    exact = binomtest(int(row.correct), int(row.n), 0.5).proportion_ci(0.95, method="exact")
    assert row.cp_low == pytest.approx(exact.low) and row.cp_high == pytest.approx(exact.high)
    assert (table.wilson_low <= table.accuracy).all() and (table.accuracy <= table.wilson_high).all()
    assert set(table.rule) == {"primary", "aggregate", "argmax"}


def test_binomial_p_is_scipys_exact_test_at_whole_counts():
    for n in (1, 2, 7, 40, 301):
        for k in range(n + 1):
            assert stats.binomial_p(k, n) == pytest.approx(binomtest(k, n, 0.5).pvalue, rel=1e-9, abs=1e-300)
    assert stats.binomial_p(20, 26) < stats.binomial_p(20, 80 / 3) < stats.binomial_p(20, 27)  # real counts


def test_condition_tests_count_a_repeated_sentence_once_when_its_trials_agree():
    rng = np.random.default_rng(3)
    once = zero_shot_trials(rng, {"dropout_noise": lambda s: 0.7}, n_sentences=50)
    # every trial shown four times over (sentences drawn with replacement, each time answered alike)
    repeated = pd.concat([once.assign(base_id=once.base_id + f"-{r}") for r in range(4)], ignore_index=True)
    alone, four = stats.condition_tests(once, "zero_shot"), stats.condition_tests(repeated, "zero_shot")
    assert (alone.design_effect == 1).all() and four.design_effect.to_numpy() == pytest.approx(4)
    assert (four.n == 4 * alone.n).all() and (four.n_sentences == alone.n_sentences).all()
    for column in ("accuracy", "wilson_low", "wilson_high", "cp_low", "cp_high", "p_value"):
        assert four[column].to_numpy() == pytest.approx(alone[column].to_numpy()), column
    assert alone.p_value.to_numpy() == pytest.approx([binomtest(k, n, 0.5).pvalue for k, n in zip(alone.correct, alone.n)])


def test_summary_bands_are_the_condition_tests_intervals():
    """The figures' bands (summary) are condition_tests' Wilson intervals: plain Wilson where no sentence recurs,
    wider where a condition's trials repeat their sentences."""
    rng = np.random.default_rng(8)
    once = zero_shot_trials(rng, {"dropout_noise": lambda s: 0.7}, n_sentences=50)
    repeated = pd.concat([once.assign(base_id=once.base_id + f"-{r}") for r in range(3)], ignore_index=True)
    for trials, deff in ((once, 1), (repeated, 3)):
        tests = stats.condition_tests(trials, "zero_shot")
        bands = summary.summarize(trials.assign(logit_diff=0.0), "zero_shot")
        for rule in ("primary", "argmax"):
            mine = tests[tests.rule == rule].sort_values(["perturbation", "strength"])
            band = bands.sort_values(["perturbation", "strength"])
            assert band[f"ci_low_{rule}"].to_numpy() == pytest.approx(mine.wilson_low.to_numpy())
            assert band[f"ci_high_{rule}"].to_numpy() == pytest.approx(mine.wilson_high.to_numpy())
            assert mine.design_effect.to_numpy() == pytest.approx(deff)
        assert (bands.n_sentences == 50).all()
    plain = [proportion_confint(k, n, method="wilson") for k, n in zip(tests.correct, tests.n)]
    assert not np.allclose(tests[["wilson_low", "wilson_high"]].to_numpy(), plain)  # repeats widen the band


def control_trials(rng, n_trials: int = 400, n_sentences: int = 10, strengths=(0.0, 0.5)) -> pd.DataFrame:
    """Topic-control trials whose correctness is decided by the sentence of the second topic alone, which is the
    perturbed one in half of the trials: one sentence of each topic per trial, the target position at random."""
    rows = []
    good = rng.random(n_sentences) < 0.5  # the second topic's sentences the model always gets right
    for strength in strengths:
        for t in range(n_trials):
            first, second = rng.integers(n_sentences, size=2)
            ids = [f"art-{first:02d}", f"sport-{second:02d}"]
            target = int(rng.integers(2))
            rows.append({"model": "m", "experiment": "localization_control", "topic_pair": "art_sport",
                         "perturbation": "dropout", "strength": strength, "base_id": f"b{t}",
                         "sentence_id": ids[target], "other_sentence_id": ids[1 - target],
                         **{f"correct_{r}": bool(good[second]) for r in ("primary", "aggregate", "argmax")}})
    return pd.DataFrame(rows)


def test_the_controls_intervals_cluster_by_both_of_a_trials_sentences():
    """A control answer may hinge on the unperturbed sentence (the question asks about either), so clustering by
    the perturbed one alone splits a sentence's trials over others' clusters; two-way clustering keeps them."""
    trials = control_trials(np.random.default_rng(3))
    two_way = stats.condition_tests(trials, "localization_control")
    one_way = [kish_design_effect(cell.correct_primary.to_numpy(), cell.sentence_id.to_numpy())
               for _, cell in trials.groupby("strength")]  # by the perturbed sentence alone
    clean = trials[trials.strength == 0]
    sport = clean.sentence_id.where(clean.sentence_id.str.startswith("sport"), clean.other_sentence_id)
    repeats = clean.groupby(sport).size()
    whole = (repeats**2).sum() / repeats.sum()  # Kish's m_w of the sentence that decides: clusters that always agree
    assert two_way.design_effect.to_numpy() == pytest.approx(whole, rel=0.02)
    assert max(one_way) < whole / 3
    bands = summary.summarize(trials.assign(logit_diff=0.0), "localization_control")
    mine = two_way[two_way.rule == "primary"].sort_values("strength")
    pooled = bands[bands.subset == "all"].sort_values("strength")
    assert pooled.ci_low_primary.to_numpy() == pytest.approx(mine.wilson_low.to_numpy())
    with pytest.raises(ValueError, match="no other_sentence_id"):  # a table from before it was recorded
        stats.condition_tests(trials.drop(columns="other_sentence_id"), "localization_control")


def test_the_controls_slope_is_two_way_and_never_narrower_than_either_way():
    rng = np.random.default_rng(5)
    trials = control_trials(rng, n_trials=300, n_sentences=8, strengths=(0.0, 0.25, 0.5, 0.75))
    effect = dict(zip(sorted(set(trials.sentence_id) | set(trials.other_sentence_id)), rng.normal(0, 1, 16)))
    logit = 1 - 2 * trials.strength + trials.sentence_id.map(effect) + trials.other_sentence_id.map(effect)
    noisy = trials.assign(correct_primary=rng.random(len(trials)) < 1 / (1 + np.exp(-logit)))
    row = stats.dose_response(noisy, "localization_control").iloc[0]
    assert np.isfinite(row.slope) and row.slope_low < -2 < row.slope_high and row.n_clusters == 8
    data = pd.DataFrame({"correct": noisy.correct_primary.astype(int), "strength": noisy.strength,
                         **{f"sentence{k}": g for k, g in stats.clusterings(noisy, "localization_control").items()}})
    for way in ("sentence_a", "sentence_b"):
        one = stats.clustered_logit(data, "correct ~ strength", "strength", way)
        assert row.slope_high - row.slope_low >= one["high"] - one["low"] - 1e-9


def test_a_cell_right_on_every_trial_takes_its_curves_intra_sentence_correlation():
    """80 sentences, 12 trials each per cell (the topic control's design). A cell right on every trial says nothing
    about the correlation of a sentence's trials; it takes the largest of its curve's other cells, not the worst
    case (12, every sentence's trials always agreeing), which stays only for a curve none of whose cells estimates
    one, and not a pool: at strength 0 the target position, drawn per trial, makes every trial right with
    probability 1/2 whatever its sentence (correlation about 0), while from 0.75 on the sentence decides detection
    (correlation 1/5). The summary's bands are the same intervals."""
    rng = np.random.default_rng(12)
    sentences = np.repeat(np.arange(80), 12)
    rows = []
    for kind, accuracies in (("dropout", (0.5, 0.75, 0.9, 1.0)), ("noise", (1.0, 1.0))):
        for strength, accuracy in enumerate(accuracies):
            if accuracy in (0.5, 1.0):  # chance by the drawn target; or always right
                easy = np.full(80, accuracy)
            else:
                easy = rng.beta(4 * accuracy, 4 * (1 - accuracy), 80)  # correlation 1/(4 + 1)
            correct = rng.random(len(sentences)) < easy[sentences]
            rows.append(pd.DataFrame({"model": "m", "experiment": "localization", "perturbation": kind,
                                      "strength": float(strength), "sentence_id": sentences.astype(str),
                                      "sentence_tokens": 7, "logit_diff": 0.0,
                                      **{f"correct_{r}": correct for r in stats.RULES}}))
    trials = pd.concat(rows, ignore_index=True)
    tests = stats.condition_tests(trials, "localization").query("rule == 'primary'").set_index(["perturbation", "strength"])
    dropout = trials[trials.perturbation == "dropout"]
    terms = [stats.icc_terms(cell.correct_primary.to_numpy(), cell.sentence_id.to_numpy())
             for _, cell in dropout.groupby("strength")]
    own = [num / den for num, den, _ in terms[:3]]
    assert abs(own[0]) < 0.05 and min(own[1:]) > 0.1 and terms[3][:2] == (0.0, 0.0)
    assert tests.loc[("dropout", 3.0), "design_effect"] == pytest.approx(1 + 11 * max(own))
    pooled = sum(t[0] for t in terms) / sum(t[1] for t in terms)  # what a pool would give: pulled down by chance
    assert pooled < max(own) - 0.05
    for strength, (_, cell) in enumerate(dropout.groupby("strength")):
        if strength < 3:  # a cell with its own estimate keeps it
            mine = kish_design_effect(cell.correct_primary.to_numpy(), cell.sentence_id.to_numpy())
            assert tests.loc[("dropout", float(strength)), "design_effect"] == pytest.approx(mine)
    assert (tests.loc["noise", "design_effect"] == 12).all()
    worst = proportion_confint(80, 80, method="wilson")[0]
    assert tests.loc[("dropout", 3.0), "wilson_low"] > worst + 0.02
    assert tests.loc["noise", "wilson_low"].to_numpy() == pytest.approx(worst)
    bands = summary.summarize(trials, "localization").query("subset == 'all'").set_index(["perturbation", "strength"])
    assert bands.ci_low_primary.to_numpy() == pytest.approx(tests.loc[bands.index, "wilson_low"].to_numpy())
    assert bands.ci_high_primary.to_numpy() == pytest.approx(tests.loc[bands.index, "wilson_high"].to_numpy())
    assert stats.borrowed_icc([np.nan, -0.2]) == 0 and stats.borrowed_icc([np.nan]) == 1


def test_condition_tests_hold_their_size_when_sentences_repeat():
    """A null condition (accuracy 1/2 on average) whose 300 trials reuse 60 sentences, each sentence with its own
    accuracy (between-sentence spread: intra-sentence correlation 1/2): the binomial test on trials as if
    independent rejects far more than 5% of the time, the test on the effective sample size about 5%."""
    rng = np.random.default_rng(4)
    sentences = np.repeat(np.arange(60), 5)
    rejected = {"effective": 0, "independent": 0}
    for _ in range(400):
        correct = rng.random(300) < rng.beta(0.5, 0.5, 60)[sentences]
        k, deff = int(correct.sum()), stats.null_design_effect(correct, sentences)  # as condition_tests tests
        rejected["effective"] += stats.binomial_p(k / deff, 300 / deff) < 0.05
        rejected["independent"] += binomtest(k, 300, 0.5).pvalue < 0.05
    assert rejected["effective"] / 400 < 0.08 and rejected["independent"] / 400 > 0.2


def test_dose_response_intervals_cover_a_planted_slope_and_a_flat_curve_is_rarely_significant():
    """Over 40 simulated experiments: the 95% interval covers the true slope about 95% of the time, and a flat
    control curve is declared significant about 5% of the time (Holm within each perturbation)."""
    rng = np.random.default_rng(1)
    logistic = lambda s: 1 / (1 + np.exp(-(-1.0 + 3.0 * s)))  # noqa: E731
    covered, false_positives, detected = [], [], []
    for _ in range(40):
        trials = zero_shot_trials(rng, {"dropout_noise": logistic, "x_y": lambda s: 0.5}, n_sentences=60,
                                  strengths=np.linspace(0, 1, 6))
        table = stats.dose_response(trials, "zero_shot")
        planted, flat = table[table.alias == "dropout_noise"], table[table.alias == "x_y"]
        covered += list((planted.slope_low < 3.0) & (3.0 < planted.slope_high))
        detected += list(planted.significant)
        false_positives += list(flat.significant)
        assert np.allclose(planted.odds_ratio_range, np.exp(planted.slope))  # strengths span exactly 1
        assert (table.n_clusters == 60).all()
    assert np.mean(covered) >= 0.85 and np.mean(detected) >= 0.95 and np.mean(false_positives) <= 0.15


def test_dose_response_reports_why_a_slope_is_missing():
    rng = np.random.default_rng(2)
    trials = zero_shot_trials(rng, {"dropout_noise": lambda s: 1.0}, n_sentences=10)
    table = stats.dose_response(trials, "zero_shot")
    assert table.slope.isna().all() and (table.note == "no variation in the outcome").all()
    assert not table.significant.any()
    # each sentence answered the same at every strength (a model that ignores the perturbation): the clustered
    # standard error would collapse to zero, so no interval is claimed
    fixed = trials.assign(correct_primary=trials.sentence_id.isin(["s0", "s1", "s2", "s3"]))
    table = stats.dose_response(fixed, "zero_shot")
    assert table.slope_low.isna().all() and table.note.str.startswith("outcome constant within every").all()


def test_few_sentences_give_wide_intervals_not_overconfident_ones():
    """Two clusters: a t on 1 degree of freedom, so even a clear trend is not declared significant."""
    rng = np.random.default_rng(3)
    trials = zero_shot_trials(rng, {"dropout_noise": lambda s: 0.2 + 2 * s}, n_sentences=2, strengths=(0.0, 0.1, 0.2, 0.3, 0.4))
    trials = pd.concat([trials] * 10, ignore_index=True)
    table = stats.dose_response(trials, "zero_shot")
    assert (table.n_clusters == 2).all() and not table.significant.any()


def few_shot_trials(rng, p_correct: float, p_other: float, n_base: int = 60, other: str = "swapped") -> pd.DataFrame:
    """The same base trials under correct and another teaching-label condition, over a 2 x 2 grid."""
    rows = []
    for condition, p in (("correct", p_correct), (other, p_other)):
        for d in (0.1, 0.5):
            for s in (0.2, 0.9):
                for base in range(n_base):
                    hit = bool(bernoulli(rng, p))
                    rows.append({"model": "m", "experiment": "few_shot", "k": 1, "label_condition": condition,
                                 "alias": "none", "dropout_strength": d, "noise_strength": s,
                                 "perturbation": "dropout" if base % 2 else "noise",
                                 "strength": d if base % 2 else s, "base_id": f"k1-{base}",
                                 "sentence_id": f"s{base}", "correct_primary": hit})
    return pd.DataFrame(rows)


def test_label_pairs_detect_a_planted_difference_and_not_a_null_one():
    rng = np.random.default_rng(4)
    planted = stats.label_pairs(few_shot_trials(rng, 0.9, 0.3))
    pooled = planted[planted.dropout_strength == "all"].iloc[0]
    assert pooled.n_pairs == 4 * 60 and pooled.difference == pytest.approx(0.6, abs=0.1)
    assert pooled.significant and pooled.odds_ratio > 1
    cells = planted[planted.dropout_strength != "all"]
    assert len(cells) == 4 and cells.significant.all() and (cells.b > cells.c).all()

    null = stats.label_pairs(few_shot_trials(rng, 0.7, 0.7))
    assert not null.significant.any()


def test_label_pair_cells_are_exact_mcnemar_and_count_a_repeated_sentence_once():
    trials = few_shot_trials(np.random.default_rng(7), 0.8, 0.5)
    alone = stats.label_pairs(trials)
    cells = alone[alone.dropout_strength != "all"]
    assert cells.p_value.to_numpy() == pytest.approx(
        [mcnemar([[0, b], [c, 0]], exact=True).pvalue for b, c in zip(cells.b, cells.c)])
    # every base trial drawn four times over with its sentence, answered alike each time
    repeated = pd.concat([trials.assign(base_id=trials.base_id + f"-{r}") for r in range(4)], ignore_index=True)
    four = stats.label_pairs(repeated)
    four_cells = four[four.dropout_strength != "all"]
    assert (four_cells.b.to_numpy() == 4 * cells.b.to_numpy()).all()
    assert four_cells.p_value.to_numpy() == pytest.approx(cells.p_value.to_numpy())


def test_flipped_difference_is_zero_for_a_label_follower_and_positive_for_a_model_that_keeps_the_words():
    """The paper's Fig. 6 quantity, acc(correct) - (1 - acc(swapped)): a model that answers whatever label it was
    taught is right under correct labels exactly when it is wrong under swapped ones (0); a model that ignores the
    teaching and reads the words is right or wrong alike under both (positive where it is mostly right)."""
    rng = np.random.default_rng(8)
    trials = few_shot_trials(rng, 0.8, 0.5)
    follower, reader = trials.copy(), trials.copy()
    correct = follower.label_condition == "correct"
    by_base = follower[correct].set_index(["dropout_strength", "noise_strength", "base_id"]).correct_primary
    key = pd.MultiIndex.from_frame(follower.loc[~correct, ["dropout_strength", "noise_strength", "base_id"]])
    follower.loc[~correct, "correct_primary"] = ~by_base.reindex(key).to_numpy()
    reader.loc[~correct, "correct_primary"] = by_base.reindex(key).to_numpy()
    follows, reads = stats.label_pairs(follower), stats.label_pairs(reader)
    assert (follows.flipped_difference == 0).all() and not follows.flipped_significant.any()
    assert (follows.both_right == 0).all() and (follows.both_wrong == 0).all()
    assert follows.flipped_p_value.eq(1).all()
    assert reads.flipped_difference.to_numpy() == pytest.approx(2 * reads.accuracy_correct.to_numpy() - 1)
    assert reads.flipped_significant.all()
    assert (reads.difference == 0).all()  # the McNemar comparison sees no change, the flipped one a large effect
    # no sentence recurs within a cell here: the exact binomial test of both-right among the concordant pairs
    cells = reads[reads.dropout_strength != "all"]
    assert cells.flipped_p_value.to_numpy() == pytest.approx(
        [binomtest(r, r + w, 0.5).pvalue for r, w in zip(cells.both_right, cells.both_wrong)])
    # under argmax a wrong answer need not be the taught label: no flipped difference
    argmax = stats.label_pairs(reader.assign(correct_argmax=reader.correct_primary), rule="argmax")
    assert argmax.flipped_difference.isna().all() and argmax.flipped_significant.isna().all()


def test_a_pair_against_the_rest_never_makes_a_cell_more_significant():
    """Eight pairs one way over four sentences (two each), then one and two pairs the other way: the p-value rises
    (Kish's design effect at the observed share is undefined when every pair agrees; the one at the null is not)."""
    p = []
    for c in range(3):
        pairs = pd.DataFrame({"correct_first": [1] * 8 + [0] * c, "correct_second": [0] * 8 + [1] * c,
                              "sentence_id": [f"s{i // 2}" for i in range(8)] + [f"t{i}" for i in range(c)]})
        p.append(stats._mcnemar(pairs)["p_value"])
    assert p[0] == pytest.approx(binomtest(4, 4, 0.5).pvalue)  # four sentences' worth of agreeing pairs
    assert p[0] < p[1] < p[2]


def test_label_pairs_cover_every_other_label_condition():
    rng = np.random.default_rng(5)
    trials = pd.concat([few_shot_trials(rng, 0.8, 0.5), few_shot_trials(rng, 0.8, 0.5, other="random")])
    trials = trials.drop_duplicates(["label_condition", "dropout_strength", "noise_strength", "base_id"])
    table = stats.label_pairs(trials)
    assert set(table.comparison) == {"correct - random", "correct - swapped"}
    assert table.flipped_difference.isna().eq(table.comparison == "correct - random").all()  # swapped labels only


def test_alias_controls_find_a_canonical_advantage_one_sided():
    rng = np.random.default_rng(6)
    trials = zero_shot_trials(rng, {"dropout_noise": lambda s: 0.85, "x_y": lambda s: 0.5,
                                    "masking_jitter": lambda s: 0.85}, n_sentences=60)
    table = stats.alias_controls(trials, "zero_shot", GROUPS).set_index("alias")
    assert set(table.index) == {"x_y", "masking_jitter"} and (table.canonical == "dropout_noise").all()
    assert table.loc["x_y", "significant"] and table.loc["x_y", "difference"] > 0.2
    assert not table.loc["masking_jitter", "significant"]

    worse = zero_shot_trials(rng, {"dropout_noise": lambda s: 0.4, "x_y": lambda s: 0.8}, n_sentences=60)
    assert stats.alias_controls(worse, "zero_shot", GROUPS).p_value.iloc[0] > 0.99  # one-sided: canonical better


def test_identical_answers_mean_no_difference_not_a_missing_test():
    rng = np.random.default_rng(7)
    trials = zero_shot_trials(rng, {"dropout_noise": lambda s: 0.6}, n_sentences=30)
    copy = trials.assign(alias="x_y")
    table = stats.alias_controls(pd.concat([trials, copy]), "zero_shot", GROUPS)
    assert table.p_value.iloc[0] == 1.0 and table.difference.iloc[0] == 0 and not table.significant.iloc[0]


def test_latex_table_is_booktabs_with_scientific_p_values():
    rng = np.random.default_rng(8)
    table = stats.condition_tests(zero_shot_trials(rng, {"dropout_noise": lambda s: 0.9}, n_sentences=20), "zero_shot")
    latex = stats.to_latex(table)
    assert "\\toprule" in latex and "\\bottomrule" in latex and "family" not in latex
    assert "e-" in latex  # p-values in scientific notation


def answered_trials(rng, answer_dropout, n: int = 60) -> pd.DataFrame:
    """Zero-shot trials with the option order drawn per trial; `answer_dropout(kind, rank)` = P(the model picks the
    dropout option) for a trial of class `kind` at grid rank `rank`."""
    rows = []
    for kind, grid in (("dropout", (0.0, 0.3, 0.6)), ("noise", (0.0, 1.0, 2.0))):
        for rank, strength in enumerate(grid):
            for base in range(n):
                answer = "AB"[rng.integers(2)]
                dropout_letter = answer if kind == "dropout" else "BA"["AB".index(answer)]
                noise_letter = "BA"["AB".index(dropout_letter)]
                pred = dropout_letter if rng.random() < answer_dropout(kind, rank) else noise_letter
                rows.append({"model": "m", "experiment": "zero_shot", "alias": "dropout_noise", "perturbation": kind,
                             "strength": strength, "base_id": f"{kind}-{base}", "sentence_id": f"s{base % 40}",
                             "answer": answer, "prob_A": 0.5, "prob_B": 0.5, "logit_diff": 0.0, "pred_primary": pred,
                             "correct_primary": pred == answer})
    return pd.DataFrame(rows)


def test_discrimination_tells_a_word_preference_from_telling_the_classes_apart():
    rng = np.random.default_rng(7)
    # always "dropout": every dropout cell of condition_tests is far above chance, yet nothing is told apart
    biased = answered_trials(rng, lambda kind, rank: 1.0)
    recall = stats.condition_tests(biased.assign(**{f"correct_{r}": biased.correct_primary for r in ("aggregate", "argmax")}), "zero_shot")
    assert recall[(recall.perturbation == "dropout") & (recall.rule == "primary")].significant.all()
    table = stats.discrimination(biased).set_index("rank")
    assert (table.balanced_accuracy == 0.5).all() and (table.recall_dropout == 1).all() and (table.said_dropout == 1).all()
    assert not table.significant.any() and (table.loc[[0, 1, 2], "p_value"] == 1).all()
    # answers that are neither option (the argmax rule's OTHER) are left out and counted, not read as "noise"
    other = biased.assign(pred_primary=biased.pred_primary.where(biased.base_id != "noise-0", "OTHER"))
    table = stats.discrimination(other).set_index("rank")
    assert (table.loc[[0, 1, 2], "n_no_option"] == 1).all() and (table.recall_noise == 0).all()
    # tells them apart from rank 1 on: 0.5, then 0.85 and 0.95 balanced accuracy
    told = {0: 0.5, 1: 0.85, 2: 0.95}
    table = stats.discrimination(answered_trials(rng, lambda kind, rank: told[rank] if kind == "dropout" else 1 - told[rank]))
    cells = table[table["rank"] != "all"].set_index("rank")
    assert cells.balanced_accuracy.to_numpy() == pytest.approx([0.5, 0.85, 0.95], abs=0.1)
    assert cells.significant.tolist() == [False, True, True] and (cells.odds_ratio[[1, 2]] > 5).all()
    assert cells.dropout_strength.tolist() == [0.0, 0.3, 0.6] and cells.noise_strength.tolist() == [0.0, 1.0, 2.0]
    pooled = table[table["rank"] == "all"].iloc[0]
    assert pooled.significant and pooled.or_low > 1 and pooled.n_dropout == pooled.n_noise == 180


def test_condition_family_experiment_corrects_over_every_alias_curve():
    rng = np.random.default_rng(3)
    chance = {f"alias{i}": (lambda s: 0.5) for i in range(12)}
    trials = zero_shot_trials(rng, {"dropout_noise": lambda s: 0.95, **chance}, n_sentences=30)
    per_curve = stats.condition_tests(trials, "zero_shot")
    whole = stats.condition_tests(trials, "zero_shot", family="experiment")
    assert per_curve.family.nunique() == 13 * 2 * 3 and whole.family.nunique() == 3  # curves x rules; rules
    assert (whole.p_adjusted >= per_curve.p_adjusted - 1e-12).all()
    planted = whole[(whole.alias == "dropout_noise") & (whole.rule == "primary")]
    assert planted.significant.all() and not whole[whole.alias != "dropout_noise"].significant.any()


def test_separation_is_found_where_the_likelihood_has_no_maximum():
    rng = np.random.default_rng(0)
    data = pd.DataFrame({"length": rng.choice(["a_short", "b_mid", "c_long"], 600), "x": rng.normal(size=600)})
    data["correct"] = bernoulli(rng, 1 / (1 + np.exp(-data.x))).astype(int)
    assert separation(*reversed(patsy.dmatrices("correct ~ C(length) + x", data, return_type="dataframe"))) is None
    # every long sentence right: statsmodels' fit says it converged, and exactly those trials are fitted as certain
    data.loc[data.length == "c_long", "correct"] = 1
    y, X = patsy.dmatrices("correct ~ C(length) + x", data, return_type="dataframe")
    found = separation(X, y)
    long = (data.length == "c_long").to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = sm.GLM(y, X, family=sm.families.Binomial()).fit()
    assert fit.converged and fit.mu[long].min() > 1 - 1e-6 and fit.mu[~long].max() < 0.999
    assert found.unidentified == ("C(length)[T.c_long]",) and found.certain == long.sum() and found.trials == 600
    # complete separation by x: every trial is certain, nothing is estimable
    found = separation(X, (data.x > 0).astype(int))
    assert found.unidentified == tuple(X.columns) and found.certain == 600


def test_separation_names_the_coefficients_it_leaves_without_an_estimate():
    # y ~ t * C(f) with both t-cells of the reference level a all wrong: t's effect there (-inf minus -inf) has no
    # estimate, though some separating directions leave t alone; the cell (c, 1) is certain too
    cells = {("a", 0): [0] * 8, ("a", 1): [0] * 8, ("b", 0): [0] * 8, ("b", 1): [0, 1] * 4, ("c", 0): [0, 1] * 4,
             ("c", 1): [0] * 8}
    data = pd.DataFrame([{"f": f, "t": t, "y": y} for (f, t), ys in cells.items() for y in ys])
    y, X = patsy.dmatrices("y ~ t * C(f)", data, return_type="dataframe")
    found = separation(X, y)
    assert found.certain == 32 and found.involves(["t"]) and found.involves(["Intercept"])
    # one level of a nuisance factor all right: t stays estimable, from the other levels
    cells = {("a", 0): [0, 1, 1], ("a", 1): [0, 1, 1, 1], ("b", 0): [0, 0, 1], ("b", 1): [0, 1, 1],
             ("c", 0): [1, 1], ("c", 1): [1, 1, 1]}
    data = pd.DataFrame([{"f": f, "t": t, "y": y} for (f, t), ys in cells.items() for y in ys])
    y, X = patsy.dmatrices("y ~ t + C(f)", data, return_type="dataframe")
    found = separation(X, y)
    assert found.unidentified == ("C(f)[T.c]",) and found.certain == 5 and not found.involves(["t"])


def test_a_condition_right_on_every_pair_gets_a_test_not_an_infinite_odds_ratio():
    rng = np.random.default_rng(9)
    # without the check: odds ratio ~1e10 with a 95% CI of [3e10, 8e10] and p ~ 1e-50 (the clustered SE collapses)
    trials = zero_shot_trials(rng, {"dropout_noise": lambda s: 1.0, "x_y": lambda s: 0.7}, n_sentences=40)
    row = stats.alias_controls(trials, "zero_shot", GROUPS).iloc[0]
    assert np.isnan(row.odds_ratio) and "separation" in row.note and "no finite estimate for first" in row.note
    assert row.test.startswith("exact sign test") and row.test.endswith("(one-sided)") and row.significant
    # every sentence that differs favours the canonical alias: the exact sign-flip p, 2^-k for k such sentences
    differing = (trials[trials.alias == "dropout_noise"].set_index("base_id").correct_primary.astype(int)
                 - trials[trials.alias == "x_y"].set_index("base_id").correct_primary.astype(int))
    sentences = trials[trials.alias == "x_y"].set_index("base_id").sentence_id
    assert row.p_value == pytest.approx(0.5 ** (differing.groupby(sentences).mean() > 0).sum())
    worse = zero_shot_trials(rng, {"dropout_noise": lambda s: 0.7, "x_y": lambda s: 1.0}, n_sentences=40)
    row = stats.alias_controls(worse, "zero_shot", GROUPS).iloc[0]
    assert row.test.startswith("exact sign test") and row.p_value > 0.99  # one-sided: the canonical is not better


def test_perfect_discrimination_is_tested_not_reported_as_an_infinite_odds_ratio():
    rng = np.random.default_rng(4)
    table = stats.discrimination(answered_trials(rng, lambda kind, rank: float(kind == "dropout")))
    pooled = table[table["rank"] == "all"].iloc[0]
    assert np.isnan(pooled.odds_ratio) and "separation" in pooled.note and pooled.balanced_accuracy == 1
    assert pooled.test.startswith("Mann-Whitney U") and pooled.p_value < 1e-10 and pooled.significant


# Trial-table columns no statistics table or summary uses, filled with values that would break a test that read them.
UNUSED = ("trial_id", "seed", "template_variant", "sentence_tokens", "n_perturbed_tokens", "n_prompt_tokens", "target",
          "alias_group", "logit_A", "logit_B", "sum_prob_A", "sum_prob_B", "pred_aggregate", "pred_argmax",
          "log_prob_correct", "argmax_token", "entropy")


def whole_trial_tables(rng) -> dict[str, pd.DataFrame]:
    """Zero- and few-shot tables with every column a real run writes, those no table reads unusable."""
    told = {0: 0.5, 1: 0.8, 2: 0.9}
    zero = pd.concat([answered_trials(rng, lambda kind, rank: told[rank] if kind == "dropout" else 1 - told[rank])
                      .assign(alias=alias) for alias in ("dropout_noise", "x_y")], ignore_index=True)
    few = few_shot_trials(rng, 0.8, 0.6).assign(answer="A", pred_primary="A", prob_A=0.5, prob_B=0.5, logit_diff=0.0)
    tables = {"zero_shot": zero, "few_shot": few}
    return {experiment: table.assign(**{f"correct_{r}": table.correct_primary for r in ("aggregate", "argmax")},
                                     **{column: "unused" for column in UNUSED}) for experiment, table in tables.items()}


@pytest.mark.parametrize("table", STATS_TABLES)
def test_a_statistics_job_reads_only_the_columns_its_table_uses(tmp_path, table):
    settings = {"rule": "primary", "alpha": 0.05, "correction": "holm", "condition_family": "curve"}
    aliases = str(Path(__file__).parents[1] / "data/aliases.yaml")
    files, expected = [], []
    for experiment, trials in whole_trial_tables(np.random.default_rng(5)).items():
        if experiment not in STATS_TABLES[table]:
            continue
        assert not any(map(stats.reads(table, experiment, "primary"), UNUSED))
        files.append(tmp_path / f"{experiment}.csv")
        outputs.write_csv(trials, files[-1])
        expected.append(stats.build(table, pipeline.read_trials(files[-1]), experiment,
                                    load_aliases(aliases).groups(), **settings))
    pipeline.stats_table(table, list(map(str, files)), aliases, settings, tmp_path / "out.csv", tmp_path / "out.tex")
    outputs.write_csv(pd.concat(expected, ignore_index=True), tmp_path / "expected.csv")
    assert len(expected[0]) and (tmp_path / "out.csv").read_text() == (tmp_path / "expected.csv").read_text()


def test_summaries_read_only_the_columns_they_use(tmp_path):
    for experiment, trials in whole_trial_tables(np.random.default_rng(6)).items():
        assert not any(map(summary.reads(experiment), UNUSED))
        outputs.write_csv(trials, tmp_path / "trials.csv")
        pipeline.summarize(str(tmp_path / "trials.csv"), experiment, str(tmp_path / "summary.csv"))
        outputs.write_csv(summary.summarize(pipeline.read_trials(tmp_path / "trials.csv"), experiment),
                          tmp_path / "expected.csv")
        assert (tmp_path / "summary.csv").read_text() == (tmp_path / "expected.csv").read_text()
