"""How often the probes' accuracy intervals call a probe better than chance, on simulated sets.

    python benchmarks/probe_intervals.py                 # 150 sets per separation, about 20 s on 2 cores
    python benchmarks/probe_intervals.py --sets 1000 --separation 0

Each set: --rows rows (sentences of two rows) x --dims dimensions, labels of pure noise plus a planted shift of
--separation along one random direction; the probe and folds of probes.csv (`probes.fold_ids`, `out_of_fold`).
Prints, per separation, the mean cross-validated accuracy and the share of sets whose 95% interval lies above 1/2:
with the folds' scores (`probes.scores`: Nadeau and Bengio's corrected resampled t) and with a Wilson interval that
takes the cross-fitted predictions as one classifier's. At separation 0 a one-sided 2.5% is due.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from statsmodels.stats.proportion import proportion_confint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dropnoise import probes  # noqa: E402


def above_chance(rng, sets: int, rows: int, dims: int, separation: float) -> tuple[float, float, float]:
    folds_test = wilson = 0
    accuracy = []
    for seed in range(sets):
        y = rng.integers(0, 2, rows)
        direction = rng.normal(size=dims)
        X = rng.normal(size=(rows, dims)) + separation * np.outer(y - 0.5, direction / np.linalg.norm(direction))
        groups = np.repeat(np.arange(rows // 2), 2)
        fold = probes.fold_ids(y, groups, 5, seed)
        result = probes.scores(y, probes.out_of_fold(probes.probe(1.0), X, y, fold), fold, groups)
        folds_test += result["accuracy_low"] > 0.5
        wilson += proportion_confint(round(result["accuracy"] * rows), rows, method="wilson")[0] > 0.5
        accuracy.append(result["accuracy"])
    return float(np.mean(accuracy)), folds_test / sets, wilson / sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, default=150)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--dims", type=int, default=256)
    parser.add_argument("--separation", type=float, nargs="+", default=[0.0, 1.0, 1.5, 2.0])
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"{args.sets} sets of {args.rows} rows x {args.dims} dimensions; share of 95% intervals above 1/2")
    for separation in args.separation:
        mean, folds_test, wilson = above_chance(rng, args.sets, args.rows, args.dims, separation)
        print(f"separation {separation:g}: mean accuracy {mean:.3f}; folds' scores {folds_test:.3f}, "
              f"Wilson on the pooled predictions {wilson:.3f}")


if __name__ == "__main__":
    main()
