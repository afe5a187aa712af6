"""Does a target sentence's training-data density predict whether the model detects its perturbation, beyond the
model's own perplexity on it? (LMD3's per-example analysis, applied to the perturbation experiments.)

Inputs: the per-trial tables results/{model}/{experiment}.csv (localization, zero_shot, few_shot; the perturbed
sentence is `sentence_id`, the test sentence in few-shot) joined on `sentence_id` with results/{model}/density.csv
(per sentence: `log_density` at each bandwidth scale, `clean_nll` per token, `source`).

What one fit compares (`fit_groups`): perturbed trials only (strength > 0: at 0 the answer is chance by
construction). Localization: one fit per perturbation. Zero- and few-shot: the canonical aliases only (controls such
as swapped or placeholder words invert or void the labels' meaning), few-shot once per label condition (a density
effect on following the teaching labels has opposite signs under correct and swapped labels), and both classes in
one fit: there "correct" means "named the applied class", so a density effect on the tendency to say "dropout"
would look like detection in a one-class fit. The joint model's density term is the effect averaged over the two
classes, which such a response bias cancels; the bias itself is the density x class term (`class_interaction`).

Model, per fit and bandwidth scale, a logistic GLM on per-trial correctness:

    correct ~ z_density + f(strength_z) + z_density:strength_z [+ cls + z_density:cls] [+ C(k)] + C(n_tokens)
              + clean_nll + C(position) [+ C(source)]

- z_density: the sentence's log density standardised over the fit's sentences, so exp(coef) is the odds ratio per SD
  (averaged over the classes in joint fits: cls is +1/2 for dropout, -1/2 for noise);
- strength_z: strength standardised within its perturbation (dropout rates and noise SDs have different units), so
  the odds ratio holds at each class's mean strength; f is a natural cubic spline of 3 df where a fit has 5
  strengths or more (accuracy is sigmoid in strength: a line misfits it and attenuates the odds ratio), else a
  line; its shape and `interaction` (linear) are shared by the two classes;
- n_tokens: the sentence's length bucket, as categories (NLL and density are both curved in length, so a straight
  line would leave length's confounding in the density term); position: the correct option's letter (in localization, the perturbed
  sentence's); k: few-shot examples; source: the sentence's source in a mixed pool (else density would carry any
  difference between sources); terms that do not vary within a fit are dropped.
Trials of one sentence are not independent. The odds ratio's CI and `p_value` (its own 1-df test) use
cluster-robust covariance by sentence, with t reference distributions on (sentences - 1) degrees of freedom;
`wald_p` (F) and `permutation_p` test the two density terms (z_density, z_density:strength_z) jointly. The
permutation test shuffles densities across sentences of the same length and source and compares Rao's score
statistic for adding those terms to the model without them (`score_stat`; the class term, where present, stays in
that model with the observed densities, so that a real response bias does not inflate the null): it keeps the
clustering and is the test to trust with few sentences. The score statistic needs no refit per shuffle (see
`score_statistics`), and is asymptotically the likelihood-ratio statistic `lr_stat` (reported, with the pseudo-R²
gain it gives). The chi-squared p of either treats trials as independent: at 0.05 it rejected a true null in about
30% of simulated sets with a sentence random effect of SD 1 (23 to 49% in a reviewer's other settings; the test
asserts at least 15%), so it is not reported. The permutation test is approximate, not exact, where density
correlates with a control that stays in the model (clean_nll, the class term): simulated rejection rates at 0.05
were 5 to 7.5%, at 0.01 up to 1.7%, as with the refits it replaced. `permutation_p_adjusted` corrects the
permutation p (`stats.correction`) over every primary-bandwidth fit of the table; the other scales are a sensitivity
sweep, not further evidence, and are not adjusted.

Output columns (results/stats/density_dependence.csv): model, experiment, perturbation (dropout, noise, or both),
label_condition (few-shot), bandwidth_scale, rule, n_trials, n_sentences, accuracy, log_density_sd, odds_ratio,
ci_low, ci_high (per SD of log density), p_value, interaction (per SD of log density per SD of strength),
class_interaction (dropout minus noise), lr_stat, lr_df, score_stat, pseudo_r2_gain (McFadden's R² of the model less
that of the model without the density terms), wald_p, permutation_p, permutations, permutation_p_adjusted, status
(ok; or why a fit was skipped, failed or is not estimable: separation along a density term, or no more sentences than
parameters, where every estimate and test is left empty; or why it is unreliable, e.g. fewer than 10 minority outcomes
per parameter within the option positions, or a nuisance level whose trials all have one outcome: quasi-complete
separation, found by `separation`, whose trials then inform no estimate), formula.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import patsy
import statsmodels.api as sm
from scipy import sparse
from statsmodels.stats.multitest import multipletests
from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationWarning

from .density import scale_column
from .separation import separation
from .stats import cell_terms, clusterings, curve_design_effects, drop_terms, effective_interval

DENSITY_TERMS = ("z_density", "z_density:strength_z")  # tested
CLASS_TERM = "z_density:cls"  # density's effect on saying "dropout" (response bias): kept in both models
MIN_MINORITY_PER_PARAMETER = 10
SPLINE_STRENGTHS = 5  # distinct strengths from which strength's main effect is a spline (`strength_shape`)
COLUMNS = ["model", "experiment", "perturbation", "label_condition", "bandwidth_scale", "rule", "n_trials",
           "n_sentences", "accuracy", "log_density_sd", "odds_ratio", "ci_low", "ci_high", "p_value", "interaction",
           "class_interaction", "lr_stat", "lr_df", "score_stat", "pseudo_r2_gain", "wald_p", "permutation_p",
           "permutations", "permutation_p_adjusted", "status", "formula"]


TRIAL_COLUMNS = ("sentence_id", "sentence_tokens", "answer", "perturbation", "strength", "alias_group",
                 "label_condition", "k")


def reads(rule: str):
    """Which columns of a per-trial table the fits, the source contrast and the figures read (TRIAL_COLUMNS, the
    rule's correctness, and the option probabilities, whose count is the figures' chance level): a `usecols` for
    read_csv, since the rest of a paper-scale few-shot table (36 columns, 9.6M rows) need not be held."""
    return lambda column: column in TRIAL_COLUMNS or column == f"correct_{rule}" or column.startswith("prob_")


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


def panels(frame: pd.DataFrame, experiment: str):
    """(label_condition, trials) of each descriptive view (deciles figure, source contrast): the trials the fits
    compare (`fit_groups`), at every strength. Pooled, swapped teaching labels or swapped option names invert what
    "correct" means and cancel a real effect."""
    if experiment == "localization":
        yield "", frame
        return
    canonical = frame[frame.alias_group == "canonical"]  # empty where only control aliases ran
    if experiment == "few_shot":
        yield from canonical.groupby("label_condition")
    else:
        yield "", canonical


def fit_groups(frame: pd.DataFrame, experiment: str):
    """(perturbation, label_condition, trials) of each fit (see the module docstring)."""
    for condition, part in panels(frame, experiment):
        perturbed = part[part.strength > 0]
        if experiment == "localization":
            for perturbation, trials in perturbed.groupby("perturbation"):
                yield perturbation, condition, trials
        else:
            yield "both", condition, perturbed


def _standardised(values: pd.Series) -> pd.Series:
    return (values - values.mean()) / values.std(ddof=1)


def _strata(data: pd.DataFrame) -> list[str]:
    """What a density shuffle keeps fixed: the sentence's length, and its source in a mixed pool."""
    return [name for name in ("n_tokens", "source") if name in data]


def _design(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Standardised density (over sentences), strength standardised within its perturbation, and the class code."""
    z = _standardised(frame.groupby("sentence_id")[column].first())
    by_class = frame.groupby("perturbation").strength
    spread = by_class.transform("std", ddof=0)
    strength_z = ((frame.strength - by_class.transform("mean")) / spread.where(spread > 0)).fillna(0.0)
    return frame.assign(z_density=frame.sentence_id.map(z), strength_z=strength_z,
                        cls=np.where(frame.perturbation == "dropout", 0.5, -0.5))


def strength_shape(levels: int) -> str:
    """Accuracy against strength is sigmoid, with plateaus, so with enough strengths (`levels`: the fewest of a
    class) it enters as a natural cubic spline (3 df, centred) rather than a line, which would misfit it and
    attenuate the density term's odds ratio at the mean strength; with 4 strengths or fewer, a line (a spline would
    come near one parameter per strength, and a strength whose trials all succeed would then separate)."""
    return "strength_z" if levels < SPLINE_STRENGTHS else "cr(strength_z, df=3, constraints='center')"


def formula(frame: pd.DataFrame) -> str:
    """The model's formula, less the terms that do not vary in this fit."""
    def varies(name):
        return name in frame and frame[name].nunique() > 1

    terms = ["z_density"]
    if varies("strength_z"):
        terms += [strength_shape(frame.groupby("perturbation").strength.nunique().min()), "z_density:strength_z"]
    if varies("cls"):
        terms += ["cls", CLASS_TERM]
    terms += [term for term, name in (("C(k)", "k"), ("C(n_tokens)", "n_tokens"), ("clean_nll", "clean_nll"),
                                      ("C(position)", "position"), ("C(source)", "source")) if varies(name)]
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


def shuffles_within(sentences: pd.DataFrame, column: str, strata: list[str], draws: int,
                    rng: np.random.Generator) -> np.ndarray:
    """`draws` shuffles of the sentences' values of `column`, each across sentences of the same stratum
    (draws x sentences, in the order of `sentences`)."""
    values = sentences[column].to_numpy(dtype=float)
    shuffled = np.tile(values, (draws, 1))
    for index in (sentences.groupby(strata, dropna=False).indices.values() if strata else [np.arange(len(values))]):
        shuffled[:, index] = rng.permuted(shuffled[:, index], axis=1)
    return shuffled


def score_statistics(reduced, sentence: np.ndarray, carriers: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Rao's score statistic for adding the columns z[sentence] * carriers (per-sentence densities times per-trial
    carriers: 1 and strength_z) to the fitted GLM `reduced`, for every row of z (draws x sentences).

    The statistic needs the fitted model only, not a refit, and because the added columns are constant within a
    sentence up to their carrier, each draw reduces to per-sentence sums: a thousand shuffles cost less than one
    refit of a paper-scale fit. It equals statsmodels' `GLM.score_test` (checked in the tests)."""
    exog = reduced.model.exog
    weight = reduced.mu * (1 - reduced.mu)  # the binomial variance (canonical link: observed = expected)
    residual = reduced.model.endog - reduced.mu
    by_sentence = sparse.csr_matrix((np.ones(len(sentence)), (sentence, np.arange(len(sentence)))),
                                    shape=(z.shape[1], len(sentence)))
    q, p = carriers.shape[1], exog.shape[1]
    resid_sums = by_sentence @ (carriers * residual[:, None])  # sentences x q
    weighted = carriers * weight[:, None]
    carrier_sums = np.stack([by_sentence @ (weighted * carriers[:, [k]]) for k in range(q)], axis=2)  # S x q x q
    cross_sums = np.stack([by_sentence @ (weighted[:, [j]] * exog) for j in range(q)], axis=1)  # S x q x p
    score = z @ resid_sums  # draws x q
    added = (z**2 @ carrier_sums.reshape(len(carrier_sums), -1)).reshape(-1, q, q)
    cross = (z @ cross_sums.reshape(len(cross_sums), -1)).reshape(-1, q, p)
    information = exog.T @ (weight[:, None] * exog)
    efficient = added - cross @ np.linalg.solve(information, cross.transpose(0, 2, 1))  # the added terms' information
    return np.einsum("dj,djk,dk->d", score, np.linalg.pinv(efficient, hermitian=True), score)


def _independent_columns(X: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The design without the columns that those before them already span, and the names left out. The controls
    are taken first and the density terms last, so that density must add something beyond the controls: density
    spanned by them (e.g. by source and length) is left out, and the fit is then not estimable."""
    last = [c for c in (CLASS_TERM, *DENSITY_TERMS) if c in X]
    keep, aliased = [], []
    for column in [c for c in X if c not in last] + last:
        if np.linalg.matrix_rank(X[keep + [column]].to_numpy()) > len(keep):
            keep.append(column)
        else:
            aliased.append(column)
    return X[[c for c in X if c in keep]], aliased


def _minority(data: pd.DataFrame) -> int:
    """Outcomes left to explain once the option position is known: the rarer outcome, counted per position."""
    counts = data.groupby("position").correct.agg(["sum", "size"])
    return int(np.minimum(counts["sum"], counts["size"] - counts["sum"]).sum())


def fit_density(frame: pd.DataFrame, column: str, permutations: int, seed: int) -> dict:
    """The density effect in one fit's trials (see `fit_groups`), at one bandwidth scale."""
    per_sentence = frame.groupby("sentence_id")[column].first()
    base = {"n_trials": len(frame), "n_sentences": len(per_sentence), "accuracy": frame.correct.mean(),
            "log_density_sd": per_sentence.std(ddof=1)}
    if frame.empty:
        return {**base, "status": "no trials (perturbed, of a canonical alias)"}
    if frame.correct.nunique() < 2:
        return {**base, "status": "every trial has the same outcome: nothing to explain"}
    if len(per_sentence) < 3 or not base["log_density_sd"] > 0:
        return {**base, "status": "fewer than 3 sentences or no variation in density"}
    data = _design(frame, column)
    text = formula(data)
    y, X = patsy.dmatrices(text, data, return_type="dataframe")
    X, aliased = _independent_columns(X)
    if aliased:  # e.g. a source whose sentences all have one length
        text += f" (collinear, left out: {', '.join(aliased)})"
    if "z_density" in aliased:
        return {**base, "formula": text, "status": "not estimable: density is spanned by the control terms"}
    tested = [t for t in DENSITY_TERMS if t in X]
    strata = _strata(data)
    sentences = data.groupby("sentence_id")[["z_density", *strata]].first()
    sentence = pd.Categorical(data.sentence_id, categories=sentences.index).codes  # clusters; the shuffles' unit
    try:
        full, problems = _fit(y, X, sentence)
        separated = separation(X, y)
    except (np.linalg.LinAlgError, RuntimeError) as error:  # a singular Hessian (the fit diverged), or the LP failed
        return {**base, "formula": text, "status": f"fit failed: {error}"}
    if separated and separated.involves(["z_density", *tested]):  # density itself has no finite estimate
        return {**base, "formula": text, "status": "not estimable: " + separated.describe()}
    if separated:  # a nuisance level's trials are certain: they drop out of the estimate (and its test)
        problems.append(separated.describe())
    full_rank = len(per_sentence) > X.shape[1]  # else the cluster-robust covariance cannot have full rank
    if not full_rank:
        problems.append(f"{len(per_sentence)} sentences for {X.shape[1]} parameters")
    if not np.isfinite(full.cov_params().to_numpy()).all():  # diverged
        return {**base, "formula": text,
                "status": "fit failed (no finite covariance)" + (": " + ", ".join(problems) if problems else "")}
    if not full_rank or "PerfectSeparationWarning" in problems:  # estimates and tests meaningless
        return {**base, "formula": text, "status": "not estimable: " + ", ".join(problems)}
    minority = _minority(data)
    if minority < MIN_MINORITY_PER_PARAMETER * X.shape[1]:
        problems.append(f"{minority} minority outcomes within positions for {X.shape[1]} parameters")
    reduced, _ = _fit(y, X.drop(columns=tested))
    lr = 2 * (full.llf - reduced.llf)
    wald = full.wald_test(np.eye(X.shape[1])[[X.columns.get_loc(t) for t in tested]], scalar=True)
    low, high = full.conf_int(alpha=0.05).loc["z_density"]
    result = {
        **base, "odds_ratio": np.exp(full.params["z_density"]), "ci_low": np.exp(low), "ci_high": np.exp(high),
        "p_value": float(full.pvalues["z_density"]), "interaction": full.params.get("z_density:strength_z", np.nan),
        "class_interaction": full.params.get(CLASS_TERM, np.nan), "lr_stat": lr, "lr_df": len(tested),
        "pseudo_r2_gain": lr / 2 / -full.llnull,
        "wald_p": float(wald.pvalue), "formula": text,
        "status": "ok" if not problems else "unreliable fit: " + ", ".join(problems),
    }
    carriers = np.column_stack([np.ones(len(data)), data.strength_z][: len(tested)])
    drawn = shuffles_within(sentences, "z_density", strata, permutations, np.random.default_rng(seed))
    statistic, *null = score_statistics(reduced, sentence, carriers, np.vstack([sentences.z_density, drawn]))
    result["score_stat"] = statistic
    if permutations:
        exceed = int(np.sum(np.array(null) >= statistic * (1 - 1e-9)))
        result.update(permutation_p=(exceed + 1) / (permutations + 1), permutations=permutations)
    return result


def density_dependence(tables: dict[tuple[str, str], pd.DataFrame], scales: list[float], rule: str,
                       permutations: int, seed: int, correction: str = "holm") -> pd.DataFrame:
    """Every fit: `tables` maps (model, experiment) to joined trials (see `join`)."""
    rows = []
    for (model, experiment), frame in tables.items():
        for perturbation, condition, part in fit_groups(frame, experiment):
            for scale in scales:
                fit = fit_density(part, scale_column(scale), permutations, seed)
                if perturbation == "both" and part.perturbation.nunique() == 1 and fit["status"] == "ok":
                    fit["status"] = "unreliable fit: one class only (a response bias would read as detection)"
                rows.append({"model": model, "experiment": experiment, "perturbation": perturbation,
                             "label_condition": condition, "bandwidth_scale": scale, "rule": rule, **fit})
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    primary = (table.bandwidth_scale == 1) & table.permutation_p.notna()
    if primary.any():
        table.loc[primary, "permutation_p_adjusted"] = multipletests(table.permutation_p[primary], method=correction)[1]
    return table


def density_and_nll(densities: dict[str, pd.DataFrame], scales: list[float], permutations: int,
                    seed: int) -> pd.DataFrame:
    """LMD3's observational check that density means familiarity, per model and bandwidth scale: across the pool's
    sentences (one row each, so independent), does log density predict the model's clean NLL per token beyond length
    (and source)? OLS `clean_nll ~ z_density + C(n_tokens) [+ C(source)]` with HC3 standard errors; `r2_gain`, the R²
    it adds to the model without density; `permutation_p`, the share of density shuffles (within length x source)
    that add as much. A negative slope: denser sentences surprise the model less, as a training-data density should.
    Columns: model, bandwidth_scale, n_sentences, slope (NLL per SD of log density), ci_low, ci_high, p_value, r2,
    r2_gain, permutation_p, permutations, formula."""
    rows = []
    for model, frame in densities.items():
        data = frame.assign(n_tokens=frame.sentence_tokens)
        terms = [term for term, name in (("C(n_tokens)", "n_tokens"), ("C(source)", "source")) if data[name].nunique() > 1]
        y, controls = patsy.dmatrices("clean_nll ~ " + (" + ".join(terms) or "1"), data, return_type="dataframe")
        y, controls = y.to_numpy()[:, 0], controls.to_numpy()
        controls_r2 = sm.OLS(y, controls).fit().rsquared
        strata = _strata(data)
        for scale in scales:
            z = _standardised(data[scale_column(scale)]).to_numpy()
            fit = sm.OLS(y, np.column_stack([controls, z])).fit(cov_type="HC3")
            gain = fit.rsquared - controls_r2
            drawn = shuffles_within(data[strata].assign(z=z), "z", strata, permutations, np.random.default_rng(seed))
            exceed = sum(sm.OLS(y, np.column_stack([controls, shuffled])).fit().rsquared - controls_r2 >= gain - 1e-12
                         for shuffled in drawn)
            low, high = fit.conf_int()[-1]
            rows.append({"model": model, "bandwidth_scale": scale, "n_sentences": len(data), "slope": fit.params[-1],
                         "ci_low": low, "ci_high": high, "p_value": fit.pvalues[-1], "r2": fit.rsquared,
                         "r2_gain": gain, "permutation_p": (exceed + 1) / (permutations + 1) if permutations else np.nan,
                         "permutations": permutations,
                         "formula": "clean_nll ~ z_density" + "".join(f" + {t}" for t in terms)})
    return pd.DataFrame(rows)


def source_contrast(tables: dict[tuple[str, str], pd.DataFrame]) -> pd.DataFrame:
    """Accuracy per sentence source at each strength, and whether the sources differ at matched strength.

    Per model x experiment x label condition (`panels`) x perturbation: `correct ~ C(source) + C(strength)`
    (strength as fixed effects, so sources are compared at matched strength), cluster-robust by sentence; `source_p`
    is the joint Wald test of the source terms (none where a source's trials are all right or all wrong:
    separation). With one source in the pool there is nothing to contrast and `status` says so.
    """
    rows = []
    for (model, experiment), frame in tables.items():
        for condition, panel in panels(frame, experiment):
            rows += _source_rows(panel, {"model": model, "experiment": experiment, "label_condition": condition})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    # Wilson intervals on the effective sample size, as every accuracy band (stats.condition_tests)
    deff = curve_design_effects(table, ["model", "experiment", "label_condition", "perturbation", "source"])
    low, high = effective_interval(table.accuracy * table.n_trials, table.n_trials, deff)
    table = drop_terms(table)
    position = table.columns.get_loc("accuracy") + 1
    for offset, (name, values) in enumerate((("design_effect", deff), ("ci_low", low), ("ci_high", high))):
        table.insert(position + offset, name, values)
    return table


def _source_rows(frame: pd.DataFrame, keys: dict) -> list[dict]:
    """One panel's rows of `source_contrast`: per perturbation, its test and each strength x source cell."""
    rows = []
    for perturbation, part in frame.groupby("perturbation"):
        sources = sorted(part.source.unique())
        test = {"status": f"one source in the sentence pool ({sources[0]}): no contrast", "source_p": np.nan}
        if len(sources) > 1:
            y, X = patsy.dmatrices("correct ~ C(source) + C(strength)", part, return_type="dataframe")
            fit, problems = _fit(y, X, pd.factorize(part.sentence_id)[0])
            columns = [i for i, name in enumerate(X.columns) if name.startswith("C(source)")]
            separated = separation(X, y)
            if separated and separated.involves(X.columns[columns]):
                test["status"] = "not estimable: " + separated.describe()
            else:
                problems += [separated.describe()] if separated else []
                test = {"source_p": float(fit.wald_test(np.eye(X.shape[1])[columns], scalar=True).pvalue),
                        "status": "ok" if not problems else "unreliable fit: " + ", ".join(problems)}
        for (strength, source), cell in part.groupby(["strength", "source"]):
            correct = cell.correct.to_numpy(dtype=bool)
            rows.append({**keys, "perturbation": perturbation, "strength": strength, "source": source,
                         "n_trials": len(cell), "n_sentences": cell.sentence_id.nunique(), "accuracy": correct.mean(),
                         "mean_log_density": cell.log_density.mean(), **test, **cell_terms(correct, clusterings(cell))})
    return rows
