"""Layer-wise linear probes on captured activations: is the perturbation linearly decodable, layer by layer, and
does that track what the model reports?

Labelled sets per experiment and condition (`datasets`):
- ``perturbed``: rows at one (perturbation, strength) against the clean rows of the same trials;
- ``which_sentence`` (localization): which of the two sentences was perturbed;
- ``dropout_vs_noise``: dropout rows against noise rows at the same rank of their grids (zero-shot grids are
  matched by rank, as the paper's are); rank 0 is the clean pass for both when the grids start at 0;
- ``none_dropout_noise`` (three classes, the methods' none / dropout / noise probe): those two against the clean
  rows of the same trials, at every rank where both strengths are above 0 and the clean pass was captured (the
  localization grids; zero-shot grids that start above 0 have no clean rows). One probe that must tell whether
  and how the activations were perturbed; its AUROC is the macro one-vs-rest, without an interval.
Strength 0 is kept everywhere as the baseline where nothing can be decoded. Each set is probed at every captured
layer and at its sites (``which_sentence`` at the answer position only: the span sites read the perturbed sentence's
own tokens, so there the label is also the span's position, decodable with nothing perturbed) with a scikit-learn
logistic regression (standardised on training folds only) in stratified folds grouped by sentence, so that no
sentence is on both sides of a split (the reference code's leak). Baselines on the same folds: the activation norm
alone (dropout rescales survivors and noise adds variance, so the norm is a shortcut a linear probe could ride), and
labels shuffled within the design (label_permutations.null_labels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.base import clone
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from statsmodels.stats.proportion import proportion_confint

from .activations import CLEAN, SITES
from .label_permutations import null_labels
from .vocabulary import PERTURBATIONS, derive_seed

CONDITION_COLUMNS = ("experiment", "task", "perturbation", "strength", "level", "dropout_strength", "noise_strength")


@dataclass(frozen=True)
class Dataset:
    """One labelled set: rows of the activation arrays, labels (0/1, or 0..K-1), groups (sentences), each row's trial and base
    trial ([rows, 2], the finer units of the design), its condition and the sites where the labels mean what they
    say."""

    condition: dict
    rows: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    units: np.ndarray
    sites: tuple[str, ...] = SITES

    @property
    def design(self) -> list[np.ndarray]:
        """Each row's units from the finest to the coarsest (trial, base trial, sentence), as null_labels takes them."""
        return [*self.units.T, self.groups]


TRIAL_COLUMNS = ("trial_id", "perturbation", "strength", "target", "sentence_id", "base_id")  # what the sets read


def join(keys: dict, trials: pd.DataFrame) -> pd.DataFrame:
    """Per captured row, its trial-table columns: trial rows keyed like the capture, clean rows once."""
    table = trials.assign(
        perturbation=trials.perturbation.where(trials.strength > 0, CLEAN), strength=trials.strength.round(6)
    ).drop_duplicates(["trial_id", "perturbation", "strength"])
    captured = pd.DataFrame({"trial_id": keys["trial_id"], "perturbation": keys["perturbation"],
                             "strength": np.round(keys["strength"], 6), "row": np.arange(len(keys["trial_id"]))})
    merged = captured.merge(table, on=["trial_id", "perturbation", "strength"], how="left", validate="one_to_one")
    if merged.sentence_id.isna().any():
        raise ValueError("captured rows without a row in the trial table: activations and results are out of sync")
    return merged


def _at(meta: pd.DataFrame, kind: str, strength: float) -> pd.DataFrame:
    return meta[meta.perturbation == CLEAN] if strength == 0 else meta[(meta.perturbation == kind) & (meta.strength == strength)]


def _strengths(meta: pd.DataFrame, kind: str) -> list[float]:
    values = sorted(meta.strength[meta.perturbation == kind].unique())
    return ([0.0] if (meta.perturbation == CLEAN).any() else []) + values


def _make(condition, parts: list[tuple[pd.DataFrame, int]], sites: tuple[str, ...] = SITES) -> Dataset:
    frame = pd.concat([part.assign(label=label) for part, label in parts], ignore_index=True)
    return Dataset(condition, frame.row.to_numpy(), frame.label.to_numpy(), frame.sentence_id.astype(str).to_numpy(),
                   frame[["trial_id", "base_id"]].astype(str).to_numpy(), sites)


def datasets(meta: pd.DataFrame, experiment: str, letters: tuple[str, str] = ("A", "B")) -> list[Dataset]:
    """Every labelled set an experiment's captured rows support."""
    found = []
    clean = meta[meta.perturbation == CLEAN]
    ranks = {kind: _strengths(meta, kind) for kind in PERTURBATIONS}
    for kind in PERTURBATIONS:
        for level, strength in enumerate(ranks[kind]):
            condition = {"experiment": experiment, "perturbation": kind, "strength": strength, "level": level,
                         f"{kind}_strength": strength}
            rows = _at(meta, kind, strength)
            if len(clean):
                found.append(_make({**condition, "task": "perturbed"},
                                   [(rows, 1), (clean[clean.trial_id.isin(rows.trial_id)], 0)]))
            if experiment == "localization":
                found.append(_make({**condition, "task": "which_sentence"},
                                   [(rows[rows.target == letters[0]], 0), (rows[rows.target == letters[1]], 1)],
                                   sites=("answer",)))
    for level in range(min(len(ranks["dropout"]), len(ranks["noise"]))):
        dropout, noise = ranks["dropout"][level], ranks["noise"][level]
        condition = {"experiment": experiment, "task": "dropout_vs_noise", "perturbation": "matched", "level": level,
                     "dropout_strength": dropout, "noise_strength": noise}
        found.append(_make(condition, [(_at(meta, "dropout", dropout), 0), (_at(meta, "noise", noise), 1)]))
        if len(clean) and dropout > 0 and noise > 0:
            perturbed = [_at(meta, "dropout", dropout), _at(meta, "noise", noise)]
            trials = pd.concat(perturbed).trial_id
            found.append(_make({**condition, "task": "none_dropout_noise"},
                               [(clean[clean.trial_id.isin(trials)], 0), (perturbed[0], 1), (perturbed[1], 2)]))
    classes = {"none_dropout_noise": 3}
    return [d for d in found
            if len(np.unique(d.labels)) == classes.get(d.condition["task"], 2) and len(np.unique(d.groups)) >= 2]


def probe(C: float) -> object:
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000))


def fold_ids(y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each row's test fold: stratified by label, grouped by sentence (no sentence on both sides of a split). Tiny
    sets get fewer folds (no more than sentences, nor than the larger class has rows)."""
    splits = max(2, min(folds, len(np.unique(groups)), np.bincount(y).max()))
    cv = StratifiedGroupKFold(n_splits=splits, shuffle=True, random_state=seed % 2**32)
    fold = np.empty(len(y), dtype=int)
    for i, (_, test) in enumerate(cv.split(np.zeros((len(y), 1)), y, groups)):
        fold[test] = i
    return fold


def out_of_fold(estimator, X: np.ndarray, y: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """P(y = 1) for every row from a model fitted on the other folds (`fold_ids`); with labels 0..K-1, K > 2,
    [rows, K] class probabilities (a class a training fold lacks gets 0). A training fold with one class only
    predicts its class prior."""
    classes = y.max() + 1
    proba = np.zeros((len(y), classes))
    for i in np.unique(fold):
        train, test = fold != i, fold == i
        model = estimator if len(np.unique(y[train])) > 1 else DummyClassifier(strategy="prior")
        fitted = clone(model).fit(X[train], y[train])
        proba[np.ix_(test, fitted.classes_)] = fitted.predict_proba(X[test])
    return proba[:, 1] if classes == 2 else proba


def correct(y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Whether each row's most probable class is its label (P(y = 1) > 1/2 for two classes)."""
    return (proba > 0.5) == y if proba.ndim == 1 else proba.argmax(1) == y


def cross_validated_interval(estimate: float, per_fold: list[float], sentences: int) -> tuple[float, float]:
    """95% interval of a cross-validated score from its folds' scores: Nadeau & Bengio's (2003, Machine Learning
    52:239) corrected resampled t, variance (1/J + n_test/n_train) s^2 with s^2 the J scored folds' variance and
    n_test/n_train = 1/(K - 1) for K folds, t on J - 1 df. The folds' models share most of their training rows, so
    their scores vary less than independent ones would; the n_test/n_train term puts that back. Folds group
    sentences, so the folds' spread carries the sentences' own. Never narrower than Wilson's interval counting
    each of the `sentences` once (a score, read as a proportion): three folds' spread can be small by chance, and
    where every fold scores the same it says nothing."""
    wilson = proportion_confint(estimate * sentences, sentences, method="wilson")
    scored = np.asarray([v for v in per_fold if np.isfinite(v)])
    if len(scored) < 2:
        return wilson
    variance = (1 / len(scored) + 1 / (len(per_fold) - 1)) * scored.var(ddof=1)
    half = stats.t.ppf(0.975, len(scored) - 1) * np.sqrt(variance)
    return min(max(0.0, estimate - half), wilson[0]), max(min(1.0, estimate + half), wilson[1])


def scores(y: np.ndarray, proba: np.ndarray, fold: np.ndarray, groups: np.ndarray) -> dict:
    """Accuracy next to the majority class's share (what always answering the larger class scores), AUROC, each
    with its 95% interval from the folds' scores (`cross_validated_interval`), and the cross-entropy bound
    I(T;Y) >= H(Y) - CE in bits (`groups`: the rows' sentences). Three or more classes (proba [rows, K]): accuracy
    of the most probable class, the macro one-vs-rest AUROC without an interval."""
    hits = correct(y, proba)
    folds, sentences = np.unique(fold), len(np.unique(groups))
    low, high = cross_validated_interval(hits.mean(), [hits[fold == i].mean() for i in folds], sentences)
    counts = np.bincount(y, minlength=2)
    if proba.ndim == 1:
        auroc = roc_auc_score(y, proba)
        per_fold = [roc_auc_score(y[fold == i], proba[fold == i]) if len(np.unique(y[fold == i])) == 2 else np.nan
                    for i in folds]
        auc_low, auc_high = cross_validated_interval(auroc, per_fold, sentences)
        clipped = np.clip(proba, 1e-6, 1 - 1e-6)
    else:
        auroc, auc_low, auc_high = roc_auc_score(y, proba, multi_class="ovr", average="macro"), np.nan, np.nan
        clipped = np.clip(proba, 1e-6, None) / np.clip(proba, 1e-6, None).sum(1, keepdims=True)
    entropy = stats.entropy(counts, base=2)
    cross_entropy = log_loss(y, clipped, labels=np.arange(len(counts))) / np.log(2)
    return {"n": len(y), "folds": len(folds), "accuracy": hits.mean(), "accuracy_low": low, "accuracy_high": high,
            "majority_accuracy": counts.max() / len(y), "auroc": auroc, "auroc_low": auc_low, "auroc_high": auc_high,
            "label_entropy_bits": entropy, "cross_entropy_bits": cross_entropy,
            "mi_lower_bound_bits": entropy - cross_entropy}


def run(sites: dict[str, np.ndarray], layers: np.ndarray, sets: list[Dataset], folds: int, C: float, seed: int) -> pd.DataFrame:
    """Probe every set at every site and layer with the linear probe and both baselines."""
    out = []
    for dataset in sets:
        y, groups = dataset.labels, dataset.groups
        key = derive_seed(seed, "probes", *sorted(dataset.condition.items()))
        shuffled = null_labels(y, dataset.design, 1, key)[:, 0]  # as the design could have drawn them
        fold, shuffled_fold = fold_ids(y, groups, folds, key), fold_ids(shuffled, groups, folds, key)
        n_groups = len(np.unique(groups))
        for site in dataset.sites:
            for slot, layer in enumerate(layers):
                X = sites[site][dataset.rows, slot]
                inputs = {"linear": (X, y, fold), "norm": (np.linalg.norm(X, axis=1, keepdims=True), y, fold),
                          "shuffled": (X, shuffled, shuffled_fold)}
                for features, (values, labels, split) in inputs.items():
                    proba = out_of_fold(probe(C), values, labels, split)
                    out.append({**dataset.condition, "site": site, "layer": int(layer), "features": features,
                                "n_groups": n_groups, **scores(labels, proba, split, groups)})
    table = pd.DataFrame(out)
    columns = [*CONDITION_COLUMNS, "site", "layer", "features"]
    return table.reindex(columns=[*columns, *[c for c in table if c not in columns]])


VERBAL = {"localization": "which_sentence", "zero_shot": "dropout_vs_noise"}


def represented_vs_reported(probes: pd.DataFrame, trials: dict[str, pd.DataFrame], rule: str) -> pd.DataFrame:
    """Per condition: the answer-position probe's accuracy next to the model's verbal accuracy on the same task,
    with their correlation across one experiment's conditions (two tasks' accuracies on one scale would say
    nothing about either).

    The probe layer is chosen once per experiment (the best mean accuracy over its conditions), not per
    condition, so that strength 0 does not get the optimistic maximum of many chance-level probes. The clean pass
    is one point: localization's dropout and noise curves share their strength-0 trials, so the second would
    count them twice.
    """
    rows = []
    for experiment, task in VERBAL.items():
        if experiment not in trials:
            continue
        answer = probes[(probes.experiment == experiment) & (probes.task == task) & (probes.site == "answer")
                        & (probes.features == "linear")]
        if answer.empty:
            continue
        layer = answer.groupby("layer").accuracy.mean().idxmax()
        frame = trials[experiment]
        clean_seen = False
        for condition in answer[answer.layer == layer].itertuples():
            if task == "which_sentence" and condition.strength == 0:
                if clean_seen:
                    continue
                clean_seen = True
            if task == "dropout_vs_noise":
                mask = ((frame.perturbation == "dropout") & (frame.strength == condition.dropout_strength)) | (
                    (frame.perturbation == "noise") & (frame.strength == condition.noise_strength))
            else:
                mask = (frame.perturbation == condition.perturbation) & (frame.strength == condition.strength)
            verbal = frame.loc[mask, f"correct_{rule}"].astype(bool)
            if verbal.empty:
                continue
            rows.append({**{c: getattr(condition, c) for c in CONDITION_COLUMNS}, "layer": layer,
                         "probe_accuracy": condition.accuracy, "probe_low": condition.accuracy_low,
                         "probe_high": condition.accuracy_high, "verbal_accuracy": verbal.mean(), "verbal_n": len(verbal)})
    table = pd.DataFrame(rows, columns=[*CONDITION_COLUMNS, "layer", "probe_accuracy", "probe_low", "probe_high",
                                        "verbal_accuracy", "verbal_n"])
    by_experiment = {experiment: correlation(part) for experiment, part in table.groupby("experiment")}
    return table.assign(**{name: table.experiment.map(lambda e, name=name: by_experiment[e][name])
                           for name in CORRELATIONS})


CORRELATIONS = ("pearson_r", "spearman_rho")


def correlation(table: pd.DataFrame) -> dict:
    """Pearson and Spearman correlation across conditions (NaN when fewer than three or no variation). No p-values:
    every condition runs on the same trials (common random numbers) and both accuracies move with strength, so
    the conditions are not independent draws and the textbook tests do not hold; descriptive only."""
    if len(table) < 3 or table.probe_accuracy.nunique() < 2 or table.verbal_accuracy.nunique() < 2:
        return dict.fromkeys(CORRELATIONS, np.nan)
    return {"pearson_r": stats.pearsonr(table.probe_accuracy, table.verbal_accuracy).statistic,
            "spearman_rho": stats.spearmanr(table.probe_accuracy, table.verbal_accuracy).statistic}
