"""Activation capture during the perturbed-inference runs: the residual stream at three sites, no extra pass.

Forward hooks on the decoder blocks read each block's output (the residual stream after that layer) at:
- ``answer``: the last prompt token, where the model reads its answer off (the TracingLLM site);
- ``span_mean``: the mean over the test span's tokens (where the perturbation is written);
- ``span_last``: the test span's last token.
The hooks are registered after the perturbation hooks, so they see the perturbed stream. Each captured row is
keyed like its row of the shard table, (trial_id, perturbation, strength); the unperturbed pass of a trial is
stored once as ("none", 0.0), since every no-op condition is that same pass. Values are stored as float16.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import activations
from .activations import CLEAN, SITES
from .models import decoder_layers
from .vocabulary import derive_seed


@dataclass(frozen=True)
class Selection:
    """Which rows to keep: a sample of trials, and per perturbation a subset of its strengths (0 always)."""

    trial_ids: frozenset[int]
    strengths: dict[str, frozenset[float]]
    layers: tuple[int, ...]

    def wants(self, trial_id: int, perturbation: str, strength: float) -> bool:
        if trial_id not in self.trial_ids:
            return False
        return strength == 0.0 or round(strength, 6) in self.strengths.get(perturbation, ())


def sample_trials(trial_ids: list[int], count: int | None, seed: int, experiment: str) -> frozenset[int]:
    """The same seeded sample in every shard of an experiment, drawn from the whole prompt set (a shard by trials
    captures the sampled trials it holds)."""
    if count is None or count >= len(trial_ids):
        return frozenset(trial_ids)
    return frozenset(random.Random(derive_seed(seed, "capture", experiment)).sample(sorted(trial_ids), count))


def spread(values: list[float], count: int | None) -> frozenset[float]:
    """At most `count` values evenly spaced over a sorted grid, its ends included."""
    values = sorted({round(v, 6) for v in values})
    if count is None or count >= len(values):
        return frozenset(values)
    picks = np.unique(np.round(np.linspace(0, len(values) - 1, count)).astype(int))
    return frozenset(values[i] for i in picks)


def layer_indices(n_layers: int, stride: int) -> tuple[int, ...]:
    """Every `stride`-th layer from layer 0 (the MI analysis needs it as its input proxy), plus the last."""
    return tuple(sorted({*range(0, n_layers, stride), n_layers - 1}))


def select(settings: dict, seed: int, experiment: str, trials: list[dict], strengths: dict[str, list[float]],
           n_layers: int) -> Selection:
    """The rows and layers the `probes:` settings keep for one experiment (`strengths`: its full grid per
    perturbation). Zero-shot keeps the renderings of `aliases` only, before the sample: drawn over every rendering,
    400 trials of Qwen3-32B's 53 aliases would hold about 8 of the canonical labels that steering reads."""
    aliases = settings.get("aliases")
    if aliases is not None and experiment == "zero_shot":
        trials = [t for t in trials if t["alias"] in aliases]
    return Selection(
        trial_ids=sample_trials([t["trial_id"] for t in trials], settings["trials"], seed, experiment),
        strengths={kind: spread(values, settings["strengths"]) for kind, values in strengths.items()},
        layers=layer_indices(n_layers, settings["layer_stride"]),
    )


class ActivationCapture:
    """Context manager holding the capture hooks; `set_batch` says which rows of the next forward pass to keep.

    The engine calls set_batch before each forward pass (clear before a shared prefix) and enters it after its
    perturbation hooks.
    """

    def __init__(self, model, selection: Selection):
        self._blocks = decoder_layers(model)
        self.selection = selection
        self._handles = []
        self._batch: list[tuple] = []  # row, span start and end (input columns), span held, scoring, key
        self._owners: dict[tuple[int, str, float], tuple] = {}
        self.rows: dict[tuple[int, str, float], np.ndarray] = {}

    @staticmethod
    def key(trial: dict, perturbation) -> tuple[int, str, float]:
        """The row's (trial_id, perturbation, strength) of its test span; the clean pass for `None` (the engine's
        key of the pass every no-op condition shares)."""
        if perturbation is None:
            return trial["trial_id"], CLEAN, 0.0
        test = next(i for i, s in enumerate(trial["spans"]) if s.get("test", True))
        span = perturbation.spans[test]
        return trial["trial_id"], span.kind, round(span.strength, 6)

    def set_batch(self, rows: list[tuple[dict, object]], offsets: list[int], scoring: bool = True,
                  batch_rows: list[int] | None = None, starts: list[int] | None = None) -> None:
        """rows[j] = (trial, engine pass key) sits in batch row batch_rows[j] (default j) of the next forward pass,
        its prompt's token t at column offsets[j] + t of the input (offsets are negative when a reused cache holds
        the first tokens), and its tokens from starts[j] on (default: all from column 0) are in the pass. The span
        sites are read in the pass that holds the test span; the answer site in a scoring pass (one that ends at
        the answer position). A stem pass (scoring False) holds the span of several rows."""
        self._batch = []
        for j, ((trial, perturbation), offset) in enumerate(zip(rows, offsets)):
            key = self.key(trial, perturbation)
            owner = (trial["trial_id"], perturbation)  # one pass fills a key (several may share its strength)
            if not self.selection.wants(*key) or self._owners.setdefault(key, owner) != owner:
                continue
            span = next(s for s in trial["spans"] if s.get("test", True))
            row = j if batch_rows is None else batch_rows[j]
            held = span["start"] >= max(-offset, 0 if starts is None else starts[j])  # not a pad before the tokens
            self._batch.append((row, offset + span["start"], offset + span["end"], held, scoring, key))

    def clear(self) -> None:
        """Keep nothing of the next forward pass (a shared prefix)."""
        self._batch = []

    def _hook(self, slot: int):
        def hook(module, args, output):
            if not self._batch:
                return
            h = output[0] if isinstance(output, tuple) else output
            values, places = [], []  # gathered on the model's device, copied to the host at once (one sync)
            for row, start, end, held, scoring, key in self._batch:
                if key not in self.rows:
                    self.rows[key] = np.empty((len(SITES), len(self.selection.layers), h.shape[-1]), np.float16)
                if held and end <= h.shape[1]:
                    values += [h[row, start:end].float().mean(0), h[row, end - 1].float()]  # bf16: mean in float32
                    places += [(key, 1), (key, 2)]
                if scoring:  # every prompt of a scoring pass ends at its last position
                    values.append(h[row, -1].float())
                    places.append((key, 0))
            if values:
                for (key, site), value in zip(places, torch.stack(values).cpu().numpy()):
                    self.rows[key][site, slot] = value
            return

        return hook

    def __enter__(self):
        self._handles = [
            self._blocks[layer].register_forward_hook(self._hook(slot)) for slot, layer in enumerate(self.selection.layers)
        ]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._batch = []
        return False

    def save(self, path: str | Path) -> None:
        activations.write(path, self.rows, self.selection.layers)
