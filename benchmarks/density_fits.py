"""What one density-dependence fit costs at the paper's scale, with and without its permutation test.

    python benchmarks/density_fits.py                       # a localization fit: 6,000 base trials x 49 strengths
    python benchmarks/density_fits.py --base-trials 5000 --strengths 120 --permutations 1000   # few-shot sized

Builds a synthetic per-trial table of the shape `density_dependence.fit_density` gets from a paper run (sentences
drawn from `--per-bucket` per length bucket, each base trial under every strength, the option position random, no
density effect), then times the fit without permutations and with `--permutations` density shuffles (the fastest of
`--repeats`), and prints both and the cost per shuffle. The paper config runs 4 bandwidth scales of about 5 such
fits per model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dropnoise.density_dependence import fit_density  # noqa: E402

BUCKETS = (3, 7, 11, 15, 19, 23)


def synthetic_trials(base_trials: int, strengths: int, per_bucket: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    bucket = rng.choice(BUCKETS, base_trials)
    drawn = rng.integers(0, per_bucket, base_trials)
    sentence = [f"t{b:02d}-{s:05d}" for b, s in zip(bucket, drawn)]
    base = pd.DataFrame({"sentence_id": sentence, "n_tokens": bucket, "position": rng.choice(["A", "B"], base_trials)})
    per_sentence = base.drop_duplicates("sentence_id").set_index("sentence_id")
    density = pd.Series(rng.normal(-50, 5, len(per_sentence)), per_sentence.index)
    nll = pd.Series(rng.normal(4, 1, len(per_sentence)), per_sentence.index)
    trials = base.loc[base.index.repeat(strengths)].reset_index(drop=True)
    trials["strength"] = np.tile(np.linspace(0.02, 0.98, strengths), base_trials)
    logit = -1 + 3 * trials.strength + 0.3 * (trials.position == "A")
    return trials.assign(perturbation="dropout", log_density=trials.sentence_id.map(density),
                         clean_nll=trials.sentence_id.map(nll),
                         correct=(rng.random(len(trials)) < 1 / (1 + np.exp(-logit))).astype(int))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-trials", type=int, default=6000, help="base trials (the paper: 1000 per length)")
    parser.add_argument("--strengths", type=int, default=49, help="non-zero strengths each base trial runs under")
    parser.add_argument("--per-bucket", type=int, default=2000, help="pool sentences per length bucket")
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="timings each way; the fastest is printed")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    trials = synthetic_trials(args.base_trials, args.strengths, args.per_bucket, args.seed)
    print(f"{len(trials)} trials of {trials.sentence_id.nunique()} sentences")
    timings = {}
    for permutations in (0, args.permutations):
        for _ in range(args.repeats):
            start = time.perf_counter()
            fit = fit_density(trials, "log_density", permutations, args.seed)
            timings[permutations] = min(timings.get(permutations, np.inf), time.perf_counter() - start)
        print(f"  fit with {permutations:5d} permutations: {timings[permutations]:7.2f} s  (status {fit['status']})")
    extra = timings[args.permutations] - timings[0]
    print(f"  permutation test: {extra:.2f} s, {extra / max(args.permutations, 1) * 1e3:.2f} ms per shuffle")


if __name__ == "__main__":
    main()
