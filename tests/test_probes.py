"""Probes and mutual information on synthetic activations with a planted signal (or none)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import pdist
from sklearn.metrics.pairwise import rbf_kernel
from sklearn.preprocessing import StandardScaler
from statsmodels.stats.proportion import proportion_confint

from dropnoise import mutual_information as mi
from dropnoise import probes
from dropnoise.activations import CLEAN
from dropnoise.label_permutations import null_labels


def planted(n=240, d=40, separation=4.0, seed=0):
    """Labels with a linear signal along one random direction, in sentence groups of 4 rows."""
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], n // 2)
    direction = rng.normal(size=d)
    X = rng.normal(size=(n, d)) + separation * np.outer(y - 0.5, direction / np.linalg.norm(direction))
    return X, y, np.repeat(np.arange(n // 4), 4).astype(str)


def test_probe_recovers_a_planted_linear_signal():
    X, y, groups = planted()
    fold = probes.fold_ids(y, groups, 5, 1)
    result = probes.scores(y, probes.out_of_fold(probes.probe(1.0), X, y, fold), fold, groups)
    assert result["accuracy"] > 0.9 and result["auroc"] > 0.95 and result["accuracy_low"] > 0.8
    assert 0 < result["mi_lower_bound_bits"] <= result["label_entropy_bits"] == pytest.approx(1.0)
    assert result["majority_accuracy"] == np.bincount(y).max() / len(y)
    skewed = probes.scores(np.r_[y, np.ones(30, int)], np.r_[np.full(len(y), 0.5), np.ones(30)], np.r_[fold, [0] * 30],
                           np.r_[groups, ["z"] * 30])
    assert skewed["majority_accuracy"] == pytest.approx((np.bincount(y)[1] + 30) / (len(y) + 30))


def test_a_tiny_set_gets_fewer_folds_instead_of_an_error():
    """Two rows per class (a small preset's zero-shot level): three folds cannot be stratified, two can."""
    X, y = np.random.default_rng(0).normal(size=(4, 3)), np.array([0, 1, 0, 1])
    fold = probes.fold_ids(y, np.array(["a", "b", "c", "d"]), 3, 1)
    proba = probes.out_of_fold(probes.probe(1.0), X, y, fold)
    assert len(np.unique(fold)) == 2 and proba.shape == (4,) and ((0 <= proba) & (proba <= 1)).all()


def test_probe_stays_at_chance_on_shuffled_labels():
    X, y, groups = planted()
    shuffled = np.random.default_rng(5).permutation(y)
    fold = probes.fold_ids(shuffled, groups, 5, 1)
    result = probes.scores(shuffled, probes.out_of_fold(probes.probe(1.0), X, shuffled, fold), fold, groups)
    assert result["accuracy_low"] < 0.5 < result["accuracy_high"]
    assert result["auroc_low"] < 0.5 < result["auroc_high"]
    assert result["mi_lower_bound_bits"] < 0.05


def test_probe_intervals_come_from_the_folds_scores_corrected_for_shared_training_rows():
    """Nadeau & Bengio's corrected resampled t: the folds' spread, inflated by n_test/n_train, t on J - 1 df; never
    narrower than Wilson counting each sentence once."""
    per_fold = [0.6, 0.7, 0.8, 0.7, 0.7]
    half = stats.t.ppf(0.975, 4) * np.sqrt((1 / 5 + 1 / 4) * np.var(per_fold, ddof=1))
    assert probes.cross_validated_interval(0.7, per_fold, 10_000) == pytest.approx((0.7 - half, 0.7 + half))
    # n_test/n_train is that of the K folds, also where some fold has no score (an AUROC of one class)
    half = stats.t.ppf(0.975, 2) * np.sqrt((1 / 3 + 1 / 4) * np.var([0.6, 0.7, 0.8], ddof=1))
    assert probes.cross_validated_interval(0.7, [0.6, 0.7, np.nan, 0.8, np.nan], 10_000)[0] == pytest.approx(0.7 - half)
    assert probes.cross_validated_interval(0.95, [0.9, 1.0, 1.0], 10_000)[1] == 1.0  # clipped
    wilson = proportion_confint(0.95 * 40, 40, method="wilson")
    for per_fold in ([0.95, 0.95, 0.95], [0.95, 0.95 + 1e-16, 0.95], [0.7, np.nan]):  # no spread, or one fold
        assert probes.cross_validated_interval(0.95, per_fold, 40) == pytest.approx(wilson)
    rng = np.random.default_rng(6)
    y, fold = rng.integers(0, 2, 60), np.arange(60) % 5
    proba = np.where(rng.random(60) < 0.8, y, 1 - y) * 0.8 + 0.1
    alone = probes.scores(y, proba, fold, np.arange(60))
    # every sentence four times over (its renderings), in its fold: the folds' scores, so the intervals, stay
    repeated = probes.scores(np.repeat(y, 4), np.repeat(proba, 4), np.repeat(fold, 4), np.repeat(np.arange(60), 4))
    for name in ("accuracy_low", "accuracy_high", "auroc_low", "auroc_high"):
        assert repeated[name] == pytest.approx(alone[name])
    # right on every row, in every fold: no spread to read, so Wilson counting each sentence once
    perfect = probes.scores(np.repeat(y, 4), np.repeat(y, 4).astype(float), np.repeat(fold, 4),
                            np.repeat(np.arange(60), 4))
    assert (perfect["accuracy_low"], perfect["accuracy_high"]) == pytest.approx(
        proportion_confint(60, 60, method="wilson"))


def test_probe_intervals_hold_their_level_on_labels_of_pure_noise():
    """Taken as one classifier's (Wilson, DeLong), cross-fitted predictions of pure noise excluded chance in 9% to
    15% of 150 simulated sets of 200 rows x 256 dimensions; the folds' scores keep it near 5%."""
    rng = np.random.default_rng(11)
    excluded = np.zeros(2)
    for seed in range(60):
        X, y, groups = rng.normal(size=(120, 64)), rng.integers(0, 2, 120), np.repeat(np.arange(60), 2)
        fold = probes.fold_ids(y, groups, 5, seed)
        result = probes.scores(y, probes.out_of_fold(probes.probe(1.0), X, y, fold), fold, groups)
        excluded += [not result[f"{s}_low"] <= 0.5 <= result[f"{s}_high"] for s in ("accuracy", "auroc")]
    assert (excluded <= 7).all()  # P(X > 7) < 0.01 for X ~ Binomial(60, 0.05)


def test_norm_baseline_sees_a_scale_shortcut_that_the_mean_direction_lacks():
    rng = np.random.default_rng(2)
    y = np.tile([0, 1], 100)
    X = rng.normal(size=(200, 30)) * np.where(y == 1, 1.6, 1.0)[:, None]  # noise-like: more variance, same mean
    groups = np.repeat(np.arange(50), 4)
    norm = np.linalg.norm(X, axis=1, keepdims=True)
    fold = probes.fold_ids(y, groups, 5, 1)
    assert probes.scores(y, probes.out_of_fold(probes.probe(1.0), norm, y, fold), fold, groups)["accuracy"] > 0.85


def delta_resolvent(y, epsilon=1e-5):
    """The label side of nHSIC from its definition: the resolvent of the delta kernel."""
    return mi.resolvent((y[:, None] == y[None, :]).astype(float), epsilon)


def test_nhsic_is_near_zero_for_independent_and_high_for_dependent_data():
    """At a width well above the median distance (the reference code's sigma = 50 is about 35 x the median for
    z-scored features); at the median itself the estimator saturates near 1 for full-rank kernels."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 10))
    y = rng.integers(0, 2, 150)
    r_y = delta_resolvent(y)
    independent = mi.nhsic(mi.resolvent(mi.rbf(X, [16.0])[0], 1e-5), r_y)
    dependent_X = X + 4.0 * y[:, None]
    dependent = mi.nhsic(mi.resolvent(mi.rbf(dependent_X, [16.0])[0], 1e-5), r_y)
    assert independent < 0.1 and dependent > 0.8
    null = mi.label_nhsic(mi.resolvent(mi.rbf(dependent_X, [16.0])[0], 1e-5),
                          null_labels(y, [np.arange(150)], 50, seed=1), 1e-5)
    assert null.max() < dependent and null.mean() == pytest.approx(independent, abs=0.1)
    r_x = mi.resolvent(mi.rbf(X, [16.0])[0], 1e-5)
    assert mi.nhsic(r_x, r_x) > 5 * mi.nhsic(r_x, mi.resolvent(mi.rbf(rng.normal(size=(150, 10)), [16.0])[0], 1e-5))


def test_kernels_of_every_width_from_one_distance_matrix_are_scikit_learns():
    rng = np.random.default_rng(2)
    for features in (rng.normal(size=(70, 40)).astype(np.float32), rng.normal(size=(30, 3))):
        z = StandardScaler().fit_transform(features)
        median = np.median(pdist(z))
        for bandwidth, kernel in zip((1.0, 4.0, 64.0), mi.rbf(features, [1.0, 4.0, 64.0])):
            expected = rbf_kernel(z, gamma=1.0 / (2.0 * (bandwidth * median) ** 2))
            assert kernel.dtype == expected.dtype and np.array_equal(kernel, expected)


def test_label_nhsic_equals_the_trace_with_the_label_resolvent():
    rng = np.random.default_rng(3)
    r_t = mi.resolvent(mi.rbf(rng.normal(size=(60, 5)), [4.0])[0], 1e-5)
    labels = np.stack([rng.integers(0, 2, 60), np.r_[np.ones(10), np.zeros(50)].astype(int)], axis=1)
    for epsilon in (1e-5, 1e-2):
        expected = [mi.nhsic(r_t, delta_resolvent(labels[:, p], epsilon)) for p in range(2)]
        assert mi.label_nhsic(r_t, labels, epsilon) == pytest.approx(expected, rel=1e-8)
    assert mi.label_nhsic(r_t, np.ones(60, int), 1e-5)[0] == 0.0  # one label: no information


def test_nhsic_null_moves_labels_within_a_trial_or_whole_units_only():
    # s0, s1: a trial's perturbed and clean row each; s2..s5: one label for all their trials (a zero-shot class)
    groups = np.array(["s0", "s0", "s1", "s1", "s2", "s2", "s2", "s3", "s4", "s4", "s5"])
    trials = np.array(["t0", "t0", "t1", "t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8"])
    labels = np.array([1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0])
    null = null_labels(labels, [trials, trials, groups], 200, seed=4)
    for p in range(200):
        column = pd.Series(null[:, p])
        assert (column.groupby(groups).sum()[["s0", "s1"]] == 1).all()
        assert (column.groupby(groups).nunique()[["s2", "s3", "s4", "s5"]] == 1).all()
        assert column.groupby(groups).first()[["s2", "s3", "s4", "s5"]].sum() == 2  # two sentences of each label
    assert len({tuple(null[:, p]) for p in range(200)}) == 4 * 6  # every arrangement the design allows, only those
    # zero-shot: base trials b0 (dropout) and b1 (noise) share sentence s0, b2 and b3 have one each; each base
    # trial is rendered under three aliases (three trials). Base trials keep their rows together.
    bases = np.repeat(["b0", "b1", "b2", "b3"], 3)
    sentences = np.repeat(["s0", "s0", "s1", "s2"], 3)
    labels = np.repeat([0, 1, 0, 1], 3)
    null = null_labels(labels, [np.arange(12), bases, sentences], 100, seed=1)
    arrangements = {tuple(null[:, p]) for p in range(100)}
    assert len(arrangements) == 2 * 2  # b0 <-> b1 within s0, s1 <-> s2
    for arrangement in map(np.array, arrangements):
        assert pd.Series(arrangement).groupby(bases).nunique().eq(1).all() and arrangement[0] != arrangement[3]
    with pytest.raises(ValueError, match="do not nest"):  # a base trial split over two sentences
        null_labels(labels, [np.arange(12), bases, np.array(["s0", "s0", "s1"] + ["s1"] * 3 + ["s2"] * 6)], 10, seed=1)


def test_nhsic_null_holds_its_level_when_a_sentence_has_several_rows():
    """Labels drawn per sentence, independent of the activations; each sentence's four rows nearly alike (its
    renderings). Shuffling rows across sentences rejects almost always; the sentence-level null does not."""
    rejections = {"sentences": 0, "rows": 0}
    replications = 30
    for seed in range(replications):
        rng = np.random.default_rng(seed)
        sentence = rng.normal(size=(20, 8))
        acts = np.repeat(sentence, 4, axis=0) + 0.05 * rng.normal(size=(80, 8))
        labels = np.repeat(rng.permutation(np.tile([0, 1], 10)), 4)
        groups = np.repeat(np.arange(20), 4).astype(str)
        r_t = mi.resolvent(mi.rbf(acts, [1.0])[0], 1e-5)
        observed = mi.label_nhsic(r_t, labels, 1e-5)[0]
        for name, units in (("sentences", groups), ("rows", np.arange(80))):
            null = mi.label_nhsic(r_t, null_labels(labels, [units], 99, seed), 1e-5)
            rejections[name] += (1 + np.sum(null >= observed)) / 100 <= 0.05
    assert rejections["sentences"] / replications <= 0.15
    assert rejections["rows"] / replications >= 0.8


def test_min_p_adjustment_controls_the_familywise_error_and_spares_correlated_tests():
    rng = np.random.default_rng(11)
    observed, nulls = rng.normal(size=4), rng.normal(size=(4, 199))
    p, adjusted = mi.permutation_p(observed, nulls)
    assert p == pytest.approx((1 + (nulls >= observed[:, None]).sum(axis=1)) / 200)
    assert (adjusted >= p).all() and (adjusted <= 1).all()
    # the same test four times over (layers that carry the same signal): no price for multiplicity
    same, _ = mi.permutation_p(observed[:1], nulls[:1])
    assert mi.permutation_p(np.repeat(observed[:1], 4), np.repeat(nulls[:1], 4, axis=0))[1] == pytest.approx(np.repeat(same, 4))
    # ten independent tests under the null: any raw p <= 0.05 in about 40% of sets, any adjusted one in about 5%
    raw, family = [], []
    for _ in range(300):
        p, adjusted = mi.permutation_p(rng.normal(size=10), rng.normal(size=(10, 199)))
        raw.append(p.min() <= 0.05)
        family.append(adjusted.min() <= 0.05)
    assert np.mean(raw) > 0.3 and np.mean(family) < 0.09


def test_datasets_pair_conditions_with_their_clean_rows_and_keep_strength_zero_as_baseline():
    trials = range(8)
    rows = []
    for kind, strength in [(CLEAN, 0.0), ("dropout", 0.5), ("noise", 2.0)]:
        for t in trials:
            rows.append({"trial_id": t, "perturbation": kind, "strength": strength, "sentence_id": f"s{t // 2}",
                         "base_id": str(t), "target": "AB"[t % 2]})
    meta = pd.DataFrame(rows).assign(row=range(len(rows)))
    sets = {(d.condition["task"], d.condition["level"], d.condition["perturbation"]): d
            for d in probes.datasets(meta, "localization")}
    perturbed = sets[("perturbed", 1, "dropout")]
    assert sorted(perturbed.rows) == list(range(8)) + list(range(8, 16)) and perturbed.labels.sum() == 8
    baseline = sets[("perturbed", 0, "dropout")]
    assert sorted(baseline.rows[baseline.labels == 1]) == sorted(baseline.rows[baseline.labels == 0])
    matched = sets[("dropout_vs_noise", 1, "matched")]
    assert set(matched.rows[matched.labels == 0]) == set(range(8, 16)) and set(matched.rows[matched.labels == 1]) == set(range(16, 24))
    three = sets[("none_dropout_noise", 1, "matched")]  # the clean rows of the same trials, then each perturbation
    assert [set(three.rows[three.labels == k]) for k in range(3)] == [set(range(8)), set(range(8, 16)), set(range(16, 24))]
    assert ("none_dropout_noise", 0, "matched") not in sets  # rank 0 is the clean pass twice: nothing to tell apart
    which = sets[("which_sentence", 1, "noise")]
    assert (which.labels == (meta.target.to_numpy()[which.rows] == "B")).all()
    assert all(len(np.unique(d.groups)) == 4 for d in sets.values())


def test_three_class_probe_tells_none_dropout_and_noise_apart():
    """Clean rows, a dropout shift and a noise shift in two different directions: the multinomial probe names all
    three (one-vs-rest AUROC near 1, chance = the majority share 1/3, the bound at most log2 3 bits); with labels
    shuffled it stays near 1/3; mutual information, whose label kernel takes two classes, leaves the set out."""
    rng = np.random.default_rng(2)
    n, d = 180, 20
    y = np.tile([0, 1, 2], n // 3)
    directions = np.zeros((3, d))
    directions[1, 0], directions[2, 1] = 4.0, 4.0
    X = rng.normal(size=(n, d)) + directions[y]
    groups = np.repeat(np.arange(n // 3), 3).astype(str)  # a trial's clean, dropout and noise rows: one sentence
    fold = probes.fold_ids(y, groups, 5, 1)
    proba = probes.out_of_fold(probes.probe(1.0), X, y, fold)
    assert proba.shape == (n, 3) and np.allclose(proba.sum(1), 1)
    result = probes.scores(y, proba, fold, groups)
    assert result["accuracy"] > 0.9 and result["auroc"] > 0.95 and np.isnan(result["auroc_low"])
    assert result["majority_accuracy"] == pytest.approx(1 / 3)
    assert 1 < result["mi_lower_bound_bits"] <= result["label_entropy_bits"] == pytest.approx(np.log2(3))
    shuffled = rng.permutation(y)
    fold = probes.fold_ids(shuffled, groups, 5, 1)
    chance = probes.scores(shuffled, probes.out_of_fold(probes.probe(1.0), X, shuffled, fold), fold, groups)
    assert chance["accuracy_low"] < 1 / 3 < chance["accuracy_high"] and chance["mi_lower_bound_bits"] < 0.1
    dataset = probes.Dataset({"experiment": "localization", "task": "none_dropout_noise", "perturbation": "matched",
                              "level": 1, "dropout_strength": 0.5, "noise_strength": 2.0}, np.arange(n), y, groups,
                             np.stack([groups, groups], axis=1), sites=("answer",))
    acts = np.stack([rng.normal(size=(n, d)), X], axis=1)
    table = probes.run({"answer": acts}, np.array([0, 1]), [dataset], folds=3, C=1.0, seed=0)
    assert table.set_index(["layer", "features"]).loc[(1, "linear"), "accuracy"] > 0.9
    assert mi.run({"answer": acts}, np.array([0, 1]), [dataset], [4.0], 10, 1e-5, 0).empty


def test_probe_table_on_planted_layers_and_represented_vs_reported():
    X, y, groups = planted(n=120, d=16)
    n = len(y)
    # three "layers": nothing, the planted signal, the planted signal again
    acts = np.stack([np.random.default_rng(9).normal(size=(n, 16)), X, X], axis=1)
    sites = dict.fromkeys(("answer", "span_mean", "span_last"), acts)
    dataset = probes.Dataset({"experiment": "localization", "task": "which_sentence", "perturbation": "dropout",
                              "strength": 0.5, "level": 1, "dropout_strength": 0.5}, np.arange(n), y, groups,
                             np.stack([np.arange(n), np.arange(n)], axis=1).astype(str))
    table = probes.run(sites, np.array([0, 1, 2]), [dataset], folds=4, C=1.0, seed=0)
    linear = table[(table.features == "linear") & (table.site == "answer")].set_index("layer").accuracy
    assert linear[0] < 0.7 and linear[1] > 0.9
    shuffled = table[(table.features == "shuffled") & (table.site == "answer")].accuracy
    assert (shuffled < 0.7).all()
    assert len(table) == 3 * 3 * 3


def test_represented_vs_reported_correlates_within_each_experiment_and_counts_the_clean_pass_once():
    rows = []
    for experiment, task in probes.VERBAL.items():
        for level, strength in enumerate((0.0, 0.2, 0.5, 0.8)):
            for kind in ("dropout", "noise"):
                if task == "dropout_vs_noise" and kind == "noise":
                    continue
                probe = 0.5 + 0.5 * strength if experiment == "localization" else 0.9 - 0.5 * strength
                rows.append({"experiment": experiment, "task": task, "site": "answer", "features": "linear",
                             "layer": 3, "perturbation": kind if task == "which_sentence" else "matched",
                             "strength": strength, "level": level, "dropout_strength": strength,
                             "noise_strength": strength, "accuracy": probe, "accuracy_low": probe - 0.1,
                             "accuracy_high": probe + 0.1})
    table = pd.DataFrame(rows)
    rng = np.random.default_rng(0)
    trials = {}
    for experiment in probes.VERBAL:  # verbal accuracy rises with strength in both: opposite to zero-shot's probe
        frame = pd.DataFrame([{"perturbation": kind, "strength": s, "correct_primary": rng.random() < 0.5 + s / 2}
                              for s in (0.0, 0.2, 0.5, 0.8) for kind in ("dropout", "noise") for _ in range(200)])
        trials[experiment] = frame
    out = probes.represented_vs_reported(table, trials, "primary")
    localization = out[out.experiment == "localization"]
    assert len(localization) == 7 and (localization.strength == 0).sum() == 1  # one clean point, not two
    assert (localization.pearson_r > 0.9).all() and (out[out.experiment == "zero_shot"].pearson_r < -0.9).all()
    assert "pearson_p" not in out and "spearman_p" not in out
