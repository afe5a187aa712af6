"""Data density: the log-space KDE against direct computations, the k-NN bandwidth, the reference corpus, the
encoders, the per-trial regression (a planted density effect is recovered, shuffled density shows none), the
source contrast, the figures, and config errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import patsy
import pytest
import statsmodels.api as sm
import torch
import yaml
from scipy.stats import gaussian_kde
from sklearn.neighbors import KernelDensity
from statsmodels.stats.multitest import multipletests

from conftest import ROOT, build_tiny
from dropnoise import density, density_dependence, density_figures, density_pipeline, sentence_encoders
from test_workflow import snakemake


def test_log_kde_equals_direct_computation_and_libraries():
    rng = np.random.default_rng(0)
    reference, queries = rng.normal(size=(300, 5)), rng.normal(size=(40, 5))
    h = 0.8
    direct = np.log([
        np.mean(np.exp(-((q - reference) ** 2).sum(1) / (2 * h**2))) / (2 * np.pi * h**2) ** 2.5 for q in queries
    ])
    ours = density.log_kde_and_neighbours(queries, reference, h)[0]
    np.testing.assert_allclose(ours, direct, rtol=1e-10)
    np.testing.assert_allclose(ours, KernelDensity(bandwidth=h).fit(reference).score_samples(queries), rtol=1e-8)
    # one dimension: scipy's gaussian_kde with its bandwidth factor set to h / std
    line = rng.normal(size=200)
    scipy_kde = gaussian_kde(line, bw_method=h / line.std(ddof=1))
    np.testing.assert_allclose(density.log_kde_and_neighbours(line[:20, None], line[:, None], h)[0],
                               scipy_kde.logpdf(line[:20]), rtol=1e-10)


def test_log_kde_stays_exact_where_a_linear_sum_underflows():
    reference = np.zeros((1, 384))
    query = np.full((1, 384), 0.5)  # squared distance 96: exp(-96 / (2 * 0.1**2)) underflows to 0
    h = 0.1
    expected = -96 / (2 * h**2) - 0.5 * 384 * np.log(2 * np.pi * h**2)
    assert density.log_kde_and_neighbours(query, reference, h)[0][0] == pytest.approx(expected, rel=1e-12)
    assert np.isfinite(expected)


def test_knn_bandwidth_is_the_median_kth_neighbour_distance():
    points = np.arange(50, dtype=float)[:, None]  # spacing 1: the 2nd neighbour of an inner point is 1 away
    assert density.knn_bandwidth(points, k=2, sample=50, seed=0) == 1.0
    assert density.knn_bandwidth(points, k=4, sample=50, seed=0) == 2.0
    with pytest.raises(density.DensityError, match="more than k=5"):
        density.knn_bandwidth(points[:5], k=5, sample=5, seed=0)


def test_reference_corpus_leaves_out_targets_and_duplicates():
    candidates = iter(["a b.", "target one.", "a b.", "c d.", "target two.", "e f.", "g h."])
    corpus = density.reference_corpus(candidates, ["target one.", "target two."], size=3, max_candidates=100)
    assert corpus == ["a b.", "c d.", "e f."]
    with pytest.raises(density.DensityError, match="1 sentence"):
        density.reference_corpus(iter(["x.", "t."]), ["t."], size=3, max_candidates=100)


def test_density_table_has_a_column_per_bandwidth_scale():
    rng = np.random.default_rng(1)
    targets = pd.DataFrame({"sentence_id": ["a", "b"]})
    table, facts = density.density_table(targets, rng.normal(size=(2, 3)), rng.normal(size=(100, 3)), k=5,
                                         scales=[0.5, 1, 2], sample=100, seed=0)
    assert list(table.columns) == ["sentence_id", "log_density_x0.5", "effective_neighbours_x0.5", "log_density",
                                   "effective_neighbours", "log_density_x2", "effective_neighbours_x2"]
    assert facts["bandwidth"] > 0 and facts["n_reference"] == 100
    spread = facts["median_effective_neighbours"]
    assert 1 <= spread["0.5"] < spread["1"] < spread["2"] <= 100  # a wider kernel weighs more of the corpus


def test_effective_neighbours_counts_the_reference_points_a_density_rests_on():
    reference = np.array([[0.0], [0.0], [10.0], [10.0]])
    # narrow kernel at 0: the two points at 0 weigh equally, those at 10 not at all -> 2; very wide: all 4
    assert density.log_kde_and_neighbours(np.array([[0.0]]), reference, 0.5)[1][0] == pytest.approx(2)
    assert density.log_kde_and_neighbours(np.array([[0.0]]), reference, 1e6)[1][0] == pytest.approx(4)
    # on unit vectors in 384 dimensions, distances concentrate: the k-NN bandwidth weighs nearly everything
    rng = np.random.default_rng(0)
    points = rng.normal(size=(501, 384))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    h = density.knn_bandwidth(points[1:], 10, 500, 0)
    assert density.log_kde_and_neighbours(points[:1], points[1:], h)[1][0] > 400


def test_minilm_embeds_paraphrases_closer_than_unrelated_sentences():
    vectors = sentence_encoders.minilm_embeddings(
        ["The cat sleeps on the sofa.", "A cat is sleeping on the couch.", "Interest rates rose in March."]
    )
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, rtol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3


def test_lm_features_are_batch_independent_and_match_the_models_loss(smol_tokenizer):
    model = build_tiny("llama", vocab_size=len(smol_tokenizer))
    sentences = ["The committee postponed the vote until next spring.", "Cats sleep."]  # long first: reordered
    nll, scored, pooled = sentence_encoders.lm_features(model, smol_tokenizer, sentences, batch_size=2)
    for i, sentence in enumerate(sentences):
        alone = sentence_encoders.lm_features(model, smol_tokenizer, [sentence], batch_size=1)
        np.testing.assert_allclose(alone[0], nll[i : i + 1], rtol=1e-4)
        np.testing.assert_allclose(alone[2], pooled[i : i + 1], atol=1e-5)
        ids = torch.tensor([smol_tokenizer(sentence).input_ids])
        with torch.no_grad():
            assert model(ids, labels=ids).loss.item() == pytest.approx(nll[i], rel=1e-4)
        assert scored[i] == ids.shape[1] - 1


def planted_trials(effect: float, n_sentences: int = 60, per_sentence: int = 12, seed: int = 0) -> pd.DataFrame:
    """Trials whose log-odds of a correct answer rise by `effect` per SD of their sentence's log density, with
    strength and position effects and a clean NLL unrelated to the outcome."""
    rng = np.random.default_rng(seed)
    sentences = pd.DataFrame({
        "sentence_id": [f"s{i}" for i in range(n_sentences)],
        "sentence_tokens": rng.choice([3, 7, 11], n_sentences),
        "log_density": rng.normal(-50, 5, n_sentences),
        "clean_nll": rng.normal(4, 1, n_sentences),
        "source": "synthetic",
    })
    trials = sentences.loc[sentences.index.repeat(per_sentence)].reset_index(drop=True)
    trials["strength"] = rng.choice([0.2, 0.5, 0.8], len(trials))
    trials["answer"] = rng.choice(["A", "B"], len(trials))
    logit = effect * (trials.log_density + 50) / 5 + (trials.strength - 0.5) + 0.3 * (trials.answer == "A")
    trials["correct"] = (rng.random(len(trials)) < 1 / (1 + np.exp(-logit))).astype(int)
    return trials.assign(perturbation="dropout", n_tokens=trials.sentence_tokens, position=trials.answer,
                         prob_A=0.5, prob_B=0.5)


def test_a_sigmoid_strength_curve_is_fitted_by_a_spline_not_a_line(monkeypatch):
    """Accuracy that jumps with strength: a straight line in strength misfits it and pulls the density odds ratio
    toward 1 (planted log odds ratio 0.5; measured over 6 seeds: 0.24 with the line, 0.39 with the spline)."""
    estimates = {"spline": [], "line": []}
    for seed in range(3):
        trials = planted_trials(0.5, n_sentences=200, per_sentence=30, seed=seed)
        rng = np.random.default_rng(100 + seed)
        trials["strength"] = rng.choice(np.round(np.linspace(0.1, 1.0, 10), 2), len(trials))
        logit = 0.5 * (trials.log_density + 50) / 5 + np.where(trials.strength > 0.45, 4.0, -2.0)
        trials["correct"] = (rng.random(len(trials)) < 1 / (1 + np.exp(-logit))).astype(int)
        spline = density_dependence.fit_density(trials, "log_density", 0, 0)
        assert "cr(strength_z" in spline["formula"] and spline["status"] == "ok"
        with monkeypatch.context() as patched:
            patched.setattr(density_dependence, "SPLINE_STRENGTHS", 100)
            line = density_dependence.fit_density(trials, "log_density", 0, 0)
        estimates["spline"].append(np.log(spline["odds_ratio"]))
        estimates["line"].append(np.log(line["odds_ratio"]))
    assert np.mean(estimates["spline"]) > np.mean(estimates["line"]) + 0.1
    assert "cr(" not in density_dependence.formula(density_dependence._design(planted_trials(0.5), "log_density"))


def test_regression_recovers_a_planted_density_effect():
    fit = density_dependence.fit_density(planted_trials(0.8), "log_density", permutations=50, seed=1)
    assert fit["status"] == "ok"
    assert fit["ci_low"] < np.exp(0.8) < fit["ci_high"] and fit["ci_low"] > 1.3
    assert fit["p_value"] < 1e-6 and fit["wald_p"] < 1e-6
    assert fit["permutation_p"] == pytest.approx(1 / 51)  # no shuffle beats the real densities
    assert "n_tokens" in fit["formula"] and "clean_nll" in fit["formula"]


def test_regression_finds_no_effect_in_shuffled_density():
    trials = planted_trials(0.8)
    per_sentence = trials.groupby("sentence_id").log_density.first()
    shuffled = pd.Series(np.random.default_rng(5).permutation(per_sentence.to_numpy()), per_sentence.index)
    fit = density_dependence.fit_density(trials.assign(log_density=trials.sentence_id.map(shuffled)), "log_density",
                                         permutations=50, seed=1)
    assert fit["ci_low"] < 1 < fit["ci_high"]
    assert fit["p_value"] > 0.05 and fit["permutation_p"] > 0.05


def test_wald_test_and_interval_use_t_on_sentences_minus_one_df():
    """Few sentences: the cluster-robust test must use t(G - 1), not the normal (too liberal with 12 sentences)."""
    from scipy.stats import t

    trials = planted_trials(0.3, n_sentences=12, per_sentence=20).assign(strength=0.5)  # one density term
    fit = density_dependence.fit_density(trials, "log_density", permutations=0, seed=1)
    assert fit["status"] == "ok" and "strength" not in fit["formula"]
    beta = np.log(fit["odds_ratio"])
    half_width = (np.log(fit["ci_high"]) - np.log(fit["ci_low"])) / 2
    se = half_width / t.ppf(0.975, 11)
    assert fit["wald_p"] == pytest.approx(2 * t.sf(abs(beta / se), 11), rel=1e-6)


def test_a_fit_with_no_more_sentences_than_parameters_reports_no_estimate():
    trials = planted_trials(0.8, n_sentences=5, per_sentence=12)
    fit = density_dependence.fit_density(trials, "log_density", permutations=20, seed=1)
    assert fit["status"].startswith(("not estimable", "fit failed")) and "5 sentences for" in fit["status"]
    assert all(np.isnan(fit.get(column, np.nan)) for column in ("odds_ratio", "ci_low", "wald_p", "p_value",
                                                                  "permutation_p"))


def two_class_trials(bias: float, detection: float, seed: int = 0) -> pd.DataFrame:
    """Zero-shot-shaped trials (each sentence under both classes, canonical aliases, one strength per class) where
    density shifts the tendency to answer "dropout" by `bias` per SD and the detection log-odds by `detection`."""
    dropout = planted_trials(0.0, seed=seed).assign(perturbation="dropout", alias_group="canonical")
    trials = pd.concat([dropout, dropout.assign(perturbation="noise", strength=dropout.strength * 10)],
                       ignore_index=True)
    z = (trials.log_density + 50) / 5
    said_dropout = 1 / (1 + np.exp(-(bias * z + np.where(trials.perturbation == "dropout", 1, -1) * detection * z)))
    says = np.random.default_rng(seed + 1).random(len(trials)) < said_dropout
    return trials.assign(correct=(says == (trials.perturbation == "dropout")).astype(int))


def test_a_density_effect_on_saying_dropout_is_not_detection():
    """Zero-shot's "correct" is "named the applied class": a one-class fit reads a response bias as detection, the
    two-class fit does not, and reports the bias as the density x class term."""
    biased = two_class_trials(bias=1.0, detection=0.0)
    one_class = density_dependence.fit_density(biased[biased.perturbation == "dropout"], "log_density", 0, 0)
    assert one_class["p_value"] < 1e-4 and one_class["odds_ratio"] > 1.5  # what the one-class fit would report
    [(perturbation, condition, part)] = density_dependence.fit_groups(biased, "zero_shot")
    joint = density_dependence.fit_density(part, "log_density", 30, 0)
    assert perturbation == "both" and "z_density:cls" in joint["formula"]
    assert joint["ci_low"] < 1 < joint["ci_high"] and joint["permutation_p"] > 0.05
    assert joint["class_interaction"] > 1.0  # dropout's log-odds rise, noise's fall: the bias
    detected = density_dependence.fit_density(two_class_trials(bias=0.0, detection=0.8), "log_density", 30, 0)
    assert detected["ci_low"] > 1.5 and detected["permutation_p"] == pytest.approx(1 / 31)


def test_density_that_only_marks_the_source_is_not_an_effect():
    """In a mixed pool, a source that is both sparser and answered worse must not show up as a density effect."""
    first = planted_trials(0.0, seed=1)
    second = planted_trials(0.0, seed=2).assign(source="natural", sentence_id=lambda f: "n" + f.sentence_id,
                                                log_density=lambda f: f.log_density - 10)
    second["correct"] = (np.random.default_rng(3).random(len(second)) < 0.2).astype(int)
    trials = pd.concat([first, second], ignore_index=True)
    fit = density_dependence.fit_density(trials, "log_density", 30, 0)
    assert "C(source)" in fit["formula"]
    assert fit["ci_low"] < 1 < fit["ci_high"] and fit["permutation_p"] > 0.05


def test_a_nuisance_term_aliased_with_another_is_left_out_and_named():
    """A source whose sentences all have one length: source and length are one term (a singular Hessian if both
    are kept)."""
    trials = planted_trials(0.8, seed=6)
    trials["n_tokens"] = np.where(trials.n_tokens == 3, 3, 7)  # two lengths: a source indicator is linear in them
    trials["source"] = np.where(trials.n_tokens == 3, "file", "synthetic")
    fit = density_dependence.fit_density(trials, "log_density", 0, 0)
    left_out = fit["formula"].split("collinear, left out: ")[1]
    assert fit["status"] == "ok" and left_out in ("C(source)[T.synthetic])", "n_tokens)")  # one of the pair
    assert fit["ci_low"] > 1.3  # the planted effect, found


def test_nll_on_density_finds_familiarity_beyond_length_and_not_in_shuffles():
    rng = np.random.default_rng(8)
    n = 300
    pool = pd.DataFrame({"sentence_id": [f"s{i}" for i in range(n)], "source": "synthetic",
                         "sentence_tokens": rng.choice([7, 15, 23], n), "log_density": rng.normal(-50, 5, n)})
    pool["clean_nll"] = 5 - 0.05 * pool.sentence_tokens - 0.1 * (pool.log_density + 50) + rng.normal(0, 0.5, n)
    pool["log_density_x2"] = rng.permutation(pool.log_density.to_numpy())  # a scale that carries nothing
    table = density_dependence.density_and_nll({"m": pool}, [1, 2], 50, 0).set_index("bandwidth_scale")
    assert table.loc[1, "ci_high"] < 0 and table.loc[1, "permutation_p"] == pytest.approx(1 / 51)
    assert table.loc[1, "slope"] == pytest.approx(-0.5, abs=0.1)  # -0.1 per unit, an SD of 5
    assert table.loc[1, "r2_gain"] > 0.3 and table.loc[2, "permutation_p"] > 0.05
    assert table.loc[1, "formula"] == "clean_nll ~ z_density + C(n_tokens)"


def test_fits_take_perturbed_trials_of_canonical_aliases_per_label_condition():
    trials = two_class_trials(0.0, 0.5)
    trials = pd.concat([trials.assign(label_condition="correct"), trials.assign(label_condition="swapped"),
                        trials.assign(label_condition="correct", alias_group="placeholder"),
                        trials.assign(label_condition="correct", strength=0.0)], ignore_index=True)
    groups = {(p, c): part for p, c, part in density_dependence.fit_groups(trials, "few_shot")}
    assert set(groups) == {("both", "correct"), ("both", "swapped")}
    assert all(len(part) == len(trials) / 4 and (part.strength > 0).all() and (part.alias_group == "canonical").all()
               for part in groups.values())
    localization = {p: part for p, _, part in density_dependence.fit_groups(trials, "localization")}
    assert set(localization) == {"dropout", "noise"} and all((p.strength > 0).all() for p in localization.values())


def test_descriptive_views_keep_label_conditions_apart_and_skip_control_aliases():
    """Swapped teaching labels invert what "correct" means: pooled with the correct-label trials, a density trend
    and a difference between sources cancel (the deciles then sat flat at 0.5)."""
    trials = planted_trials(1.5, seed=5).assign(alias_group="canonical")
    trials["source"] = np.where(trials.log_density > -50, "dense", "sparse")
    few_shot = pd.concat([trials.assign(label_condition="correct"),
                          trials.assign(label_condition="swapped", correct=1 - trials.correct),
                          trials.assign(label_condition="correct", alias_group="placeholder", correct=0)],
                         ignore_index=True)
    contrast = density_dependence.source_contrast({("m", "few_shot"): few_shot}).set_index(["label_condition", "source"])
    assert contrast.n_trials.sum() == 2 * len(trials)  # the placeholder alias's trials are left out
    accuracy = contrast.groupby(level=[0, 1]).apply(lambda c: np.average(c.accuracy, weights=c.n_trials))
    assert accuracy["correct", "dense"] - accuracy["correct", "sparse"] > 0.3
    assert accuracy["swapped", "dense"] == pytest.approx(1 - accuracy["correct", "dense"])
    figure = density_figures.deciles_figure({("m", "few_shot"): few_shot})
    assert [ax.get_title() for ax in figure.axes if ax.get_title()] == ["m · few_shot · correct · dropout",
                                                                         "m · few_shot · swapped · dropout"]
    for ax, sign in zip(figure.axes, (1, -1)):
        for line in ax.lines[:-1]:  # a line per strength, then chance
            deciles = line.get_ydata()
            assert sign * (deciles[-1] - deciles[0]) > 0.3
    controls_only = few_shot[few_shot.alias_group == "placeholder"]
    assert density_dependence.source_contrast({("m", "zero_shot"): controls_only}).empty
    with pytest.raises(ValueError, match="ran no canonical alias"):
        density_figures.deciles_figure({("m", "zero_shot"): controls_only})


def test_only_the_primary_bandwidth_is_corrected_for_multiple_fits():
    trials = planted_trials(0.3).assign(**{"log_density_x2": lambda f: f.log_density / 2})
    tables = {("m", "localization"): trials, ("m2", "localization"): planted_trials(0.0, seed=4).assign(
        **{"log_density_x2": lambda f: f.log_density / 2})}
    table = density_dependence.density_dependence(tables, [1, 2], "primary", 20, 0, "holm")
    primary = table[table.bandwidth_scale == 1]
    np.testing.assert_allclose(primary.permutation_p_adjusted, multipletests(primary.permutation_p, method="holm")[1])
    assert table[table.bandwidth_scale == 2].permutation_p_adjusted.isna().all()


def test_pseudo_r2_gain_is_mcfaddens_r2_less_that_without_density():
    import statsmodels.formula.api as smf

    trials = planted_trials(0.5)
    fit = density_dependence.fit_density(trials, "log_density", 0, 0)
    data = density_dependence._design(trials, "log_density")
    text = fit["formula"]
    reduced = text.replace("z_density + ", "").replace(" + z_density:strength_z", "")

    def r2(formula):
        model = smf.glm(formula, data, family=sm.families.Binomial()).fit()
        return 1 - model.llf / model.llnull

    assert fit["pseudo_r2_gain"] == pytest.approx(r2(text) - r2(reduced), rel=1e-6) and fit["pseudo_r2_gain"] > 0


def test_degenerate_joint_fits_say_what_they_are():
    trials = two_class_trials(0.0, 0.5)
    # the answer letter fixed by the class: cls is spanned by position and left out, and permutations still run
    fixed = trials.assign(position=np.where(trials.perturbation == "dropout", "A", "B"))
    fit = density_dependence.fit_density(fixed, "log_density", 5, 0)
    assert "left out: cls" in fit["formula"] and fit["permutations"] == 5
    # density spanned by the controls (one density per source, two sources): not estimable, not carried by density
    spanned = trials.assign(source=np.where(trials.log_density > -50, "x", "y"))
    spanned["log_density"] = np.where(spanned.source == "x", -40.0, -60.0)
    assert "density is spanned by the control terms" in density_dependence.fit_density(spanned, "log_density", 0, 0)["status"]
    # no canonical trials, or one class only
    none = density_dependence.density_dependence({("m", "zero_shot"): trials.assign(alias_group="placeholder")}, [1],
                                                 "primary", 0, 0)
    assert none.status.tolist() == ["no trials (perturbed, of a canonical alias)"]
    one = density_dependence.density_dependence({("m", "zero_shot"): trials[trials.perturbation == "dropout"]}, [1],
                                                "primary", 0, 0)
    assert one.status.str.contains("one class only").all()


def test_permutation_stays_within_strata():
    sentences = pd.DataFrame({"value": np.arange(8.0), "stratum": [3, 3, 3, 7, 7, 7, 7, 11]})
    drawn = density_dependence.shuffles_within(sentences, "value", ["stratum"], 50, np.random.default_rng(0))
    assert drawn.shape == (50, 8)
    for index in sentences.groupby("stratum").indices.values():
        assert (np.sort(drawn[:, index], axis=1) == sentences.value.to_numpy()[index]).all()
    assert len({tuple(row) for row in drawn}) > 10  # the draws differ from one another
    missing = sentences.assign(stratum=np.nan)  # a missing stratum is one stratum, not left out
    drawn = density_dependence.shuffles_within(missing, "value", ["stratum"], 50, np.random.default_rng(0))
    assert (np.sort(drawn, axis=1) == sentences.value.to_numpy()).all() and len({tuple(r) for r in drawn}) > 10


def _mixed_sources(effect):
    natural = planted_trials(effect, seed=2).assign(source="natural", sentence_id=lambda f: "n" + f.sentence_id)
    return pd.concat([planted_trials(effect, seed=1), natural], ignore_index=True)


def _few_shot(effect):
    trials = two_class_trials(bias=0.3, detection=effect)
    return trials.assign(k=np.random.default_rng(4).choice([1, 3, 5], len(trials)))


@pytest.mark.parametrize("trials", [
    lambda: planted_trials(0.4),  # one class
    lambda: planted_trials(0.4).assign(strength=0.5),  # one tested term (no strength interaction)
    lambda: two_class_trials(bias=0.5, detection=0.3),  # both classes, the class term kept at observed density
    lambda: _mixed_sources(0.3),  # C(source)
    lambda: _few_shot(0.3),  # C(k)
], ids=["one_class", "one_term", "two_classes", "sources", "few_shot_k"])
def test_score_statistic_equals_statsmodels_score_test(trials):
    """The per-sentence shortcut must give Rao's score statistic of the density terms, observed and shuffled."""
    data = density_dependence._design(trials(), "log_density")
    y, X = patsy.dmatrices(density_dependence.formula(data), data, return_type="dataframe")
    tested = [t for t in density_dependence.DENSITY_TERMS if t in X]
    reduced = sm.GLM(y, X.drop(columns=tested), family=sm.families.Binomial()).fit()
    sentences = data.groupby("sentence_id").z_density.first()
    sentence = pd.Categorical(data.sentence_id, categories=sentences.index).codes
    z = np.vstack([sentences.to_numpy(), np.random.default_rng(3).permutation(sentences.to_numpy())])
    carriers = np.column_stack([np.ones(len(data)), data.strength_z][: len(tested)])
    ours = density_dependence.score_statistics(reduced, sentence, carriers, z)
    for row, statistic in zip(z, ours):
        extra = row[sentence][:, None] * carriers
        expected = reduced.model.score_test(reduced.params, exog_extra=extra)[0]
        assert statistic == pytest.approx(float(np.squeeze(expected)), rel=1e-6)


def test_permutation_test_keeps_its_size_when_trials_of_a_sentence_are_correlated():
    """No density effect, a sentence random effect of SD 1: the permutation test must reject about 5% of null sets
    at 0.05, where the chi-squared p of the same statistic, which treats trials as independent, rejects far more."""
    from scipy.stats import chi2

    rejections, naive, sets = 0, 0, 200
    for seed in range(sets):
        trials = planted_trials(0.0, n_sentences=40, per_sentence=20, seed=seed)
        rng = np.random.default_rng(1000 + seed)
        sentence_effect = trials.sentence_id.map(pd.Series(rng.normal(0, 1, 40), [f"s{i}" for i in range(40)]))
        logit = sentence_effect + (trials.strength - 0.5) + 0.3 * (trials.answer == "A")
        trials["correct"] = (rng.random(len(trials)) < 1 / (1 + np.exp(-logit))).astype(int)
        fit = density_dependence.fit_density(trials, "log_density", permutations=99, seed=seed)
        rejections += fit["permutation_p"] <= 0.05
        naive += chi2.sf(fit["score_stat"], 2) <= 0.05
    assert rejections <= 18  # P(X > 18) < 0.01 for X ~ Binomial(200, 0.05)
    assert naive >= 30  # the clustering is strong enough to matter


def test_constant_terms_leave_the_formula_and_degenerate_tables_are_reported():
    trials = planted_trials(0.5).assign(n_tokens=15, strength=0.3)
    text = density_dependence.formula(trials)
    assert text == "correct ~ z_density + clean_nll + C(position)"
    fit = density_dependence.fit_density(trials.assign(correct=1), "log_density", 10, 0)
    assert "same outcome" in fit["status"] and "odds_ratio" not in fit


def test_source_contrast_compares_sources_at_matched_strength():
    synthetic, natural = planted_trials(0.0, seed=1), planted_trials(0.0, seed=2)
    natural = natural.assign(source="natural", sentence_id="n" + natural.sentence_id,
                             correct=(np.random.default_rng(3).random(len(natural)) < 0.9).astype(int))
    table = density_dependence.source_contrast({("m", "localization"): pd.concat([synthetic, natural])})
    assert set(table.source) == {"natural", "synthetic"} and len(table) == 3 * 2
    assert (table.source_p < 1e-6).all() and (table.status == "ok").all()
    # every natural sentence right: the source term has no finite estimate; every trial at 0.8 right: a nuisance level
    perfect = density_dependence.source_contrast({("m", "localization"): pd.concat([synthetic, natural.assign(correct=1)])})
    assert perfect.source_p.isna().all() and perfect.status.str.startswith("not estimable: quasi-complete").all()
    top = pd.concat([synthetic, natural])
    top.loc[top.strength == 0.8, "correct"] = 1
    top = density_dependence.source_contrast({("m", "localization"): top})
    assert (top.source_p < 1e-6).all() and top.status.str.contains(r"separation: .* no finite estimate for C\(strength\)\[T.0.8\]$").all()
    alone = density_dependence.source_contrast({("m", "localization"): synthetic})
    assert alone.source_p.isna().all() and alone.status.str.contains("one source").all()
    # a cell's band is on its effective sample size, as every accuracy band: repeating each trial widens it
    twice = density_dependence.source_contrast({("m", "localization"): pd.concat([synthetic, synthetic])})
    assert twice.design_effect.to_numpy() == pytest.approx(2 * alone.design_effect.to_numpy(), rel=0.05)
    assert twice.ci_low.to_numpy() == pytest.approx(alone.ci_low.to_numpy(), abs=0.01)


def test_a_mixed_pool_tags_each_source_and_keeps_the_main_sources_ids(smol_tokenizer, tmp_path):
    """sentences.mix adds a second source to the pool (what the source contrast compares)."""
    from dropnoise import pipeline, sentences

    smol_tokenizer.save_pretrained(tmp_path / "tokenizer")
    natural = tmp_path / "natural.txt"  # stands in for natural text: any file, one sentence per line
    natural.write_text("\n".join(s for _, s in zip(range(3000), sentences.Grammar(ROOT / "data/synthetic_grammar.yaml").sentences(99))))
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["sentences"] = {"source": "synthetic", "per_bucket": 5, "max_candidates": 20_000,
                           "grammar": str(ROOT / "data/synthetic_grammar.yaml")}
    config["experiments"] = {"localization": {**config["experiments"]["localization"], "buckets": [7, 11]}}
    alone = tmp_path / "alone.csv"
    pipeline.build_sentences(tmp_path / "tokenizer", config, alone)
    config["sentences"]["mix"] = [{"source": "file", "path": str(natural)}]
    mixed = tmp_path / "mixed.csv"
    pipeline.build_sentences(tmp_path / "tokenizer", config, mixed)
    alone, mixed = pd.read_csv(alone), pd.read_csv(mixed)
    assert mixed.groupby(["source", "sentence_tokens"]).size().to_dict() == {
        (source, n): 5 for source in ("file", "synthetic") for n in (7, 11)}
    assert mixed.sentence_id.is_unique
    pd.testing.assert_frame_equal(mixed[mixed.source == "synthetic"].reset_index(drop=True), alone)


def test_figures_draw_every_strength_and_every_fit(tmp_path):
    trials = planted_trials(0.8)
    # as the rule reads it: the trial table's CSV (only the columns the analysis uses) joined with density.csv
    trial_file, density = tmp_path / "localization.csv", trials.drop_duplicates("sentence_id")
    trials.drop(columns=["log_density", "clean_nll", "source"]).rename(columns={"correct": "correct_primary"}).assign(
        pred_primary="A", logit_A=0.0).to_csv(trial_file, index=False)
    tables = density_pipeline.joined_tables(["m"], ["localization"], [str(trial_file)], {"m": density}, "primary")
    assert not {"pred_primary", "logit_A"} & set(tables["m", "localization"])
    deciles = density_figures.deciles_figure(tables)
    panel = deciles.axes[0]
    assert len(panel.lines) == trials.strength.nunique() + 1  # one per strength, plus chance
    assert panel.lines[-1].get_ydata()[0] == 0.5  # chance: two options
    trials = trials.assign(**{"log_density_x0.5": 2 * trials.log_density, "log_density_x2": trials.log_density / 2})
    fits = density_dependence.density_dependence({("m", "localization"): trials}, [0.5, 1, 2], "primary", 0, 0)
    forest = density_figures.forest_figure(fits)
    assert [t.get_text() for t in forest.axes[0].get_yticklabels()] == ["m · localization · dropout"]


def test_trial_tables_keep_sentence_ids_that_look_like_missing_values(tmp_path):
    """A pool's ids are read as strings (density.csv, the pool): the trial tables must be read the same way, or an
    id such as "NA" or "null" would become NaN and its trials would lose their density."""
    trials = planted_trials(0.8, n_sentences=4).assign(sentence_id=lambda t: t.sentence_id.map(
        {"s0": "NA", "s1": "null", "s2": "None", "s3": "s3"}))
    trial_file = tmp_path / "localization.csv"
    trials.drop(columns=["log_density", "clean_nll", "source"]).rename(columns={"correct": "correct_primary"}).to_csv(
        trial_file, index=False)
    density_file = tmp_path / "density.csv"
    trials.drop_duplicates("sentence_id")[["sentence_id", "log_density", "clean_nll", "source"]].to_csv(
        density_file, index=False)
    densities = density_pipeline.read_densities(["m"], [str(density_file)])
    table = density_pipeline.joined_tables(["m"], ["localization"], [str(trial_file)], densities, "primary")["m", "localization"]
    assert table.groupby("sentence_id").log_density.first().to_dict() == (
        trials.groupby("sentence_id").log_density.first().to_dict())


def test_bad_density_config_fails_with_the_key(tmp_path):
    paper = yaml.safe_load((ROOT / "config.yaml").read_text())
    paper["density"]["bandwidth"]["scales"] = [0.5, 2]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(paper))
    out = snakemake("-n", "--configfile", str(path), check=False)
    assert out.returncode != 0 and "scales" in out.stdout + out.stderr


def test_a_separated_fit_is_flagged_and_one_separated_by_density_has_no_estimate():
    # every trial of the longest sentences right: that level's coefficient is infinite; density still has an estimate
    trials = planted_trials(0.5, n_sentences=80)
    trials.loc[trials.n_tokens == 11, "correct"] = 1
    fit = density_dependence.fit_density(trials, "log_density", 10, 0)
    assert fit["status"] == ("unreliable fit: quasi-complete separation: 348 of 960 trials fitted as certain, no finite "
                             "estimate for C(n_tokens)[T.11]")
    assert np.isfinite(fit["odds_ratio"]) and fit["permutations"] == 10
    # the denser half of the sentences always right, the rest always wrong but for one: density has no estimate
    trials = planted_trials(0.0, n_sentences=60)
    rank = trials.log_density.rank(method="dense")
    trials["correct"] = np.where(rank > 30, 1, np.where(rank < 30, 0, trials.correct))
    fit = density_dependence.fit_density(trials, "log_density", 10, 0)
    assert fit["status"].startswith("not estimable: quasi-complete separation") and "z_density" in fit["status"]
    assert np.isnan(fit.get("odds_ratio", np.nan))
