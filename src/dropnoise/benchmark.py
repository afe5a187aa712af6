"""Measuring the engine against the reference way of running (benchmarks/engine_vs_naive.py); the model options
the benchmark scripts share.

The reference is the authors' toolkit's loop: one trial and one condition per forward pass, batch 1, the whole
prompt recomputed, logits at every position, its forward pass as the toolkit makes it (hooks registered for the
pass, `torch.no_grad()`, `output_hidden_states=True`). Speed does not depend on the weights, so a paper
architecture can be built with random weights straight on the device from its published dimensions
(benchmarks/configs/*.json).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import engine, prompts, scoring
from .perturb import SpanPerturber
from .vocabulary import RULES


def random_model(config_file: str | Path, device: str, dtype: torch.dtype, layers: int | None = None):
    """A randomly initialised model of a published architecture, built on `device` (no download). `layers` keeps
    only the first layers (to try the path on a small machine)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = json.loads(Path(config_file).read_text())
    if layers is not None:
        spec["num_hidden_layers"] = layers
        if "layer_types" in spec:
            spec["layer_types"] = spec["layer_types"][:layers]
    config = AutoConfig.for_model(**spec)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def add_model_arguments(parser, root: Path) -> None:
    """The benchmarks' model options: a prepared folder, or random weights of a paper architecture. Relative paths
    are read from the repository root `root`, wherever the script is started."""
    parser.set_defaults(root=root)
    parser.add_argument("--model-dir", default="resources/models/smollm2-135m", help="a prepared model folder")
    parser.add_argument("--random-init", action="store_true", help="random weights of --config's architecture")
    parser.add_argument("--config", help="architecture JSON (benchmarks/configs/) for --random-init")
    parser.add_argument("--layers", type=int, help="keep only this many layers of --config")
    parser.add_argument("--tokenizer-dir", default="resources/models/smollm2-135m",
                        help="tokenizer and chat template for --random-init")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16")


def load(args):
    """Model, tokenizer, a name to print and the dtype, from add_model_arguments' options."""
    from transformers import AutoTokenizer

    from . import models

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    if args.random_init:
        tokenizer = AutoTokenizer.from_pretrained(args.root / args.tokenizer_dir)
        model = random_model(args.root / args.config, device, getattr(torch, dtype), args.layers)
        name = f"{Path(args.config).stem} (random weights{f', {args.layers} layers' if args.layers else ''})"
    else:
        model, tokenizer = models.load(args.root / args.model_dir, dtype, device)
        name = Path(args.model_dir).name
    return model, tokenizer, name, dtype


def reference_run(model, tokenizer, trials: list[dict], conditions: list[dict], letters, seed: int,
                  sites=("attn", "mlp"), layers=None, work: engine.Work | None = None) -> list[dict]:
    """The reference loop, with the engine's hooks and seeds (so predictions are comparable row by row). Each pass
    is the toolkit's (paper protocol, section 3.4): register the hooks, one forward pass under `torch.no_grad()`
    with `output_hidden_states=True` (its classification runs read them for a logit lens), remove the hooks."""
    tokens = prompts.option_tokens(tokenizer, letters)
    device = model.get_input_embeddings().weight.device
    rows = []
    for condition in conditions:
        for trial in trials:
            if not engine.applies(trial, condition):
                continue
            ids = prompts.tokenize(tokenizer, trial["text"])[0]
            with SpanPerturber(model, sites=sites, layers=layers) as perturber, torch.no_grad():
                perturber.set_batch([engine.trial_perturbation(trial, condition, seed)], [0])
                logits = model(input_ids=torch.tensor([ids], device=device), output_hidden_states=True).logits
            (score,) = scoring.score(logits[:, -1, :], [trial["answer"]], tokens, tokenizer.decode)
            rows.append({"trial_id": trial["trial_id"], **engine.condition_columns(trial, condition), **score})
            if work is not None:
                work.rows += 1
                work.passes += 1
                work.prompt_tokens += len(ids)
                work.computed_tokens += len(ids)
    return rows


@dataclass
class Agreement:
    """Row-by-row agreement of the two ways' predictions. In bfloat16 the engine's batched, cached passes round
    differently from batch-1 full recompute, so near-tied options can flip: a flip counts as within rounding when
    the reference row's margin under that rule (its best minus second-best option logit, or summed probability) is
    no larger than the largest change of a margin between the ways among the rows that agree."""

    rows: int
    differ: int
    flips: dict[str, int]
    within_rounding: dict[str, int]
    largest_logit_gap: float

    def summary(self) -> str:
        gap = f"largest option-logit difference {self.largest_logit_gap:.2e}"
        if not self.differ:
            return f"predictions identical ({gap})"
        rules = ", ".join(
            f"{rule} {n}" + (f" ({self.within_rounding[rule]} within rounding)" if rule in self.within_rounding else
                             " (no margin recorded)")
            for rule, n in self.flips.items() if n)
        return f"predictions DIFFER in {self.differ} of {self.rows} rows: {rules}; {gap}"


def _margin(row: dict, prefix: str, letters: list[str]) -> float:
    """Best minus second-best option value (logit_ or sum_prob_) of a row."""
    values = sorted((row[prefix + letter] for letter in letters), reverse=True)
    return values[0] - values[1]


def agreement(reference: list[dict], ours: list[dict]) -> Agreement:
    """Compare rows keyed by (trial_id, perturbation, strength) under the three rules (scoring.RULES)."""
    key = lambda r: (r["trial_id"], r["perturbation"], r["strength"])  # noqa: E731
    theirs = {key(r): r for r in reference}
    pairs = [(theirs[key(row)], row) for row in ours]
    columns = ours[0] if ours else {}
    letters = [c.removeprefix("logit_") for c in columns if c.startswith("logit_") and c != "logit_diff"]
    kinds = {"primary": "logit_", "aggregate": "sum_prob_"}  # the rules whose margin the rows hold
    flips = {rule: [(a, b) for a, b in pairs if a[f"pred_{rule}"] != b[f"pred_{rule}"]] for rule in RULES}
    agree = [(a, b) for a, b in pairs if all(a[f"pred_{rule}"] == b[f"pred_{rule}"] for rule in RULES)]
    within = {}
    for rule, prefix in kinds.items():
        tolerance = max((abs(_margin(a, prefix, letters) - _margin(b, prefix, letters)) for a, b in agree), default=0.0)
        within[rule] = sum(_margin(a, prefix, letters) <= tolerance for a, _ in flips[rule])
    return Agreement(
        rows=len(pairs),
        differ=len(pairs) - len(agree),
        flips={rule: len(rows) for rule, rows in flips.items()},
        within_rounding=within,
        largest_logit_gap=max((abs(a[f"logit_{x}"] - b[f"logit_{x}"]) for a, b in pairs for x in letters), default=0.0),
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(device: torch.device, dtype: torch.dtype, size: int, seconds: float = 2.0) -> float:
    """The machine's measured dense matmul throughput (FLOP/s) for square matrices of `size` in `dtype`."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.matmul(a, b)  # warm-up
    synchronize(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:  # on a GPU the launches queue up; one wait at the end
        torch.matmul(a, b)
        count += 1
    synchronize(device)
    return 2 * size**3 * count / (time.perf_counter() - start)


def matmul_parameters(model) -> int:
    """Weights that multiply every token: the decoder layers' matrices (not the embedding lookup, not the head)."""
    layers = model.get_decoder().layers if hasattr(model, "get_decoder") else model.model.layers
    return sum(p.numel() for p in layers.parameters() if p.dim() >= 2)


def forward_flops(model, work: engine.Work, head_positions: int) -> float:
    """2 x matmul weights per computed token, plus the vocabulary head at `head_positions` positions; attention
    scores are not counted (a few percent at these prompt lengths), so utilisation is a lower bound."""
    config = model.config.get_text_config(decoder=True)
    return 2.0 * matmul_parameters(model) * work.computed_tokens + 2.0 * config.hidden_size * config.vocab_size * head_positions


class PeakMemory:
    """Peak memory of a block: on CUDA, allocated bytes summed over every visible GPU (a model split over two has
    half its weights on each); on CPU, the resident set size sampled every 5 ms."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()
        self._gpus = range(torch.cuda.device_count()) if device.type == "cuda" else ()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        if self.device.type == "cuda":
            for gpu in self._gpus:
                torch.cuda.reset_peak_memory_stats(gpu)
        else:
            self.peak = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = sum(torch.cuda.max_memory_allocated(gpu) for gpu in self._gpus)
        else:
            self._stop.set()
            self._thread.join()
        return False
