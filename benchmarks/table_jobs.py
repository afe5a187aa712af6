"""Time and peak memory of the table jobs on a paper-scale few-shot table (the largest: 9.6M rows per model).

    python benchmarks/table_jobs.py make /tmp/few_shot_shards        # 121 synthetic shards, 3.0 GiB (3 minutes)
    python benchmarks/table_jobs.py aggregate /tmp/few_shot_shards   # then summarize, condition_tests, ...

`make` writes shards shaped like the paper config's few-shot jobs (41 base trials each, 8 aliases x 2 label
conditions x 121 grid cells per base trial, the columns of a real run, random scores). Every other step runs the
rule's own library call on them (`aggregate` writes <folder>/few_shot.csv, which the later steps read, and reads the
model folder's marker from resources/models/smollm2-135m, which `make install` prepares) and prints its
wall time and the process's peak resident memory: what `table_mem_mb` in workflow/rules/common.smk is sized from.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dropnoise import pipeline  # noqa: E402
from dropnoise.vocabulary import STATS_TABLES  # noqa: E402

ALIASES = [("none", "canonical"), ("x_y", "placeholder"), ("foo_bar", "placeholder"), ("masking_jitter", "synonym"),
           ("rotation_permutation", "perturbation_like"), ("scaling_translation", "perturbation_like"),
           ("vanilla_chocolate", "unrelated"), ("weak_strong", "unrelated")]


def shard(index: int, base_trials: int, rng: np.random.Generator) -> pd.DataFrame:
    """One few-shot job's rows: every base trial under every alias, label condition and dropout x noise cell."""
    base, alias, label, cell = (a.ravel() for a in np.meshgrid(
        np.arange(index * base_trials, (index + 1) * base_trials), np.arange(len(ALIASES)), np.arange(2),
        np.arange(121), indexing="ij"))
    n = len(base)
    k = np.array([1, 3, 5, 7, 9])[base % 5]
    test = np.where(base % 2 == 0, "dropout", "noise")
    dropout, noise = np.linspace(0, 0.5, 11)[cell // 11], np.linspace(0, 2.0, 11)[cell % 11]
    logit_a, logit_b = rng.normal(20, 3, (2, n))
    prob_a = rng.random(n)
    prob_b = (1 - prob_a) * rng.random(n)
    answer = rng.choice(["A", "B"], n)
    pred = np.where(logit_a > logit_b, "A", "B")
    names = np.array(ALIASES)
    return pd.DataFrame({
        "model": "qwen32b", "experiment": "few_shot", "trial_id": base * 16 + alias * 2 + label,
        "base_id": [f"k{a}-{b}" for a, b in zip(k, base)], "template_variant": [f"v{b % 20:02d}" for b in base],
        "sentence_id": [f"t15-{b * 7 % 2000:05d}" for b in base], "sentence_tokens": 15, "n_perturbed_tokens": 15,
        "n_prompt_tokens": 280 + 176 * (k // 2), "target": test, "answer": answer, "alias": names[alias, 0],
        "alias_group": names[alias, 1], "k": k, "label_condition": np.where(label == 0, "correct", "swapped"),
        "perturbation": test, "strength": np.where(test == "dropout", dropout, noise), "dropout_strength": dropout,
        "noise_strength": noise, "seed": 42, "logit_A": logit_a, "prob_A": prob_a, "sum_prob_A": prob_a,
        "logit_B": logit_b, "prob_B": prob_b, "sum_prob_B": prob_b, "pred_primary": pred,
        "correct_primary": pred == answer, "pred_aggregate": pred, "correct_aggregate": pred == answer,
        "pred_argmax": pred, "correct_argmax": pred == answer, "logit_diff": logit_a - logit_b,
        "log_prob_correct": np.log(np.where(answer == "A", prob_a, prob_b) + 1e-9), "argmax_token": " " + pred,
        "entropy": 3 * rng.random(n),
    })


def main():
    tables = [table for table, experiments in STATS_TABLES.items() if "few_shot" in experiments]
    steps = ["make", "aggregate", "summarize", *tables]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=steps)
    parser.add_argument("folder", type=Path, help="where the shards and the aggregated table go")
    parser.add_argument("--shards", type=int, default=121, help="few-shot jobs (the paper config: 121)")
    parser.add_argument("--base-trials", type=int, default=41, help="base trials per job (the paper config: 41 or 42)")
    args = parser.parse_args()
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    table = args.folder / "few_shot.csv"
    start = time.perf_counter()
    if args.step == "make":
        args.folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for index in range(args.shards):
            shard(index, args.base_trials, rng).to_csv(args.folder / f"shard_{index:03d}.csv", index=False)
    elif args.step == "aggregate":
        pipeline.aggregate(sorted(map(str, args.folder.glob("shard_*.csv"))), "qwen32b",
                           str(ROOT / "resources/models/smollm2-135m"), "few_shot", config, str(table),
                           str(args.folder / "few_shot.provenance.json"))
    elif args.step == "summarize":
        pipeline.summarize(str(table), "few_shot", str(args.folder / "few_shot.summary.csv"))
    else:
        pipeline.stats_table(args.step, [str(table)], str(ROOT / config["aliases"]), config["stats"],
                             str(args.folder / f"{args.step}.csv"), str(args.folder / f"{args.step}.tex"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    size = table.stat().st_size / 2**30 if table.exists() else float("nan")
    print(f"{args.step}: {time.perf_counter() - start:.0f} s, peak memory {peak:.1f} GiB "
          f"(few_shot.csv: {size:.2f} GiB)")


if __name__ == "__main__":
    main()
