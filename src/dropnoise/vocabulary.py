"""Names every module shares, and the seed derivation, with no heavy imports: the CPU-only steps (statistics,
summaries, strength grids) import this instead of the torch-based modules, so they run in the analysis env."""

from __future__ import annotations

import hashlib

PERTURBATIONS = ("dropout", "noise")
RULES = ("primary", "aggregate", "argmax")  # scoring rules, see scoring.py
# Experiments whose trials perturb a sentence of the model's pool (results/{model}/sentences.csv).
POOL_EXPERIMENTS = ("localization", "zero_shot", "few_shot")
# The per-trial tables' strength columns (few-shot: one per perturbation); empty in a summary's rows pooled over a grid.
STRENGTH_COLUMNS = ("strength", "dropout_strength", "noise_strength")


def derive_seed(*parts) -> int:
    """A stable 63-bit seed from any tuple of ints/strings (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)

# Statistical tables (src/dropnoise/stats.py) -> the experiments whose per-trial tables each one reads.
STATS_TABLES = {
    "condition_tests": ("localization", "localization_control", "zero_shot", "few_shot"),
    "dose_response": ("localization", "localization_control", "zero_shot", "few_shot"),
    "label_pairs": ("few_shot",),
    "discrimination": ("zero_shot",),
    "alias_controls": ("zero_shot", "few_shot"),
}
