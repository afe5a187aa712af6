"""Whether a logistic model's maximum-likelihood estimate exists: (quasi-)complete separation, by linear programming.

statsmodels warns only when every fitted probability is 0 or 1. Under quasi-complete separation (one answer
position, sentence length or condition where every trial is correct) its IRLS stops at a large finite coefficient once
the deviance stops changing, the fit says it converged, and the cluster-robust standard error, which those trials no
longer feed, can come out small: an odds ratio of 1e10 with p = 1e-50. The MLE of a full-rank design exists iff no
direction b gives every trial a margin (2y - 1) x_i'b >= 0 and some trial a positive one (Albert & Anderson 1984);
Konis (2007)'s linear program, as R's detectseparation solves it, finds one if there is any.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import linprog

TOLERANCE = 1e-6  # of a row's margin a'b, with the columns scaled to [-1, 1] and b in the unit box


@dataclass(frozen=True)
class Separation:
    """The trials a separating direction fits as certain, and the coefficients left without a finite estimate: those
    the other trials do not identify (a separated nuisance level leaves the rest of the model estimable)."""

    unidentified: tuple[str, ...]
    certain: int
    trials: int

    def involves(self, terms) -> bool:
        return bool(set(self.unidentified) & set(terms))

    def describe(self) -> str:
        kind = "complete" if self.certain == self.trials else "quasi-complete"
        return (f"{kind} separation: {self.certain} of {self.trials} trials fitted as certain, no finite estimate "
                f"for {', '.join(self.unidentified)}")


def separation(X: pd.DataFrame, y) -> Separation | None:
    """The separation of binary outcomes `y` by design `X` (one column per coefficient), or None where the MLE
    exists. Identical design rows are one constraint, so a factor design costs a few rows however many trials."""
    outcome = np.asarray(y, dtype=float).ravel()
    values = X.to_numpy(dtype=float)
    scale = np.abs(values).max(axis=0)
    values = values / np.where(scale > 0, scale, 1.0)
    signed = np.where(outcome[:, None] == 1, 1.0, -1.0) * values
    distinct = pd.DataFrame(signed).value_counts(sort=False)
    rows, counts = distinct.index.to_frame(index=False).to_numpy(dtype=float), distinct.to_numpy()
    # maximise the summed margins subject to every margin >= 0: positive iff some direction separates. A vertex may
    # leave some separable rows at margin 0, so repeat over the rows still at 0: the directions' sum separates all.
    certain = np.zeros(len(rows), dtype=bool)
    while True:
        found = linprog(-(np.where(certain, 0, counts) @ rows), A_ub=-rows, b_ub=np.zeros(len(rows)), bounds=(-1, 1),
                        method="highs")
        if found.status != 0:
            raise RuntimeError(f"the separation check's linear program failed: {found.message}")
        new = (rows @ found.x > TOLERANCE) & ~certain
        if not new.any():
            break
        certain |= new
    if not certain.any():
        return None
    # a coefficient is finite iff the uncertain trials identify it: its axis lies in the row space of their design
    reach = np.zeros(rows.shape[1])  # squared length of each axis's projection on that row space
    if not certain.all():
        _, singular, basis = np.linalg.svd(rows[~certain], full_matrices=False)
        rank = int((singular > singular[0] * max(rows.shape) * np.finfo(float).eps).sum())
        reach = (basis[:rank] ** 2).sum(axis=0)
    unidentified = tuple(name for name, r in zip(X.columns, reach) if r < 1 - 1e-8)
    return Separation(unidentified, int(counts[certain].sum()), len(outcome))
