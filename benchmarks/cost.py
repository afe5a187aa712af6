"""Forward passes, FLOPs and estimated GPU-hours of the paper config (config.yaml) per model, and how prompt
length (so cost) grows with k and sentence length. Offline: prompt lengths are measured on trials rendered with
SmolLM2's tokenizer and chat template (resources/models/smollm2-135m); parameter counts come from the paper
architectures in benchmarks/configs/ (built on the meta device, no memory used).

    python benchmarks/cost.py [--peak-tflops 989] [--utilisation 0.4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dropnoise import benchmark, cost, engine, prompts, sentences, tasks  # noqa: E402
from dropnoise import config as dnconfig  # noqa: E402
from dropnoise.labels import load_aliases  # noqa: E402

ARCHITECTURES = {"llama8b": "llama-3.1-8b", "qwen14b": "qwen3-14b", "qwen32b": "qwen3-32b", "olmo32b": "olmo-3.1-32b"}
SAMPLES = 12


def lengths(trials: list[dict]) -> tuple[float, float]:
    """Mean prompt tokens and mean suffix tokens (from the first perturbable span on)."""
    return (statistics.mean(t["n_prompt_tokens"] for t in trials),
            statistics.mean(t["n_prompt_tokens"] - engine.split_point(t) for t in trials))


def sample_trials(config: dict, model: str, experiment: str, tokenizer, pool, **override) -> list[dict]:
    settings = {**dnconfig.settings(config, model, experiment), "samples_per_condition": SAMPLES, **override}
    if experiment in dnconfig.GRID_EXPERIMENTS:
        settings["aliases"] = ["dropout_noise"]
    template = prompts.load_template(settings["template"], tasks.PLACEHOLDERS[experiment])
    aliases = load_aliases(config["aliases"])
    return tasks.build_trials(experiment, tokenizer, template, settings, pool, config["seed"], aliases)


def parameters(model: str) -> tuple[int, int]:
    with torch.device("meta"):
        built = benchmark.random_model(ROOT / "benchmarks/configs" / f"{ARCHITECTURES[model]}.json", "meta", torch.bfloat16)
    text = built.config.get_text_config(decoder=True)
    return benchmark.matmul_parameters(built), text.hidden_size * text.vocab_size


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="GPU dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("--utilisation", type=float, default=0.4, help="assumed share of the peak reached")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "resources/models/smollm2-135m")
    buckets = [3, 7, 11, 15, 19, 23]
    pool = sentences.bucket(sentences.Grammar(ROOT / "data/synthetic_grammar.yaml").sentences(seed=0), tokenizer,
                            buckets, 40, 200_000)
    rate = args.peak_tflops * 1e12 * args.utilisation
    reference_model = config["run"]["models"][0]
    shape = {e: lengths(sample_trials(config, reference_model, e, tokenizer, pool)) for e in config["run"]["experiments"]}
    print(f"Prompt tokens (SmolLM2 tokenizer, {SAMPLES} trials per cell): mean prompt / mean suffix from the first span")
    for experiment, (prompt, suffix) in shape.items():
        print(f"  {experiment}: {prompt:.0f} / {suffix:.0f}")
    print("\nGrowth: few-shot prompt tokens per k (15-token sentences); localization per sentence length")
    print("  k: " + ", ".join(f"{k}: {lengths(sample_trials(config, reference_model, 'few_shot', tokenizer, pool, k=[k]))[0]:.0f}"
                              for k in (1, 3, 5, 7, 9)))
    print("  length: " + ", ".join(
        f"{n}: {lengths(sample_trials(config, reference_model, 'localization', tokenizer, pool, buckets=[n]))[0]:.0f}"
        for n in buckets))
    print(f"\nGPU-hours at {args.peak_tflops:g} TFLOP/s x {args.utilisation:.0%} (assumed, not measured); "
          "FLOPs = 2 x weights x tokens")
    print("| model | experiment | shard_by | trials | forward passes | reference PFLOP | engine PFLOP, by conditions "
          "| engine PFLOP, by trials | GPU-h reference | GPU-h engine, by conditions | GPU-h engine, by trials |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    totals = {}
    for model in config["run"]["models"]:
        matmul, head = parameters(model)
        for experiment, (prompt, suffix) in shape.items():
            counts = {by: cost.passes(config, model, experiment, by) for by in ("conditions", "trials")}
            row = [cost.flops(counts["conditions"], prompt, suffix, matmul, head)["reference"],
                   *(cost.flops(counts[by], prompt, suffix, matmul, head)["engine"] for by in counts)]
            passes = counts["trials"]
            totals[model] = [a + b for a, b in zip(totals.get(model, [0, 0, 0, 0]), [passes["passes"], *row])]
            print(f"| {model} | {experiment} | {dnconfig.shard_by(config, model, experiment)} | {passes['trials']:,} | "
                  f"{passes['passes']:,} | " + " | ".join(f"{f / 1e15:,.0f}" for f in row) + " | "
                  + " | ".join(f"{f / rate / 3600:,.1f}" for f in row) + " |")
    for model, (count, *row) in totals.items():
        print(f"| **{model}** | all | | | {count:,} | " + " | ".join(f"{f / 1e15:,.0f}" for f in row) + " | "
              + " | ".join(f"{f / rate / 3600:,.1f}" for f in row) + " |")


if __name__ == "__main__":
    main()
