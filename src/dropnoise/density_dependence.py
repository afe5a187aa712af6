"""Does a target sentence's training-data density predict whether the model detects its perturbation, beyond the
model's own perplexity on it? (LMD3's per-example analysis, applied to the perturbation experiments.)

Inputs: the per-trial tables results/{model}/{experiment}.csv (localization, zero_shot, few_shot; the perturbed
sentence is `sentence_id`, the test sentence in few-shot) joined on `sentence_id` with results/{model}/density.csv
(per sentence: `log_density` at each bandwidth scale, `clean_nll` per token, `source`).

Model, per model x experiment x perturbation x bandwidth scale, a logistic GLM on per-trial correctness:

    correct ~ z_density + strength_c + z_density:strength_c + n_tokens + clean_nll + C(position)

- z_density: the sentence's log density standardised over the fit's sentences, so exp(coef) is the odds ratio per SD;
- strength_c: strength centred at the fit's mean, so that odds ratio holds at the mean strength;
- n_tokens: the sentence's length bucket; position: the correct option's letter (in localization, the perturbed
  sentence's); terms that do not vary within a fit (n_tokens in zero- and few-shot) are dropped.
Trials of one sentence are not independent. The odds ratio's CI and `wald_p` use cluster-robust covariance by
sentence, with t and F reference distributions on (sentences - 1) degrees of freedom; the likelihood-ratio test
against the model without the two density terms treats trials as independent; the permutation test shuffles
densities across sentences (within length buckets), refits, and compares the same likelihood-ratio statistic, which
keeps the clustering and is the test to trust when there are few sentences.

Output columns (results/stats/density_dependence.csv): model, experiment, perturbation, bandwidth_scale, rule,
n_trials, n_sentences, accuracy, log_density_sd, odds_ratio, ci_low, ci_high (per SD of log density),
interaction (log odds ratio per SD per unit strength), lr_stat, lr_df, lr_p, wald_p, permutation_p, permutations,
status (ok; or why a fit was skipped, failed or is not estimable: separation, or no more sentences than parameters,
where every estimate and test is left empty; or why it is unreliable), formula.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import patsy
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.proportion import proportion_confint
from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationWarning

from .density import scale_column

DENSITY_TERMS = ("z_density", "z_density:strength_c")
COLUMNS = ["model", "experiment", "perturbation", "bandwidth_scale", "rule", "n_trials", "n_sentences", "accuracy",
           "log_density_sd", "odds_ratio", "ci_low", "ci_high", "interaction", "lr_stat", "lr_df", "lr_p", "wald_p",
           "permutation_p", "permutations", "status", "formula"]


def join(trials: pd.DataFrame, density: pd.DataFrame, rule: str) -> pd.DataFrame:
    """Per-trial rows with their sentence's density columns, `correct` by the scoring rule, and `position`."""
    keep = ["sentence_id", "source", "clean_nll"] + [c for c in density if c.startswith("log_density")]
    frame = trials.merge(density[keep], on="sentence_id", how="left", validate="many_to_one")
    missing = frame.log_density.isna()
    if missing.any():
        raise ValueError(f"{missing.sum()} trial(s) have sentences without a density, e.g. "
                         f"{frame.sentence_id[missing].iloc[0]!r}: density.csv is not for this sentence pool")
    correct = frame[f"correct_{rule}"]
    frame["correct"] = (correct.astype(str) == "True").astype(int) if correct.dtype == object else correct.astype(int)
    return frame.assign(position=frame.answer.astype(str), n_tokens=frame.sentence_tokens)


def _design(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Standardised density (over sentences) and centred strength for one fit."""
    per_sentence = frame.groupby("sentence_id")[column].first()
    z = (per_sentence - per_sentence.mean()) / per_sentence.std(ddof=1)
    return frame.assign(z_density=frame.sentence_id.map(z), strength_c=frame.strength - frame.strength.mean())


def formula(frame: pd.DataFrame) -> str:
    """The model's formula, less the terms that do not vary in this fit."""
    varies = {name: frame[name].nunique() > 1 for name in ("strength", "n_tokens", "clean_nll", "position")}
    terms = ["z_density"]
    if varies["strength"]:
        terms += ["strength_c", "z_density:strength_c"]
    terms += [t for t, name in (("n_tokens", "n_tokens"), ("clean_nll", "clean_nll"), ("C(position)", "position"))
              if varies[name]]
    return "correct ~ " + " + ".join(terms)


def _fit(y, X, groups=None):
    """A binomial GLM; with `groups`, cluster-robust covariance with t and F tests on G - 1 degrees of freedom (as
    src/dropnoise/stats.py: few sentences make normal reference distributions too liberal). Returns the fit and the
    warnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = sm.GLM(y, X, family=sm.families.Binomial())
        fit = (model.fit(cov_type="cluster", cov_kwds={"groups": groups}, use_t=True) if groups is not None
               else model.fit())
    problems = sorted({w.category.__name__ for w in caught
                       if issubclass(w.category, (PerfectSeparationWarning, ConvergenceWarning, RuntimeWarning))})
    return fit, problems


def permute_within(sentences: pd.DataFrame, column: str, strata: str, rng: np.random.Generator) -> pd.Series:
    """The sentences' values of `column`, shuffled across sentences of the same stratum."""
    shuffled = sentences[column].copy()
    for index in sentences.groupby(strata).groups.values():
        shuffled.loc[index] = rng.permutation(sentences.loc[index, column].to_numpy())
    return shuffled


def fit_density(frame: pd.DataFrame, column: str, permutations: int, seed: int) -> dict:
    """The density effect in one table of trials (one experiment x perturbation), at one bandwidth scale."""
    per_sentence = frame.groupby("sentence_id")[column].first()
    base = {"n_trials": len(frame), "n_sentences": len(per_sentence), "accuracy": frame.correct.mean(),
            "log_density_sd": per_sentence.std(ddof=1)}
    if frame.correct.nunique() < 2:
        return {**base, "status": "every trial has the same outcome: nothing to explain"}
    if len(per_sentence) < 3 or not base["log_density_sd"] > 0:
        return {**base, "status": "fewer than 3 sentences or no variation in density"}
    data = _design(frame, column)
    text = formula(data)
    y, X = patsy.dmatrices(text, data, return_type="dataframe")
    terms = [t for t in DENSITY_TERMS if t in X]
    full, problems = _fit(y, X, pd.factorize(data.sentence_id)[0])
    full_rank = len(per_sentence) > X.shape[1]  # else the cluster-robust covariance cannot have full rank
    if not full_rank:
        problems.append(f"{len(per_sentence)} sentences for {X.shape[1]} parameters")
    if not np.isfinite(full.cov_params().to_numpy()).all():  # diverged under separation
        return {**base, "formula": text,
                "status": "fit failed (no finite covariance): " + ", ".join(problems or ["separation"])}
    if not full_rank or "PerfectSeparationWarning" in problems:  # estimates and tests meaningless
        return {**base, "formula": text, "status": "not estimable: " + ", ".join(problems)}
    reduced, _ = _fit(y, X.drop(columns=terms))
    lr = 2 * (full.llf - reduced.llf)
    wald = full.wald_test(np.eye(X.shape[1])[[X.columns.get_loc(t) for t in terms]], scalar=True)
    low, high = full.conf_int(alpha=0.05).loc["z_density"]
    result = {
        **base, "odds_ratio": np.exp(full.params["z_density"]), "ci_low": np.exp(low), "ci_high": np.exp(high),
        "interaction": full.params.get("z_density:strength_c", np.nan), "lr_stat": lr, "lr_df": len(terms),
        "lr_p": stats.chi2.sf(lr, len(terms)), "wald_p": float(wald.pvalue), "formula": text,
        "status": "ok" if not problems else "unreliable fit: " + ", ".join(problems),
    }
    if permutations:
        rng = np.random.default_rng(seed)
        sentences = data.groupby("sentence_id")[["z_density", "n_tokens"]].first()
        strength_c = X["strength_c"] if "strength_c" in X else 0.0
        exceed = 0
        for _ in range(permutations):
            shuffled = data.sentence_id.map(permute_within(sentences, "z_density", "n_tokens", rng)).to_numpy()
            permuted = X.assign(z_density=shuffled)
            if "z_density:strength_c" in X:
                permuted["z_density:strength_c"] = shuffled * strength_c
            exceed += 2 * (_fit(y, permuted)[0].llf - reduced.llf) >= lr - 1e-9
        result.update(permutation_p=(exceed + 1) / (permutations + 1), permutations=permutations)
    return result


def density_dependence(tables: dict[tuple[str, str], pd.DataFrame], scales: list[float], rule: str,
                       permutations: int, seed: int) -> pd.DataFrame:
    """Every fit: `tables` maps (model, experiment) to joined trials (see `join`)."""
    rows = []
    for (model, experiment), frame in tables.items():
        for perturbation, part in frame.groupby("perturbation"):
            for scale in scales:
                fit = fit_density(part, scale_column(scale), permutations, seed)
                rows.append({"model": model, "experiment": experiment, "perturbation": perturbation,
                             "bandwidth_scale": scale, "rule": rule, **fit})
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def source_contrast(tables: dict[tuple[str, str], pd.DataFrame]) -> pd.DataFrame:
    """Accuracy per sentence source at each strength, and whether the sources differ at matched strength.

    Per model x experiment x perturbation: `correct ~ C(source) + C(strength)` (strength as fixed effects, so
    sources are compared at matched strength), cluster-robust by sentence; `source_p` is the joint Wald test of the
    source terms. With one source in the pool there is nothing to contrast and `status` says so.
    """
    rows = []
    for (model, experiment), frame in tables.items():
        for perturbation, part in frame.groupby("perturbation"):
            sources = sorted(part.source.unique())
            test = {"status": f"one source in the sentence pool ({sources[0]}): no contrast", "source_p": np.nan}
            if len(sources) > 1:
                y, X = patsy.dmatrices("correct ~ C(source) + C(strength)", part, return_type="dataframe")
                fit, problems = _fit(y, X, pd.factorize(part.sentence_id)[0])
                columns = [i for i, name in enumerate(X.columns) if name.startswith("C(source)")]
                test = {"source_p": float(fit.wald_test(np.eye(X.shape[1])[columns], scalar=True).pvalue),
                        "status": "ok" if not problems else "unreliable fit: " + ", ".join(problems)}
            for (strength, source), cell in part.groupby(["strength", "source"]):
                k, n = int(cell.correct.sum()), len(cell)
                low, high = proportion_confint(k, n, method="wilson")
                rows.append({"model": model, "experiment": experiment, "perturbation": perturbation,
                             "strength": strength, "source": source, "n_trials": n,
                             "n_sentences": cell.sentence_id.nunique(), "accuracy": k / n, "ci_low": low,
                             "ci_high": high, "mean_log_density": cell.log_density.mean(), **test})
    return pd.DataFrame(rows)
