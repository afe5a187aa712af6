"""Statistical tables of the results section: tidy functions of the per-trial tables (one row per trial).

The paper's code reports Bernoulli standard errors only. Every test here uses the design of the experiments:
all strengths, aliases and label conditions of a base trial share their sentence, rendering and random draws
(`base_id`, common random numbers), so comparisons are paired and standard errors are clustered by sentence (in
the topic control, by both of a trial's sentences: `clusterings`).
"Correct" is the configured scoring rule's column (`correct_primary` by default); chance is 1/2 (two options).

Tables (each a function below; columns in order):

`condition_tests`: one row per model x experiment x condition x scoring rule.
    Inputs: correct_{rule} and sentence_id per trial. Test: exact two-sided binomial test of accuracy = 1/2 on the
    effective sample size (Korn & Graubard 1998): a condition's trials draw their sentences with replacement, so a
    sentence can appear in several (about 1.3 trials per sentence at the paper's 1000 trials from 2000 sentences per
    length; 12 in the control, 1000 trials per topic pair over its 80 sentences), and its trials' answers are not
    independent. The intervals use the counts divided by the design effect of the trials' correctness by sentence
    (Kish's, from the cluster-robust variance at the observed accuracy: an effective sample size as Korn & Graubard,
    without their degrees-of-freedom factor; at accuracy 0 or 1, where the trials say nothing about how much a
    sentence's trials agree, from the largest intra-sentence correlation of the curve's other cells, or the worst
    case where none has one: `curve_design_effects`), the test the counts divided by the design effect at the null
    (`null_design_effect`, defined when every trial agrees). Both are 1 when no sentence recurs, where this is
    scipy's binomtest and the usual intervals.
    Columns: model, experiment, family, <condition columns>, rule, n, correct, accuracy, n_sentences, design_effect,
    wilson_low/high (95%), cp_low/high (Clopper-Pearson 95%), p_value, p_adjusted, significant. p_adjusted is Holm
    (or BH, `correction`) within the family `condition_family`: `curve` = model x experiment x rule x every condition
    column except the strengths, i.e. over the strengths of one curve (over the dropout x noise cells of one few-shot
    panel), or `experiment` = model x experiment x rule, over every curve at once (the confirmatory choice when many
    alias curves ran: 50 curves corrected one by one leave about a 90% chance of some false "above chance" cell).

`dose_response`: one row per model x experiment x curve (perturbation, alias, k, label condition).
    Formula: logit P(correct) = b0 + b1 * strength (statsmodels GLM, binomial family), standard errors clustered
    by sentence_id. Few-shot uses the strength of the test trial's own perturbation.
    Columns: model, experiment, family, <curve columns>, n, n_clusters, strength_min, strength_max, slope,
    slope_low/high (95%), odds_ratio_range (exp(b1 * (max - min)): the odds ratio from the weakest to the strongest
    strength), p_value (two-sided Wald), p_adjusted (across the curves of a family: all aliases (and label
    conditions) of one model x experiment x perturbation (x k in few-shot, whose k are separate experiments in the
    paper)), significant, note (why a slope is missing).

`label_pairs`: few-shot, the same base trials under correct and another teaching-label condition.
    Per dropout x noise cell: exact McNemar test on the discordant pairs (b: correct label right, other wrong;
    c: the reverse), on their effective number (b and c divided by the null design effect, by sentence, of which
    way a discordant pair went, as the test of `condition_tests`). Per panel (cell = "all"): a paired logistic model,
    logit P(correct) = b0 + b1 * [correct labels], standard errors clustered by sentence (pairs and their repeats
    across cells are clusters; exp(b1) is the population-averaged odds ratio, a marginal one, not McNemar's
    conditional b/c, usually further from 1); where it has no estimable odds ratio (e.g. every pair right under one
    condition makes it infinite, see `separation`; or the outcome is constant within every sentence), the exact
    sign test of the sentences' mean paired differences instead (`test` says which, `note` why; with 5 or fewer
    sentences it cannot reach p < 0.05).
    Swapped labels also get the paper's Fig. 6 quantity, flipped_difference = accuracy_correct - (1 -
    accuracy_other): 0 for a model that follows whatever labels it is taught, above 0 for one that keeps the label
    words' meaning; tested against 0 by the exact binomial test of both-right against both-wrong pairs (effective
    counts as above; `_flipped`; not under the argmax rule, whose answers may be neither option).
    Columns: model, experiment, family, k, alias, comparison, dropout_strength, noise_strength, n_pairs,
    accuracy_correct, accuracy_other, difference, b, c, odds_ratio, or_low, or_high, p_value, test, note,
    both_right, both_wrong, flipped_difference, flipped_p_value (swapped labels only), p_adjusted (across the cells
    of a panel), significant, flipped_p_adjusted, flipped_significant.

`discrimination`: zero-shot, does the model tell dropout from noise, or only favour one word?
    Per alias and matched grid rank (the rank-th dropout strength against the rank-th noise strength; the probes'
    dropout-vs-noise sets pair the same strengths, numbered from the clean pass where it ran): the recall of each
    class and their mean, the balanced accuracy. In the paper's single-class runs
    a model that always answers "dropout" has recall 1 in every dropout cell of `condition_tests`; here it scores
    balanced accuracy 1/2. Test: Fisher's exact test of said-"dropout" against the true class (two-sided), i.e.
    balanced accuracy = 1/2 (said "dropout": the answer is the dropout option's letter; answers that are neither
    option, possible under the argmax rule, are left out and counted in n_no_option). It needs no clustering by
    sentence: a trial's class is drawn independently of its sentence, so under the null the class labels are
    exchangeable across trials however often a sentence recurs (a simulation with answers that depend on the
    sentence only, 40 sentences, 100 trials per class: 3.0 to 3.7% of Fisher's tests below 0.05). Per alias (rank = "all"):
    logit P(said "dropout") = b0 + b1 * [dropout] + rank effects, standard errors clustered by sentence; where it has
    no estimable odds ratio (every trial named its class: separation; or the model gave one answer throughout), a
    Mann-Whitney U test of the sentences' shares of "dropout" answers, dropout-class sentences against noise-class
    ones (a sentence drawn under both classes counts once in each, which makes the test conservative).
    Columns: model, experiment, family, alias, rank, dropout_strength, noise_strength, n_dropout, n_noise,
    n_no_option, recall_dropout, recall_noise, balanced_accuracy, said_dropout (share of the answers), odds_ratio,
    or_low, or_high, p_value, test, note, p_adjusted (per rank: over the ranks of an alias, or over every alias and
    rank of a model with `condition_family: experiment`; pooled: over the aliases of a model), significant.

`alias_controls`: zero- and few-shot, does the canonical label pair beat each control pair?
    The same base trials under the canonical alias and under a control alias (few-shot: correct labels),
    pooled over strengths and both classes: a paired logistic model, logit P(correct) = b0 + b1 * [canonical],
    standard errors clustered by sentence, one-sided p for b1 > 0 (without an estimable odds ratio: the one-sided
    sign test of `label_pairs`).
    Columns: model, experiment, family, canonical, alias, group, k, n_pairs, accuracy_canonical, accuracy_alias,
    difference, odds_ratio, or_low, or_high, p_value (one-sided), test, note, p_adjusted (Holm/BH across the aliases
    of a model x experiment (x k)), significant.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy.special import betainc
from scipy.stats import binomtest, fisher_exact, mannwhitneyu
from scipy.stats import t as t_dist
from statsmodels.stats.contingency_tables import Table2x2
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from .separation import separation
from .vocabulary import RULES, STRENGTH_COLUMNS

CHANCE = 0.5
# The columns that name one condition of each experiment (one point of a curve or one cell of a heatmap).
CONDITIONS = {
    "localization": ["perturbation", "strength"],
    "localization_control": ["perturbation", "strength"],
    "zero_shot": ["alias", "perturbation", "strength"],
    "few_shot": ["k", "label_condition", "alias", "dropout_strength", "noise_strength"],
}
# The columns that name one dose-response curve (few-shot: the test class, against its own strength).
CURVES = {
    "localization": ["perturbation"],
    "localization_control": ["perturbation"],
    "zero_shot": ["perturbation", "alias"],
    "few_shot": ["perturbation", "k", "label_condition", "alias"],
}
PAIRED_FIT = ("difference", "odds_ratio", "or_low", "or_high", "p_value", "test", "note")


CLUSTER_COLUMNS = ("sentence_id", "other_sentence_id")  # the second: the topic control's (`clusterings`)


def reads(table: str, experiment: str, rule: str):
    """Which columns of `experiment`'s per-trial table `table` reads: a `usecols` for read_csv, so that a statistics
    job holds a fraction of a paper-scale few-shot table (36 columns, 9.6M rows), not all of it."""
    columns = {"model", "experiment", f"correct_{rule}", *CLUSTER_COLUMNS}  # sentences are the clusters
    if table == "condition_tests":
        columns = {"model", "experiment", *CLUSTER_COLUMNS, *CONDITIONS[experiment], *(f"correct_{r}" for r in RULES)}
    elif table == "dose_response":
        columns |= {*CURVES[experiment], "strength"}
    elif table == "discrimination":  # said "dropout": the answer's letter among the options (one prob_ column each)
        columns |= {*CONDITIONS[experiment], "answer", f"pred_{rule}"}
    else:  # paired tables: the same base trial under two conditions
        columns |= {*CONDITIONS[experiment], "perturbation", "label_condition", "base_id"}
    return lambda column: column in columns or (table == "discrimination" and column.startswith("prob_"))


def icc_terms(correct: np.ndarray, groups: np.ndarray) -> tuple[float, float, float]:
    """What a proportion's rows say about the correlation rho of two rows of one sentence: the moment estimator's
    numerator and denominator, and the weighted cluster size m_w = sum(m_i^2) / n. With s_i the sum of sentence
    i's m_i rows, sum_i (s_i - p m_i)^2 = p(1 - p) (n + rho (sum m_i^2 - n)) in expectation, so rho = num / den,
    num = sum_i (s_i - p m_i)^2 - p(1 - p) n, den = p(1 - p) (sum m_i^2 - n); Kish's design effect
    1 + (m_w - 1) rho is then the cluster-robust (sandwich) variance of the mean over the binomial one. Both terms
    are 0 where the rows say nothing about rho: every row alike, one row per sentence, or a single sentence."""
    n, p = len(correct), correct.mean()
    sums, counts = cluster_totals(correct, groups)
    size, binomial = float((counts**2).sum() / n), p * (1 - p)
    if len(counts) < 2 or len(counts) == n or binomial == 0:
        return 0.0, 0.0, size
    return float(((sums - p * counts) ** 2).sum() - binomial * n), binomial * (size - 1) * n, size


def own_icc(num, den):
    """The intra-sentence correlation from `icc_terms` (elementwise), NaN where the rows estimate none (den = 0)."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, np.nan)


def clusterings(trials: pd.DataFrame, experiment: str | None = None) -> dict[str, np.ndarray]:
    """How a table's trials cluster: suffix -> each row's cluster. By sentence (""), except in the topic control,
    whose trials show two different sentences, one from each topic of the pair (`other_sentence_id`: the one not
    perturbed), and whose answer depends on both (the question may ask about either): there by the sentence of the
    pair's first topic ("_a"), by that of its second ("_b") and by the two together ("_ab"), for the two-way
    cluster-robust variance (`combined`). Clustering by the perturbed sentence alone put half of each sentence's
    trials in other sentences' clusters: simulated, 95% intervals covered 72 to 75% where both sentences matter.
    A control table without the second sentence (made before it was recorded) is an error, not one-way."""
    if experiment == "localization_control" and (
            "other_sentence_id" not in trials or (trials["other_sentence_id"].astype(str) == "").any()):
        raise ValueError("the topic control's trial table has no other_sentence_id for some trials (it was made "
                         "before the unperturbed sentence was recorded): rerun its prompts and inference, "
                         "`snakemake --forcerun prompt_set <target>`")
    if "other_sentence_id" not in trials:
        return {"": trials["sentence_id"].to_numpy()}
    one, other = trials["sentence_id"].astype(str), trials["other_sentence_id"].astype(str)
    first_topic = one.str.rsplit("-", n=1).str[0] < other.str.rsplit("-", n=1).str[0]  # ids are "<topic>-<nn>"
    a, b = one.where(first_topic, other), other.where(first_topic, one)
    return {"_a": a.to_numpy(), "_b": b.to_numpy(), "_ab": (a + "|" + b).to_numpy()}


def combined(effects: dict):
    """One design effect from those of each clustering (`clusterings`): the only one, or for two-way clustering
    Cameron, Gelbach & Miller's (2011) V_a + V_b - V_ab over the binomial variance, kept at least the larger
    one-way effect (the difference can fall below either in small samples). Elementwise."""
    if "" in effects:
        return effects[""]
    one_way = np.maximum(effects["_a"], effects["_b"])
    return np.maximum(effects["_a"] + effects["_b"] - effects["_ab"], one_way)


def cell_terms(correct: np.ndarray, clusters: dict[str, np.ndarray]) -> dict[str, float]:
    """`icc_terms` of a cell's rows under each clustering, as the columns curve_design_effects reads."""
    terms = {}
    for suffix, groups in clusters.items():
        terms.update(zip((f"icc_num{suffix}", f"icc_den{suffix}", f"cluster_size{suffix}"), icc_terms(correct, groups)))
    return terms


def curve_design_effects(terms: pd.DataFrame, curve: list[str]) -> np.ndarray:
    """The design effect of each cell of a table of `cell_terms` (columns icc_num, icc_den, cluster_size, with a
    clustering's suffix): from the cell's own intra-sentence correlation, or where it has none (accuracy 0 or 1,
    one sentence) from its curve's (the cells sharing `curve`; `borrowed_icc`); clusterings `combined`. Without it
    a cell right on every trial took the worst case, clusters that always agree, and got a far wider interval than
    the same cell with one trial wrong (the control's 1000 trials over 80 sentences: lower bound 0.954 at
    1000/1000, 0.994 at 999/1000)."""
    effects = {}
    for suffix in (s for s in ("", "_a", "_b", "_ab") if f"icc_num{s}" in terms):
        own = own_icc(terms[f"icc_num{suffix}"], terms[f"icc_den{suffix}"])
        borrowed = terms[curve].assign(own=own).groupby(curve, dropna=False)["own"].transform(
            borrowed_icc, subtracted=suffix == "_ab")
        rho = np.where(np.isnan(own), borrowed, own)
        effects[suffix] = np.maximum(1.0, 1 + (terms[f"cluster_size{suffix}"].to_numpy() - 1) * rho)
    return combined(effects)


def borrowed_icc(estimates, subtracted: bool = False) -> float:
    """The intra-sentence correlation a cell without an estimate of its own takes from the other cells of its curve
    (strengths, or a probe's layers): the largest of their estimates (NaN: none), within [0, 1]; 1, the worst case,
    where none has one. Not a pooled estimate: the correlation of a trial's correctness differs along a curve by
    design (where the perturbed sentence's position, drawn per trial, is not detected, every trial is right with
    probability 1/2 whatever its sentence, so the chance cells' correlation is about 0 however much the sentence
    decides detection elsewhere), and a pool would carry that 0 into the cells at 100%. `subtracted`: for a
    two-way design effect's subtracted term (the pair of sentences, `combined`), where caution is the smallest
    estimate, 0 where none has one."""
    estimates = np.asarray(estimates, dtype=float)
    estimates = estimates[~np.isnan(estimates)]
    if not estimates.size:
        return 0.0 if subtracted else 1.0
    return float(np.clip(estimates.min() if subtracted else estimates.max(), 0, 1))


def effective_interval(correct, n, deff, method: str = "wilson"):
    """95% interval of a proportion on its effective sample size: the counts divided by the design effect
    (elementwise; `method` as statsmodels' proportion_confint)."""
    return proportion_confint(correct / deff, n / deff, alpha=0.05, method=method)


def drop_terms(table: pd.DataFrame) -> pd.DataFrame:
    """A table less the `cell_terms` columns, once its design effects are computed."""
    return table.drop(columns=[c for c in table if c.startswith(("icc_num", "icc_den", "cluster_size"))])


def cluster_totals(outcome: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster: the outcome's sum and the number of rows, clusters in sorted order as a groupby gives them
    (bincount, not a groupby: condition_tests and the summaries ask for thousands of cells' design effects)."""
    codes = pd.factorize(groups, sort=True)[0]  # clusters in sorted order, as a groupby sums them
    return np.bincount(codes, weights=np.asarray(outcome, dtype=float)), np.bincount(codes)


def adjust(frame: pd.DataFrame, family: list[str], alpha: float, method: str, test: str = "") -> pd.DataFrame:
    """Add {test}p_adjusted and {test}significant, correcting {test}p_value within each family (missing p-values
    stay missing)."""
    frame = frame.copy()
    adjusted = f"{test}p_adjusted"
    frame[adjusted] = np.nan
    for _, index in frame.groupby(family, dropna=False).groups.items():
        p = frame.loc[index, f"{test}p_value"].dropna()
        if len(p):
            frame.loc[p.index, adjusted] = multipletests(p.to_numpy(), alpha=alpha, method=method)[1]
    frame[f"{test}significant"] = frame[adjusted] < alpha
    frame["family"] = frame[family].astype(str).agg(" | ".join, axis=1)
    return frame


def clustered_logit(data: pd.DataFrame, formula: str, term: str, groups: str | list[str]) -> dict:
    """Binomial GLM with standard errors clustered by `groups`: the coefficient of `term`, its 95% CI, Wald p.
    Two columns of groups: two-way clustering (statsmodels' Cameron-Gelbach-Miller variance).

    Inference uses statsmodels' small-sample cluster correction with a t distribution on (clusters - 1) degrees of
    freedom (the fewer of the two ways'), so a handful of sentences gives wide intervals instead of overconfident
    normal ones.

    Returns NaNs with a note where the model is not identified (no variation in the outcome or the term, fewer
    than two clusters, an outcome constant within every cluster while the term varies there, whose clustered
    standard error collapses to zero, separation along `term` (its coefficient is infinite; see `separation`), or
    a fit that does not converge). Separation along other terms leaves the estimate, from the trials they do not
    fit as certain, and says so in the note.
    """
    outcome = formula.split("~")[0].strip()
    empty = {"estimate": np.nan, "low": np.nan, "high": np.nan, "p_value": np.nan, "statistic": np.nan, "df": np.nan}
    if data[outcome].nunique() < 2:
        return {**empty, "note": "no variation in the outcome"}
    ways = [groups] if isinstance(groups, str) else list(groups)
    if min(data[way].nunique() for way in ways) < 2:
        return {**empty, "note": "fewer than two clusters"}
    for way in ways:
        by_cluster = data.groupby(way)
        if by_cluster[outcome].nunique().max() < 2 and by_cluster[term].nunique().max() > 1:
            # every cluster answers the same at every value of the term: the clustered standard error collapses to 0
            return {**empty, "note": "outcome constant within every cluster: no within-cluster information"}
    codes = np.column_stack([pd.factorize(data[way])[0] for way in ways])
    # two ways: the two-way fit and each one-way fit; the widest standard error of the term is kept, as `combined`
    # keeps a design effect at least the larger one-way one (the two-way variance can fall below both, or below 0)
    groupings = [codes[:, 0]] if len(ways) == 1 else [codes, codes[:, 0], codes[:, 1]]
    model = smf.glm(formula, data, family=sm.families.Binomial())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fits = [model.fit(cov_type="cluster", cov_kwds={"groups": g}, use_t=True) for g in groupings]
            fit = max(fits, key=lambda f: np.nan_to_num(f.bse.get(term, np.nan), nan=-np.inf))
            separated = separation(pd.DataFrame(fit.model.exog, columns=fit.model.exog_names), fit.model.endog)
        except (ValueError, RuntimeError, np.linalg.LinAlgError) as err:
            return {**empty, "note": f"not estimable: {err}"}
    if separated and separated.involves([term]):
        return {**empty, "note": "not estimable: " + separated.describe()}
    if term not in fit.params or not np.isfinite(fit.bse[term]) or not fit.converged:
        return {**empty, "note": "not estimable (no variation in the term, or separation)"}
    low, high = fit.conf_int().loc[term]
    return {"estimate": fit.params[term], "low": low, "high": high, "p_value": fit.pvalues[term],
            "statistic": fit.tvalues[term], "df": fit.df_resid_inference,
            "note": separated.describe() + ": those trials inform no estimate" if separated else ""}


def null_design_effect(outcome: np.ndarray, groups: np.ndarray) -> float:
    """The design effect of a test of P = 1/2: the cluster-robust variance of the count at the null, sum over
    sentences of (s_i - m_i / 2)^2, over the binomial one, n / 4; at least 1. Unlike Kish's at the observed
    proportion it is defined when every row agrees, and one more row against the rest never makes a test more
    significant. 1 with one row per sentence."""
    sums, counts = cluster_totals(outcome, groups)
    if len(counts) == len(outcome):
        return 1.0
    return max(1.0, float(4 * ((sums - counts / 2) ** 2).sum() / len(outcome)))


def binomial_p(correct: float, n: float) -> float:
    """Two-sided exact binomial p-value of accuracy = 1/2, for counts that may be effective (count / deff, not whole
    numbers): twice the upper tail of the larger count, P(X >= m) = I_1/2(m, n - m + 1) (the regularized incomplete
    beta function, which extends the binomial tail to real counts). At whole counts it is scipy's binomtest, whose
    two-sided p at 1/2 is twice a tail since the null distribution is symmetric."""
    larger = max(correct, n - correct)
    return float(min(1.0, 2 * betainc(larger, n - larger + 1, CHANCE)))


def condition_tests(trials: pd.DataFrame, experiment: str, alpha: float = 0.05, method: str = "holm",
                    family: str = "curve") -> pd.DataFrame:
    conditions = ["model", "experiment", *CONDITIONS[experiment]]
    rows = []
    for key, group in trials.groupby(conditions, sort=True):
        clusters = clusterings(group, experiment)
        for rule in RULES:
            correct = group[f"correct_{rule}"].to_numpy(dtype=bool)
            n, k = len(correct), int(correct.sum())
            null = combined({suffix: null_design_effect(correct, groups) for suffix, groups in clusters.items()})
            rows.append({
                **dict(zip(conditions, key)), "rule": rule, "n": n, "correct": k, "accuracy": k / n,
                "n_sentences": group["sentence_id"].nunique(), "p_value": binomial_p(k / null, n / null),
                **cell_terms(correct, clusters),
            })
    table = pd.DataFrame(rows)
    curve = [c for c in conditions if c not in STRENGTH_COLUMNS] + ["rule"]
    deff = curve_design_effects(table, curve)
    wilson = effective_interval(table.correct, table.n, deff)
    exact = effective_interval(table.correct, table.n, deff, method="beta")
    table = drop_terms(table).assign(
        design_effect=deff, wilson_low=wilson[0], wilson_high=wilson[1], cp_low=exact[0], cp_high=exact[1])
    table = table[[c for c in table if c != "p_value"] + ["p_value"]]
    columns = curve if family == "curve" else ["model", "experiment", "rule"]
    return _order(adjust(table, columns, alpha, method), conditions)


def dose_response(trials: pd.DataFrame, experiment: str, rule: str = "primary", alpha: float = 0.05,
                  method: str = "holm") -> pd.DataFrame:
    curve = ["model", "experiment", *CURVES[experiment]]
    rows = []
    for key, group in trials.groupby(curve, sort=True):
        clusters = {f"sentence{suffix}": groups for suffix, groups in clusterings(group, experiment).items()
                    if suffix != "_ab"}
        data = pd.DataFrame({
            "correct": group[f"correct_{rule}"].astype(int), "strength": group["strength"].astype(float), **clusters,
        })
        fit = clustered_logit(data, "correct ~ strength", "strength", list(clusters))
        lo, hi = data["strength"].min(), data["strength"].max()
        rows.append({
            **dict(zip(curve, key)), "n": len(data), "n_clusters": min(data[c].nunique() for c in clusters),
            "strength_min": lo, "strength_max": hi, "slope": fit["estimate"], "slope_low": fit["low"],
            "slope_high": fit["high"], "odds_ratio_range": np.exp(fit["estimate"] * (hi - lo)),
            "p_value": fit["p_value"], "note": fit["note"],
        })
    family = ["model", "experiment", "perturbation", *(["k"] if experiment == "few_shot" else [])]
    return _order(adjust(pd.DataFrame(rows), family, alpha, method), curve)


def label_pairs(trials: pd.DataFrame, rule: str = "primary", alpha: float = 0.05, method: str = "holm") -> pd.DataFrame:
    """Correct teaching labels against every other label condition that ran on the same base trials."""
    panel = ["model", "experiment", "k", "alias"]
    cell = ["dropout_strength", "noise_strength"]
    rows = []
    for other in sorted(set(trials["label_condition"]) - {"correct"}):
        pairs = _pairs(trials, "label_condition", "correct", other, panel + cell, rule)
        for key, group in pairs.groupby(panel, sort=True):
            common = {**dict(zip(panel, key)), "comparison": f"correct - {other}"}
            # a wrong answer is the taught label only where every answer is one of the two options (not argmax's)
            flipped = _flipped if other == "swapped" and rule != "argmax" else lambda _: {}
            for cell_key, cell_pairs in group.groupby(cell, sort=True):
                rows.append({**common, **dict(zip(cell, cell_key)), **_mcnemar(cell_pairs), **flipped(cell_pairs)})
            rows.append({**common, "dropout_strength": "all", "noise_strength": "all", **_paired_logit(group),
                         **flipped(group)})
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows).reindex(columns=LABEL_PAIR_COLUMNS[:-4])  # the flipped columns even without swapped
    family = panel + ["comparison"]
    parts = []
    for part, by in ((table[table["dropout_strength"] != "all"], family),
                     (table[table["dropout_strength"] == "all"], ["model", "experiment", "comparison"])):
        parts.append(adjust(adjust(part, by, alpha, method), by, alpha, method, test="flipped_"))
    table = pd.concat(parts).reset_index(drop=True)
    table["flipped_significant"] = table["flipped_significant"].where(table["flipped_p_value"].notna())  # swapped only
    return _order(table[["family", *LABEL_PAIR_COLUMNS]], family + cell)


LABEL_PAIR_COLUMNS = [
    "model", "experiment", "k", "alias", "comparison", "dropout_strength", "noise_strength", "n_pairs",
    "accuracy_correct", "accuracy_other", "difference", "b", "c", "odds_ratio", "or_low", "or_high", "p_value", "test",
    "note", "both_right", "both_wrong", "flipped_difference", "flipped_p_value",
    "p_adjusted", "significant", "flipped_p_adjusted", "flipped_significant",  # added by `adjust`
]


def _flipped(pairs: pd.DataFrame) -> dict:
    """The paper's flipped-label difference, acc(correct labels) - (1 - acc(swapped labels)): the swapped run's
    accuracy under the labels it was taught is 1 - its accuracy, so a model that follows whatever labels it is
    taught scores 0, and one that keeps the words' own meaning scores above 0. Per pair it is (both right - both
    wrong) / n, so the exact test of 0 is the binomial test of both-right among the pairs that are both right or
    both wrong, on their effective number (design effect by sentence, as `_mcnemar`)."""
    first, second = pairs["correct_first"], pairs["correct_second"]
    concordant = pairs[first == second]
    right = int(concordant["correct_first"].sum())
    wrong = len(concordant) - right
    deff = null_design_effect(concordant["correct_first"].to_numpy() == 1, concordant["sentence_id"].to_numpy())
    return {"both_right": right, "both_wrong": wrong, "flipped_difference": (right - wrong) / len(pairs),
            "flipped_p_value": binomial_p(right / deff, (right + wrong) / deff) if right + wrong else 1.0}


def alias_controls(trials: pd.DataFrame, experiment: str, groups: dict[str, str], rule: str = "primary",
                   alpha: float = 0.05, method: str = "holm") -> pd.DataFrame:
    """Each non-canonical alias against the canonical one (the first canonical alias that ran), same base trials.

    `groups` maps alias -> group (canonical, swap, synonym, ...). Few-shot compares correct teaching labels only.
    """
    if experiment == "few_shot":
        trials = trials[trials["label_condition"] == "correct"]
    present = list(dict.fromkeys(trials["alias"]))
    canonical = [a for a in present if groups.get(a) == "canonical"]
    if not canonical:
        return pd.DataFrame()
    reference = canonical[0]
    panel = ["model", "experiment", *(["k"] if experiment == "few_shot" else [])]
    cell = ["perturbation", *(["dropout_strength", "noise_strength"] if experiment == "few_shot" else ["strength"])]
    rows = []
    for alias in [a for a in present if a != reference]:
        pairs = _pairs(trials, "alias", reference, alias, panel + cell, rule)
        for key, group in pairs.groupby(panel, sort=True):
            fit = _paired_logit(group, one_sided=True)
            rows.append({
                **dict(zip(panel, key)), "canonical": reference, "alias": alias, "group": groups.get(alias, ""),
                "n_pairs": fit["n_pairs"], "accuracy_canonical": fit["accuracy_correct"],
                "accuracy_alias": fit["accuracy_other"], **{c: fit[c] for c in PAIRED_FIT},
            })
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    return _order(adjust(table, panel, alpha, method), panel + ["canonical", "alias", "group"])


def discrimination(trials: pd.DataFrame, rule: str = "primary", alpha: float = 0.05, method: str = "holm",
                   family: str = "curve") -> pd.DataFrame:
    """Zero-shot balanced accuracy per alias and matched grid rank, tested by Fisher's exact test (module doc)."""
    letters = [c.removeprefix("prob_") for c in trials if c.startswith("prob_")]  # one prob_ column per option
    if len(letters) != 2:
        raise ValueError(f"discrimination compares two options; the trial table has {letters}")
    answer, pred = trials["answer"].astype(str), trials[f"pred_{rule}"].astype(str)
    is_dropout = trials["perturbation"] == "dropout"
    dropout_letter = answer.where(is_dropout, answer.map({letters[0]: letters[1], letters[1]: letters[0]}))
    data = trials.assign(dropout=is_dropout.astype(int), said=(pred == dropout_letter).astype(int),
                         on_option=pred.isin(letters))
    panel = ["model", "experiment", "alias"]
    cells, pooled = [], []
    for key, group in data.groupby(panel, sort=True):
        grids = [sorted(group.loc[group.perturbation == kind, "strength"].unique()) for kind in ("dropout", "noise")]
        ranked, no_option = [], 0
        for rank, strengths in enumerate(zip(*grids)):
            cell = pd.concat([group[(group.perturbation == kind) & (group.strength == s)]
                              for kind, s in zip(("dropout", "noise"), strengths)]).assign(rank=rank)
            answered = cell[cell.on_option]
            ranked.append(answered)
            dropped = len(cell) - len(answered)
            no_option += dropped
            cells.append({**dict(zip(panel, key)), "rank": rank, "dropout_strength": strengths[0],
                          "noise_strength": strengths[1], "n_no_option": dropped,
                          **_balanced(answered), **_fisher(answered)})
        if ranked:
            both = pd.concat(ranked)
            fit = clustered_logit(both, "said ~ dropout + C(rank)" if len(ranked) > 1 else "said ~ dropout", "dropout",
                                  "sentence_id")
            test = {"p_value": fit["p_value"], "test": "logistic with rank effects, SE clustered by sentence"}
            if np.isnan(fit["estimate"]):  # e.g. every trial named its class: no finite odds ratio to test
                test = _sentence_rank_sum(both)
            pooled.append({**dict(zip(panel, key)), "rank": "all", "dropout_strength": "all", "noise_strength": "all",
                           "n_no_option": no_option, **_balanced(both), "odds_ratio": np.exp(fit["estimate"]),
                           "or_low": np.exp(fit["low"]), "or_high": np.exp(fit["high"]), **test, "note": fit["note"]})
    if not cells:
        return pd.DataFrame()
    per_rank = panel if family == "curve" else ["model", "experiment"]
    table = pd.concat([adjust(pd.DataFrame(cells), per_rank, alpha, method),
                       adjust(pd.DataFrame(pooled), ["model", "experiment"], alpha, method)])
    return _order(table.reset_index(drop=True), [*panel, "rank", "dropout_strength", "noise_strength"])


def _balanced(cell: pd.DataFrame) -> dict:
    recall = cell.groupby("dropout")["said"].mean()  # P(said "dropout") per class
    recall_dropout, recall_noise = recall.get(1, np.nan), 1 - recall.get(0, np.nan)
    return {"n_dropout": int(cell["dropout"].sum()), "n_noise": int((1 - cell["dropout"]).sum()),
            "recall_dropout": recall_dropout, "recall_noise": recall_noise,
            "balanced_accuracy": (recall_dropout + recall_noise) / 2, "said_dropout": cell["said"].mean()}


def _fisher(cell: pd.DataFrame) -> dict:
    """Fisher's exact test of said "dropout" x true class; the odds ratio with its Woolf 95% interval (0.5 added
    to every cell when one is empty, so that a class answered one way throughout still gets finite bounds)."""
    table = pd.crosstab(cell["dropout"], cell["said"]).reindex(index=[1, 0], columns=[1, 0], fill_value=0).to_numpy()
    odds = Table2x2(table + 0.5 * (table == 0).any())
    low, high = odds.oddsratio_confint()
    return {"odds_ratio": odds.oddsratio, "or_low": low, "or_high": high, "p_value": fisher_exact(table).pvalue,
            "test": "Fisher exact", "note": ""}


def build(table: str, trials: pd.DataFrame, experiment: str, groups: dict[str, str], rule: str, alpha: float,
          correction: str, condition_family: str) -> pd.DataFrame:
    """One of the tables above for one model x experiment (`groups`: alias -> group, for alias_controls)."""
    if table == "condition_tests":
        return condition_tests(trials, experiment, alpha, correction, condition_family)
    if table == "dose_response":
        return dose_response(trials, experiment, rule, alpha, correction)
    if table == "label_pairs":
        return label_pairs(trials, rule, alpha, correction)
    if table == "discrimination":
        return discrimination(trials, rule, alpha, correction, condition_family)
    return alias_controls(trials, experiment, groups, rule, alpha, correction)


def _pairs(trials: pd.DataFrame, column: str, first: str, second: str, keys: list[str], rule: str) -> pd.DataFrame:
    """One row per base trial run under both `first` and `second` of `column`: correct_first, correct_second."""
    index = keys + ["base_id", "sentence_id"]
    wide = trials[trials[column].isin([first, second])].pivot_table(
        index=index, columns=column, values=f"correct_{rule}", aggfunc="first"
    )
    if first not in wide or second not in wide:
        return pd.DataFrame(columns=index + ["correct_first", "correct_second"])
    wide = wide[[first, second]].dropna().astype(int)
    return wide.set_axis(["correct_first", "correct_second"], axis=1).reset_index()


def _mcnemar(pairs: pd.DataFrame) -> dict:
    """Exact McNemar test: the binomial test of b among the b + c discordant pairs, on their effective number (the
    design effect of which way they disagree, by sentence; 1 where no sentence recurs among them, where this is
    the usual exact McNemar test)."""
    first, second = pairs["correct_first"], pairs["correct_second"]
    discordant = pairs[first != second]
    b, c = int(discordant["correct_first"].sum()), int(len(discordant) - discordant["correct_first"].sum())
    way = discordant["correct_first"].to_numpy() == 1  # b (True) or c
    deff = null_design_effect(way, discordant["sentence_id"].to_numpy()) if b + c else 1.0
    return {
        "n_pairs": len(pairs), "accuracy_correct": first.mean(), "accuracy_other": second.mean(),
        "difference": first.mean() - second.mean(), "b": b, "c": c,
        "p_value": binomial_p(b / deff, (b + c) / deff) if b + c else 1.0, "test": "exact McNemar",
    }


def _sentence_rank_sum(answered: pd.DataFrame) -> dict:
    """Discrimination where the logistic model has no estimate: one share of "dropout" answers per sentence (the
    clusters), dropout-class sentences against noise-class ones by the Mann-Whitney U test (scipy), pooled over the
    ranks."""
    shares = answered.groupby(["sentence_id", "dropout"]).said.mean().reset_index()
    dropout, noise = shares.said[shares.dropout == 1], shares.said[shares.dropout == 0]
    p = mannwhitneyu(dropout, noise).pvalue if len(dropout) and len(noise) else np.nan
    return {"p_value": float(p), "test": "Mann-Whitney U of the sentences' shares of \"dropout\" answers by class"}


def _paired_logit(pairs: pd.DataFrame, one_sided: bool = False) -> dict:
    """Paired logistic model on stacked pairs: the odds ratio of the first condition, clustered by sentence."""
    stacked = pd.DataFrame({
        "correct": np.r_[pairs["correct_first"], pairs["correct_second"]],
        "first": np.r_[np.ones(len(pairs)), np.zeros(len(pairs))],
        "sentence": np.r_[pairs["sentence_id"], pairs["sentence_id"]],
    })
    out = _mcnemar(pairs)
    if out["b"] + out["c"] == 0:
        return {**out, "odds_ratio": 1.0, "or_low": np.nan, "or_high": np.nan, "p_value": 1.0,
                "test": "none: no discordant pairs", "note": "identical answers under both conditions"}
    fit = clustered_logit(stacked, "correct ~ first", "first", "sentence")
    sided = " (one-sided)" if one_sided else ""
    if np.isnan(fit["estimate"]):  # e.g. every pair right under one condition: no finite odds ratio to test
        out.update({"odds_ratio": np.nan, "or_low": np.nan, "or_high": np.nan, "note": fit["note"],
                    "p_value": _sentence_sign_test(pairs, one_sided),
                    "test": "exact sign test of the sentences' mean paired differences" + sided})
        return out
    p = t_dist.sf(fit["statistic"], fit["df"]) if one_sided else fit["p_value"]
    out.update({
        "odds_ratio": np.exp(fit["estimate"]), "or_low": np.exp(fit["low"]), "or_high": np.exp(fit["high"]),
        "p_value": p, "test": "paired logistic, SE clustered by sentence" + sided, "note": fit["note"],
    })
    return out


def _sentence_sign_test(pairs: pd.DataFrame, one_sided: bool) -> float:
    """The paired comparison where the logistic model has no estimate: one mean difference per sentence (the
    clusters, independent), and the exact binomial test of the positive ones among those not zero. Under separation
    every such difference has one sign, where this is the exact sign-flip test (p = 2^-k one-sided for k sentences;
    scipy's signed-rank test with zeros falls back to a normal approximation that needs several times more)."""
    differences = (pairs["correct_first"] - pairs["correct_second"]).groupby(pairs["sentence_id"]).mean()
    nonzero = differences[differences != 0]
    if nonzero.empty:
        return 1.0
    return float(binomtest(int((nonzero > 0).sum()), len(nonzero), 0.5,
                           alternative="greater" if one_sided else "two-sided").pvalue)


def _order(frame: pd.DataFrame, first: list[str]) -> pd.DataFrame:
    head = ["model", "experiment", "family"] + [c for c in first if c not in ("model", "experiment")]
    return frame[[*dict.fromkeys(head), *[c for c in frame if c not in head]]]


def to_latex(frame: pd.DataFrame) -> str:
    """A booktabs table for the paper: p-values in scientific notation, other floats to three significant digits."""
    formatters = {c: (lambda v: f"{v:.2e}") for c in frame if c.startswith("p_")}
    return frame.drop(columns=["family"], errors="ignore").to_latex(
        index=False, float_format=lambda v: f"{v:.3g}", formatters=formatters, na_rep="--", escape=True
    )
