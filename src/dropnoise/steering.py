"""Steering vectors between dropout and noise (the TracingLLM recipe): mass-mean directions built on a dev split of
the captured zero-shot answer-position activations, added at one decoder layer by a forward hook, read out on the
held-out trials.

- ``noise_minus_dropout``: mean(h | noise) - mean(h | dropout) over the dev rows of every captured strength > 0
  (the zero-shot grids are matched by rank); ``perturbed_minus_clean``: mean(h | perturbed) - mean(h | clean).
- Each is injected as scale x size x its unit direction, where size is the standard deviation of the dev rows'
  projections on it (TracingLLM's scaling, on dev rows only: the reference code also used the test half) or
  their mean residual norm.
- Controls of the same injected norm at every scale: a seeded random direction, and the mass-mean direction of
  the same dev rows with their labels shuffled as the design could have drawn them (`build`; the raw norm of that
  difference says how much of a mass-mean vector sampling noise alone gives).
- The hook adds the vector to the decoder block's output at the last position of every prompt (left padding makes
  it each prompt's answer position); at scale 0 it is not registered, so logits are bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from . import engine
from .activations import CLEAN
from .label_permutations import null_labels
from .models import decoder_layers
from .vocabulary import PERTURBATIONS, derive_seed

VECTORS = ("noise_minus_dropout", "perturbed_minus_clean")
KINDS = ("mass_mean", "random", "shuffled_labels")
BASES = (CLEAN, *PERTURBATIONS)


class SteeringError(ValueError):
    """The captured activations or the trials cannot support the steering settings; raised before the model loads."""


def choose_layer(setting, captured) -> int:
    """`middle`: the captured layer nearest the middle of the stack (the reference recipe's one middle layer; the
    last captured layer is always the stack's last). An index must be a captured layer: vectors come from the
    captured activations."""
    captured = [int(layer) for layer in captured]
    if setting == "middle":
        middle = (captured[-1] + 1) / 2
        return min(captured, key=lambda layer: (abs(layer - middle), layer))
    if setting not in captured:
        raise SteeringError(f"probes.steering.layer: layer {setting} was not captured (captured: {captured}); "
                            "pick one of those or change probes.layer_stride")
    return int(setting)


def dev_sentences(trials: pd.DataFrame, fraction: float, seed: int) -> frozenset[str]:
    """The sentences whose trials build the vectors (the others are held out), drawn per class so that both sides
    see both classes; a sentence with trials of both classes is decided once, so it is never on both sides."""
    rng = np.random.default_rng(derive_seed(seed, "steering", "split"))
    decided, dev = set(), set()
    for kind in PERTURBATIONS:
        pool = sorted(set(trials.sentence_id[trials.target == kind].astype(str)) - decided)
        count = min(max(round(fraction * len(pool)), 1), len(pool) - 1) if len(pool) > 1 else 0
        dev.update(rng.permutation(pool)[:count].tolist())
        decided.update(pool)
    in_dev = trials.sentence_id.astype(str).isin(dev)
    for kind in PERTURBATIONS:
        if not (in_dev & (trials.target == kind)).any() or not (~in_dev & (trials.target == kind)).any():
            raise SteeringError(f"too few zero-shot {kind} trials with distinct sentences to split into dev and test; "
                                "raise experiments.zero_shot.samples_per_condition")
    return frozenset(dev)


def held_out(trials: pd.DataFrame, count: int | None, seed: int) -> list[int]:
    """Held-out trial ids read out: at most `count` per class, a seeded sample (None: all)."""
    rng = np.random.default_rng(derive_seed(seed, "steering", "test"))
    picked = []
    for kind in PERTURBATIONS:
        ids = sorted(trials.trial_id[trials.target == kind])
        picked += ids if count is None or count >= len(ids) else sorted(rng.choice(ids, count, replace=False).tolist())
    return picked


def mass_mean(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """mean(X | y = 1) - mean(X | y = 0)."""
    y = np.asarray(y, bool)
    return X[y].mean(0) - X[~y].mean(0)


def contrast(vector: str, perturbation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of one vector's contrast and their labels (1: noise, or perturbed)."""
    if vector == "noise_minus_dropout":
        keep = perturbation != CLEAN
        return keep, perturbation[keep] == "noise"
    return np.ones(len(perturbation), bool), perturbation != CLEAN


@dataclass(frozen=True)
class Vector:
    """A unit direction and its injected norm at scale 1; raw_norm: the norm of the mass-mean difference it came
    from (NaN for the random control)."""

    vector: str
    kind: str
    direction: np.ndarray
    size: float
    raw_norm: float


def build(vector: str, X: np.ndarray, perturbation: np.ndarray, units: list[np.ndarray], unit: str,
          seed: int) -> list[Vector]:
    """A mass-mean vector on dev rows X (their perturbation per row) and its two controls, all of its size. The
    shuffled-label control draws its labels as the design could have (`label_permutations.null_labels` over the
    rows' `units`: trial, base trial, sentence): a trial's rows at several strengths of one class move together,
    so shuffling single rows would make label noise alone look smaller than it is."""
    keep, y = contrast(vector, perturbation)
    X = X[keep]
    if y.all() or not y.any():
        raise SteeringError(f"{vector}: the dev rows hold one side of the contrast only")
    difference = mass_mean(X, y)
    direction = difference / np.linalg.norm(difference)
    size = float(np.std(X @ direction)) if unit == "projection_sd" else float(np.linalg.norm(X, axis=1).mean())
    rng = np.random.default_rng(derive_seed(seed, "steering", vector))
    drawn = null_labels(y, [u[keep] for u in units], 1, derive_seed(seed, "steering", vector, "shuffled"))[:, 0]
    shuffled = mass_mean(X, drawn)
    random = rng.standard_normal(X.shape[1])
    return [
        Vector(vector, "mass_mean", direction, size, float(np.linalg.norm(difference))),
        Vector(vector, "random", random / np.linalg.norm(random), size, np.nan),
        Vector(vector, "shuffled_labels", shuffled / np.linalg.norm(shuffled), size, float(np.linalg.norm(shuffled))),
    ]


class Steering:
    """Context manager: a forward hook on decoder block `layer` adding scale x `vector` to the block's output at
    the last position of every row (positions="last") or at every position ("all": what each token of a text
    sees when the steered model generates it, one new last position per step; the perplexity guard's reading).

    `vector` may map steering variants to vectors: in an engine run, each row then gets the vector of its trial's
    `steer` variant. Renderings of one trial under several variants agree on every token but the last, so the
    engine runs their prompt once per condition (a family's stem) and only the last token per variant. (Not with
    an activation capture in the same run: it keys rows by trial, which the variants share.)"""

    def __init__(self, model, layer: int, vector, scale: float, positions: str = "last"):
        if positions not in ("last", "all"):
            raise ValueError(f"positions must be 'last' or 'all', got {positions!r}")
        blocks = decoder_layers(model)
        if not 0 <= layer < len(blocks):
            raise ValueError(f"layer {layer} is outside the model's {len(blocks)} layers")
        self._block = blocks[layer]
        vectors = vector if isinstance(vector, dict) else {None: vector}
        self._deltas = {key: scale * torch.as_tensor(np.asarray(v), dtype=torch.float32) for key, v in vectors.items()}
        self._active = scale != 0 and any(bool(d.any()) for d in self._deltas.values())
        self._placed: dict[tuple, torch.Tensor] = {}  # a variant's vector per (device, dtype): one copy, not one per pass
        self._rows: list = []  # each row's variant in the next pass, where there are variants
        self._positions = positions
        self._handle = None
        self._armed = True

    def clear(self) -> None:
        """Leave the next forward pass alone: the engine's passes over a shared prefix or stem, whose last
        position is not the answer position."""
        self._armed = False

    def set_batch(self, rows, offsets, scoring: bool = True, batch_rows=None, starts=None) -> None:
        """Steer the next forward pass if it scores its rows (the engine's observer interface; a stem pass does
        not end at the answer position), each row by its trial's variant."""
        self._armed = scoring
        if None not in self._deltas:
            self._rows = [trial["steer"] for trial, _ in rows]

    def _placed_delta(self, key, h: torch.Tensor) -> torch.Tensor:
        delta = self._placed.get((key, h.device, h.dtype))
        if delta is None:
            delta = self._placed[key, h.device, h.dtype] = self._deltas[key].to(device=h.device, dtype=h.dtype)
        return delta

    def _hook(self, module, args, output):
        if not self._armed:
            return None
        h = output[0] if isinstance(output, tuple) else output
        if None in self._deltas:
            delta = self._placed_delta(None, h)
        else:
            if len(self._rows) != h.shape[0]:
                raise RuntimeError(f"steering: {len(self._rows)} row variants for a pass of {h.shape[0]} rows")
            delta = torch.stack([self._placed_delta(key, h) for key in self._rows])
            delta = delta if self._positions == "last" else delta[:, None]
        new = h.clone()
        if self._positions == "last":
            new[:, -1] += delta
        else:
            new += delta
        return (new, *output[1:]) if isinstance(output, tuple) else new

    def __enter__(self):
        self._armed = True
        if self._active:
            self._handle = self._block.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        return False


def text_nll(model, tokenizer, texts: list[str], batch_size: int | str) -> tuple[float, int]:
    """Summed next-token negative log-likelihood (nats) and the number of predicted tokens over `texts`, each
    tokenized alone with the tokenizer's default special tokens, left-padded into batches (batch_size "auto": from
    free memory, with the logits of every position kept)."""
    encoded = [tokenizer(text)["input_ids"] for text in texts]
    if batch_size == "auto":
        longest = max(map(len, encoded), default=1)
        batch_size = engine.auto_batch_size(model, longest, logit_positions=longest)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = model.get_input_embeddings().weight.device
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(encoded), batch_size):
            ids, mask, positions, _ = engine.pad_left(encoded[i : i + batch_size], pad_id, device)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()
            log_probs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
            predicted = mask[:, 1:].bool() & mask[:, :-1].bool()
            total -= float(log_probs[predicted].sum())
            count += int(predicted.sum())
    return total, count


def trial_readout(rows: pd.DataFrame, letters: tuple[str, str]) -> pd.DataFrame:
    """Per scored row: its base run (none, dropout, noise), logit(noise option) - logit(dropout option) of the
    primary tokens, and whether the primary rule answers noise."""
    other = {letters[0]: letters[1], letters[1]: letters[0]}
    noise = rows.answer.where(rows.target == "noise", rows.answer.map(other))
    dropout = noise.map(other)

    def logit_of(chosen: pd.Series) -> np.ndarray:
        return np.where(chosen == letters[0], rows[f"logit_{letters[0]}"], rows[f"logit_{letters[1]}"])

    return pd.DataFrame({
        "base": rows.perturbation.where(rows.strength > 0, CLEAN),
        "base_strength": rows.strength,
        "logit_diff": logit_of(noise) - logit_of(dropout),
        "answered_noise": rows.pred_primary == noise,
    })


def summarise(readout: pd.DataFrame) -> pd.DataFrame:
    """Per (vector, kind, scale, base): mean logit difference (95% t interval over trials) and the fraction
    answering noise (95% Wilson interval). Descriptive: the held-out trials are taken as independent (no clustering
    by sentence) and are the same at every scale; no test rests on these intervals."""
    out = []
    for key, group in readout.groupby(["vector", "kind", "scale", "base"], sort=True):
        n, mean = len(group), group.logit_diff.mean()
        half = stats.t.ppf(0.975, n - 1) * group.logit_diff.std() / np.sqrt(n) if n > 1 else np.nan
        k = int(group.answered_noise.sum())
        low, high = proportion_confint(k, n, alpha=0.05, method="wilson")
        out.append({**dict(zip(["vector", "kind", "scale", "base"], key)), "base_strength": group.base_strength.iloc[0],
                    "n": n, "logit_diff": mean, "logit_diff_low": mean - half, "logit_diff_high": mean + half,
                    "frac_noise": k / n, "frac_noise_low": low, "frac_noise_high": high})
    return pd.DataFrame(out)
