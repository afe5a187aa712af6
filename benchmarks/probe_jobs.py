"""Time and peak memory of the probes and mutual_information jobs on a capture of a paper model's size.

    python benchmarks/probe_jobs.py make /tmp/probe_capture                 # Qwen3-32B's shape: 64 layers, d = 5120
    python benchmarks/probe_jobs.py probes /tmp/probe_capture
    python benchmarks/probe_jobs.py mutual_information /tmp/probe_capture   # reads probes.csv: run probes first

`make` writes what the paper config's capture would (config.yaml `probes:`; localization and zero-shot, 400 trials
each, 6 strengths per perturbation with 0, every 4th layer and the last: 17 of 64) as one activation file and one
trial table per experiment, with synthetic activations: each sentence a random point per site and layer, each
perturbation a shift along its own direction growing with strength, plus row noise. Zero-shot trials are a seeded
sample of the renderings of 1,000 base trials per class under the paper's 8 aliases (single class), as the capture
samples them. The other steps run the rule's own library call (`pipeline.probe_tables`,
`pipeline.mutual_information`, one BLAS thread as in the rules) and print its wall time and the process's peak
resident memory next to the activation files' size: what the profile's runtimes and `activation_mem_mb` are set from.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dropnoise import activations, capture, pipeline  # noqa: E402
from dropnoise.prompts import load_template  # noqa: E402
from dropnoise.tasks import PLACEHOLDERS  # noqa: E402

EXPERIMENTS = ("localization", "zero_shot")
ALIASES = 8  # the paper's zero-shot aliases
STRENGTHS = {"dropout": (0.1, 0.3, 0.5, 0.7, 0.9), "noise": (0.5, 1.0, 2.0, 4.0, 8.0)}


def trial_table(experiment: str, trials: int, letters: tuple[str, str], rng: np.random.Generator) -> pd.DataFrame:
    """The captured trials' rows of a trial table: every strength of the trial's perturbations, 0 included."""
    if experiment == "localization":  # one sentence per trial, both perturbations, the answer either letter
        picked = [(t, f"s{t}", f"s{t}", kind) for t in range(trials) for kind in STRENGTHS]
    else:  # single class: renderings of base trials under every alias; the capture samples renderings
        renderings = [(f"{kind}-{b}", f"s{b}", kind) for kind in STRENGTHS for b in range(1000) for _ in range(ALIASES)]
        picked = [(i, *renderings[i]) for i in sorted(random.Random(0).sample(range(len(renderings)), trials))]
    targets = {trial: letters[rng.integers(2)] if experiment == "localization" else letters[0]
               for trial, *_ in picked}
    rows = [{"trial_id": trial, "base_id": base, "sentence_id": sentence, "perturbation": kind, "strength": s,
             "target": targets[trial], "correct_primary": bool(rng.integers(2))}
            for trial, base, sentence, kind in picked for s in (0.0, *STRENGTHS[kind])]
    return pd.DataFrame(rows).assign(model="qwen32b", experiment=experiment)


def captured_rows(trials: pd.DataFrame, layers: int, hidden: int, rng: np.random.Generator) -> dict:
    """(trial_id, perturbation, strength) -> [sites, layers, hidden] float16, the clean pass once per trial."""
    directions = {kind: rng.standard_normal((len(activations.SITES), layers, hidden), np.float32) for kind in STRENGTHS}
    scale = {kind: 1.0 / max(values) for kind, values in STRENGTHS.items()}
    rows = {}
    for trial, group in trials.groupby("trial_id"):
        sentence = rng.standard_normal((len(activations.SITES), layers, hidden), np.float32)
        for kind, strength in zip(group.perturbation, group.strength):
            key = (trial, activations.CLEAN, 0.0) if strength == 0 else (trial, kind, strength)
            if key not in rows:
                noise = 0.5 * rng.standard_normal(sentence.shape, np.float32)
                rows[key] = (sentence + 0.1 * strength * scale[kind] * directions[kind] + noise).astype(np.float16)
    return rows


def make(folder: Path, model_config: dict, config: dict, trials: int | None) -> None:
    settings = config["probes"]
    layers = capture.layer_indices(model_config["num_hidden_layers"], settings["layer_stride"])
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for experiment in EXPERIMENTS:
        letters = load_template(ROOT / config["experiments"][experiment]["template"], PLACEHOLDERS[experiment]).letters
        table = trial_table(experiment, trials or settings["trials"], letters, rng)
        table.to_csv(folder / f"{experiment}.csv", index=False)
        rows = captured_rows(table, len(layers), model_config["hidden_size"], rng)
        activations.write(folder / f"{experiment}.npz", rows, layers)
        print(f"{experiment}: {len(rows)} captured rows x {len(layers)} layers x {model_config['hidden_size']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["make", "probes", "mutual_information"])
    parser.add_argument("folder", type=Path, help="where the capture and the tables go")
    parser.add_argument("--config", type=Path, default=ROOT / "benchmarks/configs/qwen3-32b.json",
                        help="a paper model's architecture (its layer count and width)")
    parser.add_argument("--trials", type=int, help="captured trials per experiment (default: config.yaml's)")
    args = parser.parse_args()
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    start = time.perf_counter()
    templates = {e: str(ROOT / config["experiments"][e]["template"]) for e in EXPERIMENTS}
    files = {e: [str(args.folder / f"{e}.npz")] for e in EXPERIMENTS}
    trials = {e: str(args.folder / f"{e}.csv") for e in EXPERIMENTS}
    if args.step == "make":
        make(args.folder, json.loads(args.config.read_text()), config, args.trials)
    elif args.step == "probes":
        pipeline.setup_logging(None)
        pipeline.probe_tables({k: config["probes"][k] for k in ("folds", "C")}, config["seed"], templates, files,
                              trials, str(args.folder / "probes.csv"))
    else:
        pipeline.setup_logging(None)
        pipeline.mutual_information(config["probes"]["mutual_information"], config["seed"], templates, files, trials,
                                    str(args.folder / "probes.csv"), str(args.folder / "mutual_information.csv"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    size = sum(Path(f).stat().st_size for paths in files.values() for f in paths if Path(f).exists()) / 2**30
    print(f"{args.step}: {time.perf_counter() - start:.0f} s, peak memory {peak:.1f} GiB "
          f"(activation files: {size:.2f} GiB)")


if __name__ == "__main__":
    main()
