"""Whether a logistic model's maximum-likelihood estimate exists: (quasi-)complete separation, by linear programming.

statsmodels warns only when every fitted probability is 0 or 1. Under quasi-complete separation (one answer
position, sentence length or condition where every trial is correct) its IRLS stops at a large finite coefficient once
the deviance stops changing, the fit says it converged, and the cluster-robust standard error, which those trials no
longer feed, can come out small: an odds ratio of 1e10 with p = 1e-60. The MLE exists iff no direction b != 0 has
(2y - 1) x_i'b >= 0 for every trial (Albert & Anderson 1984); Konis (2007)'s linear program, as R's detectseparation
solves it, finds one if there is any.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import linprog

TOLERANCE = 1e-6  # of a row's margin a'b, with the columns scaled to [-1, 1] and b in the unit box


@dataclass(frozen=True)
class Separation:
    """A separating direction: the design columns it moves along, and the trials it fits as certain."""

    terms: tuple[str, ...]
    certain: int
    trials: int

    def involves(self, terms) -> bool:
        return bool(set(self.terms) & set(terms))

    def describe(self) -> str:
        kind = "complete" if self.certain == self.trials else "quasi-complete"
        return (f"{kind} separation along {', '.join(self.terms)} "
                f"({self.certain} of {self.trials} trials fitted as certain)")


def separation(X: pd.DataFrame, y) -> Separation | None:
    """The separation of binary outcomes `y` by design `X` (one column per coefficient), or None where the MLE
    exists. Identical design rows are one constraint, so a factor design costs a few rows however many trials."""
    outcome = np.asarray(y, dtype=float).ravel()
    values = X.to_numpy(dtype=float)
    scale = np.abs(values).max(axis=0)
    signed = np.where(outcome[:, None] == 1, 1.0, -1.0) * values / np.where(scale > 0, scale, 1.0)
    rows, counts = np.unique(signed, axis=0, return_counts=True)
    # maximise the summed margins subject to every margin >= 0: positive iff some direction separates. A vertex may
    # leave some separable rows at margin 0, so repeat over the rows still at 0: the directions' sum separates all.
    direction, certain = np.zeros(rows.shape[1]), np.zeros(len(rows), dtype=bool)
    while True:
        found = linprog(-(np.where(certain, 0, counts) @ rows), A_ub=-rows, b_ub=np.zeros(len(rows)), bounds=(-1, 1),
                        method="highs")
        if found.status != 0:
            raise RuntimeError(f"the separation check's linear program failed: {found.message}")
        new = (rows @ found.x > TOLERANCE) & ~certain
        if not new.any():
            break
        direction, certain = direction + found.x, certain | new
    if not certain.any():
        return None
    terms = tuple(name for name, b in zip(X.columns, direction) if abs(b) > TOLERANCE)
    return Separation(terms, int(counts[certain].sum()), len(outcome))
