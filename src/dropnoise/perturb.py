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


def perturb(h: torch.Tensor, kind: str, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Return a perturbed copy of a [tokens, hidden] slice; the draws come from `generator` only."""
    if kind == "dropout":
        uniform = torch.rand(h.shape, generator=generator, device=h.device, dtype=torch.float32)
        keep = (uniform >= strength).to(h.dtype)
        return h * keep * (1.0 / (1.0 - strength))
    noise = torch.randn(h.shape, generator=generator, device=h.device, dtype=h.dtype)
    return h + noise * strength


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
        n = len(blocks)
        if layers is not None and not all(-n <= i < n for i in layers):
            raise ValueError(f"layer range {layers} is outside the model's {n} layers")
        first, last = (0, n - 1) if layers is None else (layers[0] % n, layers[1] % n)
        if first > last:
            raise ValueError(f"layer range {layers} is empty for a model with {n} layers")
        self._targets = []
        for index in range(first, last + 1):
            for site in sites:
                module = blocks[index] if site == "residual" else sublayer(blocks[index], site)
                self._targets.append((module, index, SITES.index(site)))
        self._handles = []
        self._plan: list[tuple[int, int, TrialPerturbation]] = []

    def set_batch(self, trials: Sequence[TrialPerturbation | None], offsets: Sequence[int]) -> None:
        """trials[b] perturbs row b, whose prompt token 0 sits at column offsets[b]: the left padding, or a
        negative number when the row holds only the suffix of its prompt (its prefix is in a key/value cache)."""
        if len(trials) != len(offsets):
            raise ValueError("one offset per trial is required")
        self._plan = [
            (row, offset, trial)
            for row, (trial, offset) in enumerate(zip(trials, offsets))
            if trial is not None and not all(span.is_noop for span in trial.spans)
        ]

    def clear(self) -> None:
        self._plan = []

    def _hook(self, layer: int, site: int):
        def hook(module, args, output):
            if not self._plan:
                return None
            h = output[0] if isinstance(output, tuple) else output
            new = h.clone()
            for row, offset, trial in self._plan:
                for index, span in enumerate(trial.spans):
                    if span.is_noop:
                        continue
                    generator = torch.Generator(device=h.device)
                    generator.manual_seed(derive_seed(trial.seed, layer, site, index))
                    a, b = offset + span.start, offset + span.end
                    if a < 0:  # the span would reach into a cached prefix, which this pass cannot change
                        raise ValueError(f"span [{span.start}, {span.end}) starts before row {row}'s first token")
                    new[row, a:b] = perturb(h[row, a:b], span.kind, span.strength, generator)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    def __enter__(self):
        self._handles = [module.register_forward_hook(self._hook(layer, site)) for module, layer, site in self._targets]
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._plan = []
        return False
