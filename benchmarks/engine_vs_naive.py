"""The engine against the reference way of running, on the same trials in one process.

    python benchmarks/engine_vs_naive.py                                   # SmolLM2-135M on CPU (after the demo)
    python benchmarks/engine_vs_naive.py --device cuda --random-init --config benchmarks/configs/llama-3.1-8b.json

Prints, per experiment, trials (scored rows) per second both ways and their ratio, prompt tokens per second,
peak memory, whether every prediction agrees, and the share of the machine's measured matmul throughput that the
engine reaches. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dropnoise import benchmark, engine, prompts, sentences, tasks  # noqa: E402
from dropnoise.labels import load_aliases  # noqa: E402

SEED = 0


def arguments():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    benchmark.add_model_arguments(parser, ROOT)
    parser.add_argument("--experiments", nargs="+", default=["localization", "zero_shot"],
                        choices=["localization", "zero_shot"])
    parser.add_argument("--trials", type=int, default=12, help="base trials per experiment")
    parser.add_argument("--dropout", type=float, nargs="+", default=[0.0, 0.2, 0.5, 0.8])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.5, 2.0, 8.0])
    parser.add_argument("--aliases", nargs="+", default=["paper"],
                        help="zero-shot label aliases or alias groups (default: the paper's 8 zero-shot aliases)")
    parser.add_argument("--batch-size", default="auto", help="engine rows per pass, or auto")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads")
    parser.add_argument("--skip-naive", action="store_true", help="time the engine only (large GPU models)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time both ways this many times, alternating, and report medians (a shared machine's "
                             "speed drifts)")
    return parser.parse_args()


def workload(experiment: str, tokenizer, args):
    """Trials and conditions shaped like a shard: every condition of the grid on the same trials; zero-shot trials
    rendered under every alias (as the paper's zero-shot runs: each base trial under each of its 8 aliases)."""
    template = prompts.load_template(ROOT / f"data/prompts/{experiment}.yaml", tasks.PLACEHOLDERS[experiment])
    grammar = sentences.Grammar(ROOT / "data/synthetic_grammar.yaml")
    buckets = [7, 15, 23] if experiment == "localization" else [15]
    pool = sentences.bucket(grammar.sentences(seed=SEED), tokenizer, buckets, 50, 200_000)
    if experiment == "localization":
        trials = tasks.localization_trials(tokenizer, template, pool, buckets, -(-args.trials // len(buckets)), SEED)
        conditions = tasks.conditions({"dropout": args.dropout, "noise": args.noise})
    else:
        settings = {"bucket": 15, "mode": "single_class", "aliases": args.aliases,
                    "samples_per_condition": -(-args.trials // 2)}
        trials = tasks.zero_shot_trials(tokenizer, template, pool, load_aliases(ROOT / "data/aliases.yaml"), settings, SEED)
        conditions = [{"dropout": p} for p in args.dropout if p > 0] + [{"noise": s} for s in args.noise if s > 0]
    return trials, conditions, template.letters


def timed(device, function):
    benchmark.synchronize(device)
    with benchmark.PeakMemory(device) as memory:
        start = time.perf_counter()
        result = function()
        benchmark.synchronize(device)
        seconds = time.perf_counter() - start
    return result, seconds, memory.peak


def main():
    args = arguments()
    torch.set_num_threads(args.threads)
    model, tokenizer, name, dtype = benchmark.load(args)
    device = model.get_input_embeddings().weight.device
    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    peak = benchmark.matmul_flops(device, getattr(torch, dtype), 4096 if device.type == "cuda" else 1024)
    print(f"model {name}, {dtype} on {device} ({torch.get_num_threads()} threads), load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"measured {dtype} matmul throughput: {peak / 1e9:.1f} GFLOP/s")
    for experiment in args.experiments:
        trials, conditions, letters = workload(experiment, tokenizer, args)
        # warm-up outside the timings (allocator, kernels)
        engine.run(model, tokenizer, trials[:1], conditions[:1], letters, SEED, batch_size=1, progress=False)
        engine_times, naive_times, memory, naive_memory = [], [], 0, 0
        for _ in range(args.repeats):  # alternating, so drift in the machine's speed hits both ways alike
            work = engine.Work()
            ours, seconds, peak_memory = timed(device, lambda: engine.run(
                model, tokenizer, trials, conditions, letters, SEED, batch_size=batch_size, progress=False, work=work))
            engine_times.append(seconds)
            memory = max(memory, peak_memory)
            if not args.skip_naive:
                reference = engine.Work()
                naive, naive_seconds, peak_memory = timed(device, lambda: benchmark.reference_run(
                    model, tokenizer, trials, conditions, letters, SEED, work=reference))
                naive_times.append(naive_seconds)
                naive_memory = max(naive_memory, peak_memory)
        seconds = statistics.median(engine_times)
        lengths = [t["n_prompt_tokens"] for t in trials]
        print(f"\n{experiment}: {len(trials)} trials x {len(conditions)} conditions = {len(ours)} scored rows, "
              f"prompts of {min(lengths)}-{max(lengths)} tokens; median of {args.repeats} timing(s)")
        print(f"  engine:    {len(ours) / seconds:8.2f} trials/s  {work.prompt_tokens / seconds:9.0f} prompt tokens/s  "
              f"peak memory {memory / 2**20:7.0f} MiB  ({seconds:.1f} s; {work.summary()})")
        flops = benchmark.forward_flops(model, work, work.passes)
        print(f"  engine reaches {flops / seconds / 1e9:.1f} GFLOP/s = {flops / seconds / peak:.0%} of the measured "
              f"matmul throughput")
        if args.skip_naive:
            continue
        naive_seconds = statistics.median(naive_times)
        naive_flops = benchmark.forward_flops(model, reference, reference.computed_tokens)
        print(f"  naive:     {len(naive) / naive_seconds:8.2f} trials/s  "
              f"{reference.prompt_tokens / naive_seconds:9.0f} prompt tokens/s  peak memory "
              f"{naive_memory / 2**20:7.0f} MiB  ({naive_seconds:.1f} s; {naive_flops / naive_seconds / peak:.0%} of "
              f"the matmul throughput)")
        ratios = sorted(n / e for n, e in zip(naive_times, engine_times))
        spread = f" (each timing: {', '.join(f'{r:.2f}' for r in ratios)})" if len(ratios) > 1 else ""
        print(f"  ratio engine/naive: {naive_seconds / seconds:.2f}x{spread}; "
              f"{benchmark.agreement(naive, ours).summary()}")


if __name__ == "__main__":
    main()
