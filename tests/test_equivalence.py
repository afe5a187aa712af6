"""The dropout <-> noise equivalence map on synthetic localization curves with a known relation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dropnoise import equivalence

DROPOUT = np.round(np.arange(0, 1.01, 0.1), 2)
NOISE = np.round(np.arange(0, 0.5, 0.05), 2)


def localization(rng, model="m", length=7, dropout=lambda p: -2 + 2 * p, noise=lambda s: -2 + 4 * s, n=30, jitter=0.0):
    """Per-trial rows whose log P(correct) follows `dropout`(p) and `noise`(sigma), sentences drawn with replacement."""
    rows = []
    for kind, grid, level in (("dropout", DROPOUT, dropout), ("noise", NOISE, noise)):
        for strength in grid:
            values = level(strength) + jitter * rng.standard_normal(n)
            rows += [{"model": model, "sentence_tokens": length, "perturbation": kind, "strength": strength,
                      "sentence_id": f"s{rng.integers(20)}", "log_prob_correct": v} for v in values]
    return pd.DataFrame(rows)


def test_a_known_relation_is_recovered_and_the_noise_range_bounds_it():
    """dropout: -2 + 2p, noise: -2 + 4 sigma, so sigma = p / 2; noise peaks at sigma = 0.45 (level -0.2), so p above
    0.9 has no match; the ranges start above their lowest perturbed point (p = 0.1, sigma = 0.05), strength 0 is not
    fitted."""
    fitted = equivalence.curves(localization(np.random.default_rng(0)))
    pairs = equivalence.pairs(fitted)
    assert pairs.dropout_strength.tolist() == pytest.approx(DROPOUT[2:10])  # not 1.0 (level 0 > -0.2)
    assert fitted.level[fitted.strength == 0].isna().all()
    assert pairs.noise_strength.to_numpy() == pytest.approx(pairs.dropout_strength.to_numpy() / 2)
    assert (pairs.n == 30).all() and pairs.dropout_se.to_numpy() == pytest.approx(0, abs=1e-12)


def test_the_monotone_range_starts_where_the_curve_leaves_its_floor_and_ends_at_its_peak():
    means = np.array([-3.0, -3.01, -2.99, -2.5, -1.0, -0.5, -0.8, -2.0])
    assert equivalence.monotone_range(means) == slice(3, 6)  # -2.99 is not 5% of the range above the floor
    fitted = equivalence.curves(localization(np.random.default_rng(1), dropout=lambda p: -2 + 2 * min(p, 0.5)
                                             - 4 * max(p - 0.5, 0)))
    dropout = fitted[fitted.perturbation == "dropout"]
    # strength 0 is not fitted, the floor (p = 0.1) is not above itself, and the fall after the peak is left out
    assert dropout.level.notna().tolist() == [0.1 < p <= 0.5 for p in DROPOUT]


def test_edge_rules_follow_the_reference_a_steep_rise_keeps_two_points_and_a_flat_noise_fit_matches_nothing():
    assert equivalence.monotone_range(np.array([-0.7, -0.7, -0.02, -0.69])) == slice(1, 3)  # not the peak alone
    assert equivalence.monotone_range(np.array([0.0, 0.05, 0.5, 1.0])) == slice(1, 4)  # at the threshold counts
    assert equivalence.monotone_range(np.array([1.0, 0.2, 0.1])) == slice(0, 1)  # a peak first stands alone
    dropout = pd.DataFrame({"strength": [0.2, 0.4], "level": [-1.0, -0.5]})
    flat = pd.DataFrame({"strength": [0.1, 0.2], "level": [-1.0, -1.0]})
    assert np.isnan(equivalence.match(dropout, flat)).all()  # one level: no sigma, not an exact-level match


def test_noise_plateaus_invert_to_their_smallest_sigma_and_noisy_curves_are_made_monotone():
    plateau = lambda s: -2 + 4 * min(s, 0.2)  # noqa: E731  flat from sigma = 0.2: every level above is its plateau
    fitted = equivalence.curves(localization(np.random.default_rng(2), noise=plateau))
    noise = fitted[(fitted.perturbation == "noise")].dropna(subset=["level"])
    assert noise.strength.max() == pytest.approx(0.2)  # the peak is the plateau's first point
    pairs = equivalence.pairs(fitted)
    assert pairs.noise_strength.max() == pytest.approx(0.2) and pairs.dropout_strength.max() == pytest.approx(0.4)
    noisy = equivalence.curves(localization(np.random.default_rng(3), jitter=0.5, n=10))
    for _, curve in noisy.dropna(subset=["level"]).groupby("perturbation"):
        assert (np.diff(curve.level) >= 0).all()


def test_an_interior_plateau_of_the_noise_fit_inverts_to_its_smallest_sigma():
    """A dip inside the noise curve's rise (sigma 0.1: -0.75, 0.15: -1.25) is pooled by the isotonic fit into one
    level, -1, at sigma 0.1 and 0.15: dropout p = 0.3 (level -1) matches the smaller, p = 0.4 (-0.5) interpolates
    from it to sigma 0.2 (level 0)."""
    dropout = {0.0: -3.5, 0.1: -3.0, 0.2: -2.0, 0.3: -1.0, 0.4: -0.5}
    noise = {0.0: -2.5, 0.05: -2.0, 0.1: -0.75, 0.15: -1.25, 0.2: 0.0}
    trials = localization(np.random.default_rng(7), dropout=lambda p: dropout.get(round(p, 2), 1.0),
                          noise=lambda s: noise.get(round(s, 2), 0.5))
    pairs = equivalence.pairs(equivalence.curves(trials)).set_index("dropout_strength").noise_strength
    assert pairs[0.3] == pytest.approx(0.1) and pairs[0.4] == pytest.approx(0.15)
    assert 0.2 not in pairs.index  # level -2: below the noise fit


def test_a_dip_below_the_clean_pass_does_not_pool_the_clean_point_into_the_fit():
    """Both curves fall below their clean value (strength 0) before they rise, as a model that first answers neither
    option: the clean pass is not fitted, so no low rate is matched to a sigma near 0."""
    dropout = {0.0: -0.7, 0.1: -0.9, 0.2: -0.8, 0.3: -0.3}
    noise = {0.0: -0.7, 0.05: -1.0, 0.1: -0.4, 0.15: -0.2}
    trials = localization(np.random.default_rng(8), dropout=lambda p: dropout.get(round(p, 2), -0.1),
                          noise=lambda s: noise.get(round(s, 2), 0.0))
    pairs = equivalence.pairs(equivalence.curves(trials)).set_index("dropout_strength").noise_strength
    assert list(pairs.index[:2]) == pytest.approx([0.3, 0.4])
    assert pairs[0.3] == pytest.approx(0.125) and pairs.min() > 0.1


def test_the_mapping_averages_over_conditions_and_needs_three_of_them():
    rng = np.random.default_rng(4)
    trials = pd.concat([localization(rng, length=length, noise=lambda s, a=slope: -2 + a * s)
                        for length, slope in ((3, 4.0), (7, 5.0), (11, 8.0))]
                       + [localization(rng, model="other", length=3)], ignore_index=True)
    pairs = equivalence.pairs(equivalence.curves(trials))
    table = equivalence.mapping(pairs)
    overall = table[table.scope == "all"].set_index("dropout_strength")
    # p = 0.5: sigma = 2p / slope for the slopes 4, 5, 8 and 4 again (the other model)
    assert overall.loc[0.5, "conditions"] == 4
    assert overall.loc[0.5, "noise_strength"] == pytest.approx(np.mean([0.25, 0.2, 0.125, 0.25]))
    # p = 0.1 (level -1.8) is below the first fitted noise level of the slopes 5 and 8 (the floor is not fitted)
    assert 0.1 not in overall.index
    assert set(table.scope) == {"all", "m"}  # "other" has one condition: too few for its own mapping
    assert (table.conditions >= 3).all()


def test_a_condition_that_ran_one_perturbation_or_one_strength_is_left_out():
    trials = localization(np.random.default_rng(5))
    assert equivalence.curves(trials[trials.perturbation == "dropout"]).empty
    assert equivalence.pairs(equivalence.curves(trials[trials.strength.isin([0.0])])).empty


def test_the_figure_draws_each_condition_and_each_models_mean(tmp_path):
    from dropnoise import figures, style

    rng = np.random.default_rng(6)
    trials = pd.concat([localization(rng, model=model, length=length, noise=lambda s, a=slope: -2 + a * s)
                        for model in ("m", "other") for length, slope in ((3, 4.0), (7, 5.0), (11, 8.0))],
                       ignore_index=True)
    curves = equivalence.curves(trials)
    pairs = equivalence.pairs(curves)
    fig = figures.equivalence_map(curves, pairs, equivalence.mapping(pairs))
    left, middle, right = fig.axes
    assert len(left.lines) == len(middle.lines) == 2 * 6  # points and fit per model x length
    # the conditions, then each model's mean and band, then the mean over both models (the reference's mapping)
    assert len(right.lines) == 6 + 2 + 1 and len(right.collections) == 3
    assert [t.get_text() for t in right.get_legend().get_texts()] == ["all models"]
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["m", "other"]
    assert all(path.stat().st_size > 10_000 for path in style.save(fig, tmp_path / "map"))
    empty = figures.equivalence_map(curves, pairs.iloc[:0], equivalence.mapping(pairs.iloc[:0]))
    assert [t.get_text() for t in empty.axes[2].texts] == ["no matched pairs"]
