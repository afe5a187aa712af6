"""Run trials under conditions: batched forward passes with span hooks, scored at the last position.

Trials are sorted by length and left-padded into batches (position ids follow the attention mask, so a padded
prompt sees the same positions as an unpadded one); only last-position logits are computed. Each trial keeps
its own seed under every condition, so a row does not depend on which trials shared its batch.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from tqdm.auto import tqdm

from . import prompts, scoring
from .perturb import Span, SpanPerturber, TrialPerturbation
from .vocabulary import derive_seed

TRIAL_COLUMNS = (
    "trial_id",
    "base_id",
    "template_variant",
    "sentence_id",
    "sentence_tokens",
    "n_perturbed_tokens",
    "n_prompt_tokens",
    "target",
    "answer",
    "topic_pair",
    "question_group",
    "alias",
    "alias_group",
    "k",
    "label_condition",
)


def resolve(kind: str, condition: dict) -> tuple[str, float | None]:
    """A span's perturbation and strength under a condition.

    A condition maps perturbations to strengths ({"dropout": 0.3}, or both for a dropout x noise grid cell);
    "target" spans take the condition's "target" perturbation (localization runs one trial under both kinds).
    A span whose perturbation the condition does not set has no strength (None).
    """
    if kind == "target":
        kind = condition["target"]
    return kind, condition.get(kind)


def applies(trial: dict, condition: dict) -> bool:
    """Whether a trial runs under a condition: every perturbed span must get a strength (a dropout-only
    condition skips noise-class trials, which gives the paper's single-class zero-shot runs)."""
    return all(resolve(s["kind"], condition)[1] is not None for s in trial["spans"] if s["kind"] != "none")


def trial_perturbation(trial: dict, condition: dict, seed: int) -> TrialPerturbation:
    """Draws are seeded by the trial's base: the renderings of one base trial under every alias and label
    condition get the same masks and noise (common random numbers, as the paper's fixed-seed runs)."""
    spans = []
    for s in trial["spans"]:
        if s["kind"] == "none":  # kept as a no-op so that the other spans keep their draw index
            spans.append(Span(s["start"], s["end"], "noise", 0.0))
        else:
            kind, strength = resolve(s["kind"], condition)
            spans.append(Span(s["start"], s["end"], kind, strength))
    return TrialPerturbation(seed=derive_seed(seed, "trial", trial["base_id"]), spans=tuple(spans))


def condition_columns(trial: dict, condition: dict) -> dict:
    """perturbation and strength of the scored (test) span; grid cells also keep both strengths."""
    test = next(s for s in trial["spans"] if s.get("test", True))
    kind, strength = resolve(test["kind"], condition)
    columns = {"perturbation": kind, "strength": strength}
    if "dropout" in condition and "noise" in condition:
        columns.update(dropout_strength=condition["dropout"], noise_strength=condition["noise"])
    return columns


def _batches(indices: list[int], encoded: list[list[int]], batch_size: int):
    order = sorted(indices, key=lambda i: len(encoded[i]))
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


def pad_left(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """Left-padded ids, attention mask, position ids that start at 0 on each row's first real token, offsets."""
    width = max(map(len, rows))
    offsets = [width - len(r) for r in rows]
    ids = torch.tensor([[pad_id] * o + r for o, r in zip(offsets, rows)], device=device)
    mask = torch.tensor([[0] * o + [1] * len(r) for o, r in zip(offsets, rows)], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions, offsets


def run(
    model,
    tokenizer,
    trials: list[dict],
    conditions: list[dict],
    letters,
    seed: int,
    batch_size: int = 8,
    sites=("attn", "mlp"),
    layers=None,
    progress: bool = True,
    capture=None,
) -> list[dict]:
    """Score every trial under every condition; returns one tidy row per (trial, condition).

    capture: an optional capture.ActivationCapture, told about every forward pass (its hooks go in after the
    perturbation hooks, so it records the perturbed residual stream)."""
    tokens = prompts.option_tokens(tokenizer, letters)
    encoded = [prompts.tokenize(tokenizer, t["text"])[0] for t in trials]
    for trial, ids in zip(trials, encoded):
        if len(ids) != trial["n_prompt_tokens"]:
            raise prompts.PromptError(
                f"trial {trial['trial_id']}: the prompt tokenizes to {len(ids)} tokens here but "
                f"{trial['n_prompt_tokens']} when its spans were located: was the prompt set built with another tokenizer?"
            )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = model.get_input_embeddings().weight.device
    plan = [(c, [i for i, t in enumerate(trials) if applies(t, c)]) for c in conditions]
    total = sum(-(-len(members) // batch_size) for _, members in plan)
    clean: dict[int, dict] = {}  # every no-op perturbation (p = 0, sigma = 0) is the same clean pass: run it once
    rows = []
    bar = tqdm(total=total, desc="forward passes", unit="batch", disable=not progress)
    with SpanPerturber(model, sites=sites, layers=layers) as perturber, capture or nullcontext(), torch.inference_mode():
        for condition, members in plan:
            perturbations = {i: trial_perturbation(trials[i], condition, seed) for i in members}
            noop = {i for i, p in perturbations.items() if all(span.is_noop for span in p.spans)}
            todo = [i for i in members if not (i in noop and i in clean)]
            scored = {}
            for batch in _batches(todo, encoded, batch_size):
                ids, mask, positions, offsets = pad_left([encoded[i] for i in batch], pad_id, device)
                perturber.set_batch([perturbations[i] for i in batch], offsets)
                if capture is not None:
                    capture.set_batch([trials[i] for i in batch], condition, offsets)
                out = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
                answers = [trials[i]["answer"] for i in batch]
                scored.update(zip(batch, scoring.score(out.logits[:, -1, :], answers, tokens, tokenizer.decode)))
                bar.update()
            clean.update({i: scored[i] for i in noop if i in scored})
            for i in members:
                meta = {k: trials[i][k] for k in TRIAL_COLUMNS if k in trials[i]}
                score = scored[i] if i in scored else clean[i]
                rows.append({**meta, **condition_columns(trials[i], condition), "seed": seed, **score})
    bar.close()
    return rows
