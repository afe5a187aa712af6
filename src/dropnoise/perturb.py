"""The intervention: forward hooks that perturb a token span of each prompt in a (left-padded) batch.

Paper site (the default): the outputs of the attention and MLP sublayers of every decoder layer, before the
residual add (and before OLMo's / Gemma's post-sublayer norms). Only the positions of the target span change;
the answer position sees the perturbation only through attention in later layers.

- dropout: inverted dropout; each element is zeroed with probability p and survivors are scaled by 1/(1-p),
  with a fresh mask at every hooked sublayer of every layer;
- noise: additive N(0, sigma^2) with sigma absolute, in activation units, drawn and added in the activation dtype.

Randomness: every (trial, layer, site, span) draws from its own generator, seeded from the trial's seed. So a
trial's perturbation does not depend on batch size, padding or the other trials in the batch, and, since the same
uniforms / normals are reused at every strength, dropout masks are nested across p and noise draws are the same
normals scaled by sigma (the paper's common random numbers). p = 0 and sigma = 0 do not touch the activations.

Cost: a hook gathers every perturbed token of the batch, perturbs them in one go and scatters them back; only the
draws take a kernel per span. Per-row work in a hook is launch overhead, which on a GPU can outlast a layer's
matmuls when a batch holds hundreds of rows with several spans each (few-shot prompts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .models import decoder_layers, sublayer
from .vocabulary import PERTURBATIONS, derive_seed

SITES = ("attn", "mlp", "residual")


@dataclass(frozen=True)
class Span:
    """Perturb tokens [start, end) of the unpadded prompt with one perturbation at one strength."""

    start: int
    end: int
    kind: str
    strength: float

    def __post_init__(self):
        if self.kind not in PERTURBATIONS:
            raise ValueError(f"unknown perturbation '{self.kind}'; expected one of {PERTURBATIONS}")
        if self.kind == "dropout" and not 0.0 <= self.strength < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {self.strength}")
        if self.kind == "noise" and self.strength < 0.0:
            raise ValueError(f"noise sigma must be >= 0, got {self.strength}")
        if not 0 <= self.start <= self.end:
            raise ValueError(f"invalid token span [{self.start}, {self.end})")

    @property
    def is_noop(self) -> bool:
        return self.strength == 0.0 or self.start == self.end


@dataclass(frozen=True)
class TrialPerturbation:
    """Everything one prompt of a batch gets: its seed and its (non-overlapping) spans."""

    seed: int
    spans: tuple[Span, ...]


def perturb(x: torch.Tensor, draws: torch.Tensor, dropout: torch.Tensor, strength: torch.Tensor,
            scale: torch.Tensor) -> torch.Tensor:
    """Perturbed copy of the token rows x [tokens, hidden], each row by its own perturbation. draws (float32, x's
    shape) holds a dropout row's uniforms and a noise row's standard normals (drawn in x's dtype); dropout, strength
    and scale (1/(1-p)) are per row. The arithmetic is the reference's: an element survives when its uniform is >= p
    and is then scaled by 1/(1-p); noise times sigma is rounded to x's dtype and added in it."""
    dropped = ((x * (draws >= strength[:, None]).to(x.dtype)).float() * scale[:, None]).to(x.dtype)
    noised = x + (draws * strength[:, None]).to(x.dtype)
    return torch.where(dropout[:, None], dropped, noised)


def layer_span(layers: Sequence[int] | None, n: int) -> tuple[int, int]:
    """The first and last hooked layer (inclusive) of `layers` ([first, last], negative from the end; None: all)
    in a stack of n layers."""
    if layers is not None and not all(-n <= i < n for i in layers):
        raise ValueError(f"layer range {list(layers)} is outside the model's {n} layers (0 to {n - 1}, or negative "
                         "from the end)")
    first, last = (0, n - 1) if layers is None else (layers[0] % n, layers[1] % n)
    if first > last:
        raise ValueError(f"layer range {list(layers)} is empty for a model with {n} layers")
    return first, last


@dataclass
class _Batch:
    """A pass's perturbed tokens, flattened: batch row and column of each, its perturbation, the draw streams
    (trial seed, span index, first and last token, dropout or not) that fill its slice of the draws, and the
    columns a pass must have."""

    rows: torch.Tensor
    columns: torch.Tensor
    dropout: torch.Tensor
    strength: torch.Tensor
    scale: torch.Tensor
    streams: list[tuple[int, int, int, int, bool]]
    width: int

    def to(self, device: torch.device) -> _Batch:
        tensors = (self.rows, self.columns, self.dropout, self.strength, self.scale)
        return _Batch(*(t.to(device) for t in tensors), self.streams, self.width)


class SpanPerturber:
    """Context manager holding the hooks; `set_batch` says what the next forward pass perturbs.

    sites: any of "attn", "mlp" (the paper's), "residual" (the decoder block output).
    layers: None for all layers, else (first, last) inclusive; negative indices count from the end.
    """

    def __init__(self, model, sites: Sequence[str] = ("attn", "mlp"), layers: tuple[int, int] | None = None):
        unknown = set(sites) - set(SITES)
        if unknown:
            raise ValueError(f"unknown hook site(s) {sorted(unknown)}; expected any of {SITES}")
        blocks = decoder_layers(model)
        first, last = layer_span(layers, len(blocks))
        self._targets = []
        for index in range(first, last + 1):
            for site in sites:
                module = blocks[index] if site == "residual" else sublayer(blocks[index], site)
                self._targets.append((module, index, SITES.index(site)))
        self._handles = []
        self._batch: _Batch | None = None
        self._placed: dict[torch.device, _Batch] = {}  # the batch on each device the model's layers sit on
        self._generators: dict[torch.device, torch.Generator] = {}

    def set_batch(self, trials: Sequence[TrialPerturbation | None], offsets: Sequence[int]) -> None:
        """trials[b] perturbs row b, whose prompt token 0 sits at column offsets[b]: the left padding, or a
        negative number when the row holds only the suffix of its prompt (its prefix is in a key/value cache)."""
        self.clear()
        if len(trials) != len(offsets):
            raise ValueError("one offset per trial is required")
        rows, columns, dropout, strength, scale, streams = [], [], [], [], [], []
        for row, (trial, offset) in enumerate(zip(trials, offsets)):
            spans = [(index, span) for index, span in enumerate(trial.spans if trial else ()) if not span.is_noop]
            ranges = sorted((span.start, span.end) for _, span in spans)
            if any(end > start for (_, end), (start, _) in zip(ranges, ranges[1:])):
                raise ValueError(f"row {row}: spans {ranges} overlap")
            for index, span in spans:
                a, b = offset + span.start, offset + span.end
                if a < 0:  # the span would reach into a cached prefix, which this pass cannot change
                    raise ValueError(f"span [{span.start}, {span.end}) starts before row {row}'s first token")
                is_dropout = span.kind == "dropout"
                streams.append((trial.seed, index, len(rows), len(rows) + b - a, is_dropout))
                rows += [row] * (b - a)
                columns += range(a, b)
                dropout += [is_dropout] * (b - a)
                strength += [span.strength] * (b - a)
                scale += [1.0 / (1.0 - span.strength) if is_dropout else 1.0] * (b - a)
        if rows:
            self._batch = _Batch(torch.tensor(rows), torch.tensor(columns), torch.tensor(dropout),
                                 torch.tensor(strength, dtype=torch.float32), torch.tensor(scale, dtype=torch.float32),
                                 streams, max(columns) + 1)

    def clear(self) -> None:
        self._batch = None
        self._placed = {}

    @staticmethod
    def _draws(batch: _Batch, generator, layer: int, site: int, like: torch.Tensor) -> torch.Tensor:
        """Every perturbed token's draws at one sublayer, one kernel per span: each (trial, layer, site, span) has its
        own seed, so a trial draws the same numbers in any batch. Normals are drawn in the activation dtype."""
        shape = (len(batch.rows), like.shape[-1])
        uniforms = torch.empty(shape, dtype=torch.float32, device=like.device)
        normals = uniforms if like.dtype == torch.float32 else torch.empty(shape, dtype=like.dtype, device=like.device)
        for seed, index, first, last, is_dropout in batch.streams:
            generator.manual_seed(derive_seed(seed, layer, site, index))
            out = (uniforms if is_dropout else normals)[first:last]
            (torch.rand if is_dropout else torch.randn)(out.shape, generator=generator, out=out)
        return uniforms if normals is uniforms else torch.where(batch.dropout[:, None], uniforms, normals.float())

    def _hook(self, layer: int, site: int):
        def hook(module, args, output):
            if self._batch is None:
                return None
            h = output[0] if isinstance(output, tuple) else output
            if h.shape[1] < self._batch.width:
                raise ValueError(f"a span ends at column {self._batch.width} of a pass {h.shape[1]} columns wide")
            if h.device not in self._placed:  # once per pass and device (a model may be split over devices)
                self._placed[h.device] = self._batch.to(h.device)
            if h.device not in self._generators:
                self._generators[h.device] = torch.Generator(device=h.device)
            batch = self._placed[h.device]
            tokens = (batch.rows, batch.columns)
            draws = self._draws(batch, self._generators[h.device], layer, site, h)
            new = h.index_put(tokens, perturb(h[tokens], draws, batch.dropout, batch.strength, batch.scale))
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    def __enter__(self):
        self._handles = [module.register_forward_hook(self._hook(layer, site)) for module, layer, site in self._targets]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()
        return False
