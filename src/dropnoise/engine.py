"""Run trials under conditions: batched forward passes with span hooks, scored at the last position.

Trials are left-padded into batches (position ids follow the attention mask, so a padded prompt sees the same
positions as an unpadded one); only last-position logits are computed. Each trial keeps its own seed under every
condition, so a row does not depend on which trials shared its batch.

Prefix reuse: every token before a trial's first perturbable span is the same under all of its conditions. A batch
of trials runs that prefix once, keeps its key/value cache, and then runs only the suffixes, one row per distinct
condition (the no-op conditions share one clean row), with the cache rows repeated along the batch. Trials are
ordered by their prefix tokens, so the trials of one template variant fall into the same groups, and the tokens a
group's prefixes share run once for the whole group (a shard by conditions often runs each trial under a single
condition, where this is the only reuse there is).

Stem reuse: the renderings of one base trial (its aliases, label conditions) get the same draws (common random
numbers) and agree token for token up to the first place their texts differ (the option line of a zero-shot
prompt). Such a family runs its prefix once, then each distinct perturbation of the spans before that place once
(the stem, perturbed), and only then each rendering's own remaining tokens (the leaf). Pads sit between stem and
leaf, so stems are only used where no sliding attention window can bind.

The hooks address spans relative to each pass's input, and each span draws from its own seeded generator, so the
draws and the scores are those of full recompute. Families not proven to match (models.PREFIX_CACHE_FAMILIES)
recompute the whole prompt, and the log says so.
"""

from __future__ import annotations

import copy
import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from . import models, prompts, scoring
from .perturb import Span, SpanPerturber, TrialPerturbation
from .vocabulary import derive_seed

TRIAL_COLUMNS = (
    "trial_id",
    "base_id",
    "template_variant",
    "sentence_id",
    "other_sentence_id",
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
    "steer",  # a steered rendering's variant (steering.Steering)
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


def split_point(trial: dict) -> int:
    """Tokens before the first span any condition can perturb (identical under every condition); at least the
    last token, the scored one, stays in the suffix."""
    first = min((s["start"] for s in trial["spans"] if s["kind"] != "none"), default=trial["n_prompt_tokens"])
    return min(first, trial["n_prompt_tokens"] - 1)


def pad_left(rows: list[list[int]], pad_id: int, device, after: int = 0):
    """Padded ids, attention mask, position ids that count each row's real tokens from 0, and offsets (pads per
    row). The pads go after the first `after` tokens, a prefix every row shares (so it fills one column range and
    its key/value cache can be computed once); after = 0 is left padding. A row's token t >= after sits at column
    offsets[b] + t."""
    width = max(map(len, rows))
    offsets = [width - len(r) for r in rows]
    ids = torch.tensor([r[:after] + [pad_id] * o + r[after:] for o, r in zip(offsets, rows)], device=device)
    mask = torch.tensor([[1] * after + [0] * o + [1] * (len(r) - after) for o, r in zip(offsets, rows)], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions, offsets


def common_prefix(rows: list[list[int]]) -> int:
    """Length of the longest token prefix all rows share."""
    shortest = min(map(len, rows))
    for n in range(shortest):
        if any(r[n] != rows[0][n] for r in rows):
            return n
    return shortest


# Rows per pass that `batch_size: auto` never exceeds: on CPU larger batches add padding but hardly any speed.
AUTO_BATCH_CAP = {"cpu": 16, "cuda": 256}


def free_memory(device: torch.device) -> int:
    """Bytes the next forward passes may use on the model's device (on a GPU, what the driver has free plus what
    PyTorch's allocator holds from earlier passes but no longer uses)."""
    if device.type == "cuda":
        unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + unused
    with open("/proc/meminfo") as meminfo:  # MemAvailable counts reclaimable page cache, unlike sysconf
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def auto_batch_size(model, max_tokens: int, free: int | None = None, logit_positions: int = 1) -> int:
    """Rows per pass that fit in half the free memory: per row, the key/value cache of the longest prompt (twice:
    the prefix and its repeated copy), one layer's activations (attention scores and MLP) and the logits at
    `logit_positions` positions (in the model's dtype and two float32 copies)."""
    config = model.config.get_text_config(decoder=True)
    weight = model.get_input_embeddings().weight
    element = weight.element_size()
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    kv = 2 * config.num_hidden_layers * kv_heads * head_dim * element
    activations = (4 * config.hidden_size + 3 * config.intermediate_size) * element
    logits = logit_positions * config.vocab_size * (element + 2 * 4)
    per_row = max_tokens * (2 * kv + activations) + heads * max_tokens**2 * element + logits
    free = free_memory(weight.device) if free is None else free
    return max(1, min(AUTO_BATCH_CAP.get(weight.device.type, AUTO_BATCH_CAP["cuda"]), free // 2 // per_row))


@dataclass
class Work:
    """What a run computed, to log and benchmark: scored rows, distinct forward rows, and tokens (what full
    recompute would have run vs what ran, pads included)."""

    rows: int = 0
    passes: int = 0
    prompt_tokens: int = 0
    computed_tokens: int = 0

    def summary(self) -> str:
        saved = 1 - self.computed_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
        return (
            f"{self.rows} rows from {self.passes} forward rows; {self.computed_tokens} tokens computed for "
            f"{self.prompt_tokens} prompt tokens ({saved:.0%} saved by prefix and stem reuse and clean-row sharing)"
        )


def _rows_of(cache: DynamicCache, index: torch.Tensor) -> DynamicCache:
    """A cache holding the given batch rows of `cache` (repeats allowed); `cache` itself stays intact. A model split
    over GPUs keeps each layer's cache on that layer's device, so the index is copied to each device once."""
    selected = copy.copy(cache)
    selected.layers = [copy.copy(layer) for layer in cache.layers]
    on = {index.device: index}
    for layer in selected.layers:
        keys = getattr(layer, "keys", None)  # None until the layer holds a token
        device = index.device if keys is None else keys.device
        if device not in on:
            on[device] = index.to(device)
        layer.batch_select_indices(on[device])
    return selected


def _groups(order: list, sizes: dict, batch_size: int):
    """Consecutive items (trials, families) whose rows fill at least one batch (an item with many rows is a group
    alone)."""
    group, rows = [], 0
    for item in order:
        group.append(item)
        rows += sizes[item]
        if rows >= batch_size:
            yield group
            group, rows = [], 0
    if group:
        yield group


def _prefill(model, observers, ids, mask, positions, shared: int, work: Work) -> DynamicCache:
    """Key/value cache of every row of `ids` (unperturbed context tokens, nothing scored); the first `shared`
    columns, the same in every row, run once on one row."""
    for observer in observers:
        observer.clear()
    cache = DynamicCache(config=model.config)
    rows, width = ids.shape
    if shared:
        model(input_ids=ids[:1, :shared], attention_mask=mask[:1, :shared], position_ids=positions[:1, :shared],
              past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache = _rows_of(cache, torch.zeros(rows, dtype=torch.long, device=ids.device))
    if width > shared:
        model(input_ids=ids[:, shared:], attention_mask=mask, position_ids=positions[:, shared:],
              past_key_values=cache, use_cache=True, logits_to_keep=1)
    work.computed_tokens += shared + (width - shared) * rows
    return cache


def _run_group(model, perturber, observers, trials, group, encoded, splits, passes, pad_id, device, batch_size, work,
               window=None):
    """Run one group of trials: their prefixes once, then every (trial, pass) suffix in batches of rows.
    Each trial is split `suffix` tokens before its end, the group's longest suffix, so that all suffixes have
    one length and the padded prefixes line up in the cache. The tokens every prefix of the group shares (the
    chat template and instructions of one template variant) run once, on one row; the pads go after them. That
    holds the scores of full recompute only where no sliding attention window (`window`) can bind, so longer
    groups are left-padded and share nothing across trials. Spans and captured positions are addressed relative
    to the suffix (every span starts at or after its trial's split)."""
    suffix = max(len(encoded[i]) - splits[i] for i in group)
    shared = common_prefix([encoded[i][: len(encoded[i]) - suffix] for i in group]) if len(group) > 1 else 0
    if window is not None and max(len(encoded[i]) for i in group) > window:
        shared = 0
    ids, mask, positions, offsets = pad_left([encoded[i] for i in group], pad_id, device, after=shared)
    prefix = ids.shape[1] - suffix
    cache = None
    if prefix > 0:
        perturber.clear()
        cache = _prefill(model, observers, ids[:, :prefix], mask[:, :prefix], positions[:, :prefix], shared, work)
    rows = [(g, i, key) for g, i in enumerate(group) for key in passes[i]]
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        index = torch.tensor([g for g, _, _ in chunk], device=device)
        suffix_offsets = [offsets[g] - prefix for g, _, _ in chunk]
        perturber.set_batch([passes[i][key] for _, i, key in chunk], suffix_offsets)
        for observer in observers:
            observer.set_batch([(trials[i], key) for _, i, key in chunk], suffix_offsets)
        out = model(
            input_ids=ids[index, prefix:],
            attention_mask=mask[index],
            position_ids=positions[index, prefix:],
            past_key_values=None if cache is None else _rows_of(cache, index),
            use_cache=cache is not None,
            logits_to_keep=1,
        )
        work.computed_tokens += suffix * len(chunk)
        work.prompt_tokens += sum(len(encoded[i]) for _, i, _ in chunk)
        work.passes += len(chunk)
        yield [(i, key) for _, i, key in chunk], out.logits[:, -1, :]


@dataclass(frozen=True)
class Family:
    """Renderings of one base trial that agree token for token before `stem_end`; every span lies wholly before
    or wholly after it, and none starts before `split`."""

    members: tuple[int, ...]
    split: int
    stem_end: int


def families(trials: list[dict], encoded: list[list[int]], splits: list[int], window: int | None) -> list[Family]:
    """The trials that share a base and a stem longer than their prefix (at least the last token stays in each
    leaf); none where a sliding window could bind, since the pads between stem and leaf would shift it."""
    by_base: dict[object, list[int]] = {}
    for i, trial in enumerate(trials):
        by_base.setdefault(trial["base_id"], []).append(i)
    found = []
    for members in by_base.values():
        rows = [encoded[i] for i in members]
        if len(members) < 2 or len({splits[i] for i in members}) > 1:
            continue
        if window is not None and max(map(len, rows)) > window:
            continue
        end = min(common_prefix(rows), min(map(len, rows)) - 1)
        spans = [(s["start"], s["end"]) for i in members for s in trials[i]["spans"] if s["kind"] != "none"]
        while any(a < end < b for a, b in spans):  # a stem never cuts a span: its draw is made in one pass
            end = max(a for a, b in spans if a < end < b)
        if end > splits[members[0]] > 0:
            found.append(Family(tuple(members), splits[members[0]], end))
    return found


def restrict(perturbation: TrialPerturbation | None, start: int, end: int) -> TrialPerturbation | None:
    """The spans inside [start, end); the others become no-ops that keep their place, hence their draws (None:
    nothing left to perturb, the clean pass)."""
    if perturbation is None:
        return None
    idle = Span(0, 0, "noise", 0.0)
    spans = tuple(s if start <= s.start and s.end <= end else idle for s in perturbation.spans)
    return None if all(s.is_noop for s in spans) else TrialPerturbation(perturbation.seed, spans)


def _pieces(pieces: list[tuple[list[int], int, int]], pad_id: int, device):
    """pad_left of tokens [start, end) of each row's prompt, with positions that count the prompt's real tokens
    (a piece starts at position `start`)."""
    ids, mask, positions, _ = pad_left([tokens[start:end] for tokens, start, end in pieces], pad_id, device)
    starts = torch.tensor([start for _, start, _ in pieces], device=device)
    return ids, mask, positions + starts[:, None] * mask


def _run_families(model, perturber, observers, trials, group: list[Family], encoded, passes, pad_id, device,
                  batch_size, work):
    """Run a group of families: each family's prefix once (the group's common tokens once), then, batch_size stems
    at a time, each distinct stem perturbation once and every (trial, pass) leaf on top of it in batches of rows.
    Stems are right-aligned at one column and leaves at the last one, with pads between them; positions count each
    row's real tokens."""
    prefixes = [encoded[f.members[0]][: f.split] for f in group]
    shared = common_prefix(prefixes) if len(group) > 1 else 0
    ids, mask, positions, _ = pad_left(prefixes, pad_id, device, after=shared)
    perturber.clear()
    prefix_cache = _prefill(model, observers, ids, mask, positions, shared, work)

    stems: dict[tuple[int, object], list] = {}  # (family, stem perturbation) -> its leaves (trial, pass key)
    for g, family in enumerate(group):
        for i in family.members:
            for key in passes[i]:
                stems.setdefault((g, restrict(key, 0, family.stem_end)), []).append((i, key))
    stems = list(stems.items())
    for first in range(0, len(stems), batch_size):
        block = stems[first : first + batch_size]
        stem_ids, stem_mask, stem_positions = _pieces(
            [(encoded[group[g].members[0]], group[g].split, group[g].stem_end) for (g, _), _ in block], pad_id, device)
        width = stem_ids.shape[1]
        stem_offsets = [width - group[g].stem_end for (g, _), _ in block]  # token t sits at column offset + t
        families_of = torch.tensor([g for (g, _), _ in block], device=device)
        context_mask = torch.cat([mask[families_of], stem_mask], dim=1)
        cache = _rows_of(prefix_cache, families_of)
        leaves = [(row, group[g], i, key) for row, ((g, _), members) in enumerate(block) for i, key in members]
        perturber.set_batch([perturbation for (_, perturbation), _ in block], stem_offsets)
        for observer in observers:  # the stems hold the test spans (captured here), not the answer position
            observer.set_batch([(trials[i], key) for _, _, i, key in leaves], [stem_offsets[r] for r, *_ in leaves],
                               scoring=False, batch_rows=[r for r, *_ in leaves],
                               starts=[family.split for _, family, _, _ in leaves])
        model(input_ids=stem_ids, attention_mask=context_mask, position_ids=stem_positions, past_key_values=cache,
              use_cache=True, logits_to_keep=1)
        work.computed_tokens += width * len(block)

        leaves.sort(key=lambda leaf: len(encoded[leaf[2]]) - leaf[1].stem_end)  # similar lengths share a batch
        for start in range(0, len(leaves), batch_size):
            chunk = leaves[start : start + batch_size]
            leaf_ids, leaf_mask, leaf_positions = _pieces(
                [(encoded[i], family.stem_end, len(encoded[i])) for _, family, i, _ in chunk], pad_id, device)
            n = leaf_ids.shape[1]
            offsets = [n - len(encoded[i]) for _, _, i, _ in chunk]
            index = torch.tensor([row for row, _, _, _ in chunk], device=device)
            perturber.set_batch([restrict(passes[i][key], family.stem_end, len(encoded[i]))
                                 for _, family, i, key in chunk], offsets)
            for observer in observers:  # a leaf holds its prompt from the stem's end on
                observer.set_batch([(trials[i], key) for _, _, i, key in chunk], offsets,
                                   starts=[family.stem_end for _, family, _, _ in chunk])
            out = model(input_ids=leaf_ids, attention_mask=torch.cat([context_mask[index], leaf_mask], dim=1),
                        position_ids=leaf_positions, past_key_values=_rows_of(cache, index), use_cache=True,
                        logits_to_keep=1)
            work.computed_tokens += n * len(chunk)
            work.prompt_tokens += sum(len(encoded[i]) for _, _, i, _ in chunk)
            work.passes += len(chunk)
            yield [(i, key) for _, _, i, key in chunk], out.logits[:, -1, :]


def _columns(group: list[Family], encoded) -> int:
    """Columns of a family group's longest leaf pass (prefix, stem and leaf widths, pads included)."""
    return (max(f.split for f in group) + max(f.stem_end - f.split for f in group)
            + max(len(encoded[i]) - f.stem_end for f in group for i in f.members))


def run(
    model,
    tokenizer,
    trials: list[dict],
    conditions: list[dict],
    letters,
    seed: int,
    batch_size: int | str = 8,
    sites=("attn", "mlp"),
    layers=None,
    progress: bool = True,
    prefix_cache: bool = True,
    work: Work | None = None,
    capture=None,
    steering=None,
) -> list[dict]:
    """Score every trial under every condition; returns one tidy row per (trial, condition).

    batch_size: rows per forward pass, or "auto" (from free memory); prefix_cache: reuse each trial's unperturbed
    prefix across its conditions, and a family's stems across its renderings, where the model family allows it;
    work: filled with what was computed; capture: an optional capture.ActivationCapture, told about every forward
    row (its hooks go in after the perturbation hooks, so it records the perturbed residual stream); steering: an
    entered steering.Steering, switched on for the scoring passes only (the last position of a prefix or stem pass
    is not the answer position).
    """
    log = logging.getLogger(__name__)
    work = Work() if work is None else work
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
    if batch_size == "auto":
        batch_size = auto_batch_size(model, max(map(len, encoded), default=1))
        log.info("batch size %d (auto, from the free memory of %s)", batch_size, device)
    if prefix_cache and not models.shares_prefix_cache(model):
        log.warning("prefix reuse is off for model type '%s' (not proven to match full recompute): every pass "
                    "recomputes the whole prompt", model.config.model_type)
        prefix_cache = False
    # Per trial, its distinct passes: None is the clean pass (every no-op condition: p = 0, sigma = 0).
    passes: list[dict] = [{} for _ in trials]
    plan = []
    for condition in conditions:
        members = []
        for i, trial in enumerate(trials):
            if applies(trial, condition):
                perturbation = trial_perturbation(trial, condition, seed)
                key = None if all(span.is_noop for span in perturbation.spans) else perturbation
                passes[i].setdefault(key, perturbation)
                members.append((i, key))
        plan.append((condition, members))
    splits = [split_point(t) if prefix_cache else 0 for t in trials]
    window = models.attention_window(model)
    found = []
    if prefix_cache:  # members that run under no condition drop out; a family needs two that run
        found = [Family(members, f.split, f.stem_end) for f in families(trials, encoded, splits, window)
                 if len(members := tuple(i for i in f.members if passes[i])) > 1]
    # Families with similar stems and the same prefix together; trials with equal suffix lengths together (no
    # padding in the suffix passes), and among them those with the same prefix (template variant), so that a
    # group shares it.
    found.sort(key=lambda f: (f.stem_end - f.split, encoded[f.members[0]][: f.split], f.stem_end))
    family_groups = list(_groups(found, {f: sum(len(passes[i]) for i in f.members) for f in found}, batch_size))
    if window is not None:  # a group pads its families to common widths: those must stay inside the window
        family_groups = [g for g in family_groups if _columns(g, encoded) <= window]
    in_family = {i for group in family_groups for family in group for i in family.members}
    order = sorted((i for i in range(len(trials)) if passes[i] and i not in in_family),
                   key=lambda i: (len(encoded[i]) - splits[i], encoded[i][: splits[i]], len(encoded[i])))
    groups = list(_groups(order, {i: len(passes[i]) for i in order}, batch_size))
    bar = tqdm(total=sum(map(len, passes)), desc="forward rows", unit="row", disable=not progress)
    observers = [o for o in (capture, steering) if o is not None]
    scored: dict[tuple[int, object], dict] = {}
    with SpanPerturber(model, sites=sites, layers=layers) as perturber, capture or nullcontext(), torch.inference_mode():
        runs = [_run_families(model, perturber, observers, trials, g, encoded, passes, pad_id, device, batch_size, work)
                for g in family_groups]
        runs += [_run_group(model, perturber, observers, trials, g, encoded, splits, passes, pad_id, device,
                            batch_size, work, window) for g in groups]
        for batches_of_group in runs:
            for keys, logits in batches_of_group:
                answers = [trials[i]["answer"] for i, _ in keys]
                scored.update(zip(keys, scoring.score(logits, answers, tokens, tokenizer.decode)))
                bar.update(len(keys))
    bar.close()
    rows = []
    for condition, members in plan:
        for i, key in members:
            meta = {k: trials[i][k] for k in TRIAL_COLUMNS if k in trials[i]}
            rows.append({**meta, **condition_columns(trials[i], condition), "seed": seed, **scored[(i, key)]})
    work.rows += len(rows)
    log.info("%s", work.summary())
    return rows
