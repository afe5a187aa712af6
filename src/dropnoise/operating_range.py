"""Per-model strength grids for zero-shot and few-shot: the paper's "operating range", or our rule for `auto`.

The paper picks, per model, a lower bound where localization shows the perturbation is perceived and an upper
bound where the topic-comprehension control falls below 95%, then sweeps 11 evenly spaced strengths between them.
Its numeric rule is not published; ours, per perturbation (pooled "all" rows of the two summaries):

- lower = the weakest strength > 0 from which localization accuracy (primary rule) is above chance (0.5, the
  design's: the target position is random) at that strength and every stronger one tried, by one-sided exact
  binomial tests at level `alpha`, Bonferroni-corrected over the strengths tried (so a clean pass that happens to
  sit at 0.51, repeated at every tiny strength, is not "detected"). The perturbed sentence's position is drawn per
  trial, so where nothing is detected every trial is right with probability 1/2 whatever its sentence: the test is
  exact without clustering trials by sentence;
- upper = the strongest strength such that topic-control accuracy is >= `threshold` at it and at every weaker one.

Fallbacks, recorded in the grid's `notes` rather than guessed silently: no detected range -> lower = the weakest
strength > 0 tried; control below threshold already without perturbation (strength 0; the model cannot do the
control at all) -> upper = the strongest strength tried; control passing at 0 but failing at the weakest strength
> 0 -> upper = that weakest strength; an empty range (upper <= lower) -> [weakest, strongest] tried.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from .vocabulary import PERTURBATIONS


def _pooled(summary: pd.DataFrame, kind: str) -> pd.DataFrame:
    rows = summary[(summary.subset == "all") & (summary.perturbation == kind)]
    return rows.sort_values("strength")


def derive(localization: pd.DataFrame, control: pd.DataFrame, points: int, alpha: float, threshold: float) -> dict:
    grid = {"source": "auto", "notes": {}, "bounds": {}}
    for kind in PERTURBATIONS:
        notes = []
        loc = _pooled(localization, kind)
        perturbed = loc[loc.strength > 0]
        tried = perturbed.strength.tolist()
        if not tried:
            raise ValueError(f"grid: auto needs localization results at strengths > 0 for {kind}")
        level = alpha / len(tried)
        detected = [
            binomtest(int(round(row.accuracy_primary * row.n)), int(row.n), 0.5, alternative="greater").pvalue < level
            for row in perturbed.itertuples()
        ]
        from_here = [all(detected[i:]) for i in range(len(tried))]
        if any(from_here):
            lower = tried[from_here.index(True)]
        else:
            lower = min(tried)
            notes.append(f"no {kind} strength range was localized above chance (alpha={alpha}, Bonferroni); "
                         "lower bound = weakest tried")
        ctl = _pooled(control, kind)
        clean = ctl[ctl.strength == 0].accuracy_primary
        failing = ctl[ctl.accuracy_primary < threshold].strength
        passing = ctl[(ctl.strength > 0) & (ctl.strength < (failing.min() if len(failing) else np.inf))].strength
        if len(passing):
            upper = passing.max()
        elif len(clean) and clean.iloc[0] >= threshold:
            upper = min(tried)
            notes.append(f"topic-control accuracy drops below {threshold:.0%} at the weakest {kind} strength; "
                         "upper bound = weakest tried")
        else:
            upper = max(tried)
            notes.append(f"topic-control accuracy is below {threshold:.0%} even without perturbation, so it cannot "
                         f"bound {kind}; upper bound = strongest tried")
        if upper <= lower:
            notes.append(f"empty operating range (control bound {upper} <= detection bound {lower}); "
                         "using [weakest, strongest] tried")
            lower, upper = min(tried), max(tried)
        grid[kind] = [round(float(v), 6) for v in np.linspace(lower, upper, points)]
        grid["bounds"][kind] = [float(lower), float(upper)]
        grid["notes"][kind] = notes
    return grid
