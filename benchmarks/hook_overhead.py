"""What the perturbation hooks cost: one batch run clean and with every row's spans perturbed.

    python benchmarks/hook_overhead.py                                     # SmolLM2-135M on CPU (after the demo)
    python benchmarks/hook_overhead.py --device cuda --random-init --config benchmarks/configs/llama-3.1-8b.json

Each of --rows rows holds --tokens random tokens and --spans spans of --span-tokens tokens (alternately dropout and
noise), as a few-shot prompt with k = spans - 1. Prints the median milliseconds of a clean and of a perturbed
forward pass, their difference and that difference per (row, span, sublayer): the hooks' per-span work is launch
overhead, which with hundreds of rows and several spans each can rival a layer's matmuls on a GPU.
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

from dropnoise import benchmark  # noqa: E402
from dropnoise.models import decoder_layers  # noqa: E402
from dropnoise.perturb import Span, SpanPerturber, TrialPerturbation  # noqa: E402


def arguments():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    benchmark.add_model_arguments(parser, ROOT)
    parser.add_argument("--rows", type=int, default=16, help="rows per forward pass")
    parser.add_argument("--tokens", type=int, default=160, help="tokens per row")
    parser.add_argument("--spans", type=int, default=4, help="perturbed spans per row")
    parser.add_argument("--span-tokens", type=int, default=15, help="tokens per span")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes each way, alternating")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads")
    args = parser.parse_args()
    if args.spans * (args.span_tokens + 1) > args.tokens:
        parser.error(f"{args.spans} spans of {args.span_tokens} tokens do not fit in {args.tokens} tokens")
    return args


def main():
    args = arguments()
    torch.set_num_threads(args.threads)
    model, _, name, dtype = benchmark.load(args)
    device = model.get_input_embeddings().weight.device
    vocabulary = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocabulary, (args.rows, args.tokens), generator=torch.Generator().manual_seed(0)).to(device)
    gap = args.tokens // args.spans
    plans = [TrialPerturbation(seed=row, spans=tuple(
        Span(s * gap, s * gap + args.span_tokens, ("dropout", "noise")[s % 2], 0.5) for s in range(args.spans)))
        for row in range(args.rows)]
    with SpanPerturber(model) as perturber, torch.inference_mode():
        def timed(trials) -> float:
            perturber.set_batch(trials, [0] * args.rows)
            benchmark.synchronize(device)
            start = time.perf_counter()
            model(input_ids=ids, logits_to_keep=1)
            benchmark.synchronize(device)
            return time.perf_counter() - start

        timed(plans), timed([None] * args.rows)  # warm-up
        clean, perturbed = [], []
        for _ in range(args.repeats):
            clean.append(timed([None] * args.rows))
            perturbed.append(timed(plans))
    clean, perturbed = statistics.median(clean), statistics.median(perturbed)
    sublayers = 2 * len(decoder_layers(model))  # attention and MLP of every layer, the paper's sites
    entries = args.rows * args.spans * sublayers
    print(f"model {name}, {dtype} on {device} ({torch.get_num_threads()} threads); {args.rows} rows x "
          f"{args.tokens} tokens, {args.spans} spans of {args.span_tokens} tokens per row, {sublayers} hooked "
          f"sublayers; median of {args.repeats}")
    print(f"  clean forward pass:     {clean * 1e3:9.1f} ms")
    print(f"  perturbed forward pass: {perturbed * 1e3:9.1f} ms  ({(perturbed - clean) / clean:+.0%})")
    print(f"  hook cost: {(perturbed - clean) * 1e3:.1f} ms per pass, {(perturbed - clean) / entries * 1e6:.1f} us per "
          f"(row, span, sublayer)")


if __name__ == "__main__":
    main()
