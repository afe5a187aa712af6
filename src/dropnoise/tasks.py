"""Trial specifications per experiment, strength grids and conditions.

A trial is one rendered prompt with its answer and the token spans that a condition perturbs. The same trials run
under every condition (strength, perturbation) of an experiment, as in the paper's fixed-seed sweeps, so that
strengths are compared on identical prompts (common random numbers).

Experiments here:
- ``localization``: the same sentence twice (Sentence A / Sentence B), one of them perturbed; "which one?"
- ``localization_control``: one sentence from each of two topics, one of them perturbed at random; the model is
  asked a content question ("which sentence is about animals?") to check comprehension survives the perturbation.
- ``zero_shot``: one sentence, perturbed by one class; "which perturbation was applied?" under each label alias.
- ``few_shot``: k teaching pairs (one dropout and one noise example of the same sentence, in random order, each
  labelled), then a test sentence of either class; label conditions correct, swapped, random and empty teaching.

Span kinds: "target" takes the condition's perturbation (localization), "dropout"/"noise" a class's strength,
"none" stays clean (empty teaching). The span marked "test" is the one a row's perturbation/strength describe.
"""

from __future__ import annotations

import random

import pandas as pd

from . import prompts
from .labels import Aliases
from .vocabulary import PERTURBATIONS, derive_seed

EXPERIMENTS = ("localization", "localization_control", "zero_shot", "few_shot")
PLACEHOLDERS = {
    "localization": {"turns": {"sentence_a", "sentence_b"}},
    "localization_control": {"turns": {"sentence_a", "sentence_b", "topic"}},
    "zero_shot": {"turns": {"sentence", "option_a", "option_b"}},
    "few_shot": {"intro": set(), "teaching": {"sentence", "label"}, "test": {"sentence", "option_a", "option_b"}},
}


def expand_grid(spec: list) -> list[float]:
    """Numbers and inclusive {start, stop, step} ranges -> sorted distinct strengths."""
    values = set()
    for item in spec:
        if isinstance(item, dict):
            n = int(round((item["stop"] - item["start"]) / item["step"])) + 1
            values.update(round(item["start"] + i * item["step"], 6) for i in range(n))
        else:
            values.add(round(float(item), 6))
    return sorted(values)


def conditions(grid: dict) -> list[dict]:
    """Every (perturbation, strength) of a grid for the target spans, in a fixed order."""
    return [
        {"target": kind, kind: strength}
        for kind in PERTURBATIONS
        for strength in expand_grid(grid.get(kind, []))
    ]


def shard(items: list, index: int, count: int) -> list:
    """Round-robin split, so that every shard gets weak and strong conditions alike."""
    return items[index::count]


def shard_trials(trials: list[dict], index: int, count: int) -> list[dict]:
    """The trials of one shard when an experiment is sharded by trials: base trials round-robin in their order in
    the prompt set (so every shard gets every sentence length and k alike), each with all its renderings (aliases,
    label conditions), which share their perturbed stem in the engine."""
    bases = shard(list(dict.fromkeys(t["base_id"] for t in trials)), index, count)
    mine = set(bases)
    return [t for t in trials if t["base_id"] in mine]


def _locate(tokenizer, text: str, letters, sentences: dict[str, str]) -> tuple[dict[str, tuple[int, int]], int]:
    """Token span of each lettered sentence, searched after its "Sentence X: " anchor; and the prompt length."""
    ids, offsets = prompts.tokenize(tokenizer, text)
    spans = {}
    for letter in letters:
        char_start, char_end = prompts.find_char_span(text, sentences[letter], anchor=f"Sentence {letter}: ")
        spans[letter] = prompts.char_to_token_span(offsets, char_start, char_end)
    return spans, len(ids)


def _trial(tokenizer, template, variant, fields, sentences, target, answer, meta) -> dict:
    text = prompts.render(tokenizer, prompts.messages(template, variant, [("turns", fields)]))
    spans, n_tokens = _locate(tokenizer, text, template.letters, sentences)
    start, end = spans[target]
    return {
        **meta,
        "template_variant": variant,
        "target": target,
        "answer": answer,
        "n_perturbed_tokens": end - start,
        "n_prompt_tokens": n_tokens,
        "spans": [{"start": start, "end": end, "kind": "target", "test": True}],
        "text": text,
    }


def localization_trials(tokenizer, template, pool: pd.DataFrame, buckets, samples: int, seed: int) -> list[dict]:
    """`samples` trials per sentence-length bucket: one sentence shown twice, target position uniform."""
    rng = random.Random(derive_seed(seed, "localization"))
    variants = sorted(template.variants)
    trials = []
    for n in buckets:
        rows = pool[pool.sentence_tokens == n].to_dict("records")
        if not rows:
            raise prompts.PromptError(f"the sentence pool has no sentence of {n} tokens")
        for _ in range(samples):
            row, variant, target = rng.choice(rows), rng.choice(variants), rng.choice(template.letters)
            sentence = row["sentence"]
            meta = {"sentence_id": row["sentence_id"], "sentence": sentence, "sentence_tokens": n}
            fields = {"sentence_a": sentence, "sentence_b": sentence}
            sentences = dict.fromkeys(template.letters, sentence)
            trials.append(_trial(tokenizer, template, variant, fields, sentences, target, target, meta))
    return _numbered(trials)


def control_trials(tokenizer, template, samples: int, seed: int) -> list[dict]:
    """`samples` trials per topic pair: one sentence per topic in random order, a content question about one
    topic, and the perturbation on a position drawn independently of content."""
    rng = random.Random(derive_seed(seed, "localization_control"))
    variants = sorted(template.variants)
    for pair, groups in template.extra["topic_pairs"].items():
        for name, group in groups.items():
            if not {"topic", "sentences"} <= set(group):
                raise prompts.PromptError(f"{template.path}: topic_pairs.{pair}.{name} needs `sentences` and `topic` "
                                          "(the phrase completing \"which one is ...\", e.g. \"about animals\")")
    trials = []
    for pair, groups in template.extra["topic_pairs"].items():
        names = list(groups)
        for _ in range(samples):
            order = rng.sample(names, 2)
            picks = {group: rng.randrange(len(groups[group]["sentences"])) for group in order}
            sentences = {
                letter: groups[group]["sentences"][picks[group]] for letter, group in zip(template.letters, order)
            }
            asked = rng.choice(names)
            answer = template.letters[order.index(asked)]
            target = rng.choice(template.letters)
            variant = rng.choice(variants)
            target_group = order[template.letters.index(target)]
            other_group = order[1 - template.letters.index(target)]
            meta = {
                "topic_pair": pair,
                "question_group": asked,
                "sentence_id": f"{target_group}-{picks[target_group]:02d}",
                "other_sentence_id": f"{other_group}-{picks[other_group]:02d}",
                "sentence": sentences[target],
                "sentence_tokens": len(tokenizer.encode(sentences[target], add_special_tokens=False)),
            }
            fields = {
                "sentence_a": sentences[template.letters[0]],
                "sentence_b": sentences[template.letters[1]],
                "topic": groups[asked]["topic"],
            }
            trials.append(_trial(tokenizer, template, variant, fields, sentences, target, answer, meta))
    return _numbered(trials)


def _other(kind: str) -> str:
    return PERTURBATIONS[1 - PERTURBATIONS.index(kind)]


def _bucket_rows(pool: pd.DataFrame, bucket: int) -> list[dict]:
    rows = pool[pool.sentence_tokens == bucket].to_dict("records")
    if not rows:
        raise prompts.PromptError(f"the sentence pool has no sentence of {bucket} tokens")
    return rows


def _quoted_spans(tokenizer, text: str, sentences: list[str]) -> tuple[list[tuple[int, int]], int]:
    """Token spans of quoted sentences, located in order (a sentence may repeat: teaching pairs); and the
    prompt length."""
    ids, offsets = prompts.tokenize(tokenizer, text)
    spans, start = [], 0
    for sentence in sentences:
        char_start, char_end = prompts.find_char_span(text, f'"{sentence}"', start=start)
        spans.append(prompts.char_to_token_span(offsets, char_start + 1, char_end - 1))
        start = char_end
    return spans, len(ids)


def _options(template, order: list[str], texts: dict[str, str]) -> dict:
    return {f"option_{letter.lower()}": texts[kind] for letter, kind in zip(template.letters, order)}


def _classed(tokenizer, text: str, sentences: list[str], kinds: list[str], meta: dict) -> dict:
    """A trial whose sentences are quoted in the prompt, the last one being the test span."""
    spans, n_prompt_tokens = _quoted_spans(tokenizer, text, sentences)
    test_start, test_end = spans[-1]
    return {
        **meta,
        "n_perturbed_tokens": test_end - test_start,
        "n_prompt_tokens": n_prompt_tokens,
        "spans": [
            {"start": a, "end": b, "kind": kind, "test": i == len(spans) - 1}
            for i, ((a, b), kind) in enumerate(zip(spans, kinds))
        ],
        "text": text,
    }


def zero_shot_trials(tokenizer, template, pool, aliases: Aliases, settings: dict, seed: int) -> list[dict]:
    """`samples_per_condition` trials per class (single_class, the paper's runs: accuracy is the class's recall)
    or in total, balanced and shuffled (mixed); the same base trials (sentence, variant, option order,
    descriptions) are rendered under every alias."""
    rng = random.Random(derive_seed(seed, "zero_shot"))
    rows = _bucket_rows(pool, settings["bucket"])
    n = settings["samples_per_condition"]
    if settings["mode"] == "single_class":
        classes = [kind for kind in PERTURBATIONS for _ in range(n)]
    else:
        classes = [PERTURBATIONS[i % 2] for i in range(n)]
        rng.shuffle(classes)
    base = [
        {
            "kind": kind,
            "row": rng.choice(rows),
            "variant": rng.choice(sorted(template.variants)),
            "order": rng.sample(PERTURBATIONS, 2),
            "drawn": {k: rng.choice(aliases.pool[k]) for k in PERTURBATIONS},
        }
        for kind in classes
    ]
    trials = []
    for alias in aliases.names(settings["aliases"]):
        for index, b in enumerate(base):
            texts = {k: aliases.option(alias, k, b["drawn"][k]) for k in PERTURBATIONS}
            fields = {"sentence": b["row"]["sentence"], **_options(template, b["order"], texts)}
            text = prompts.render(tokenizer, prompts.messages(template, b["variant"], [("turns", fields)]))
            answer = template.letters[b["order"].index(b["kind"])]
            meta = {
                "alias": alias,
                "alias_group": aliases.entries[alias]["group"],
                "template_variant": b["variant"],
                "sentence_id": b["row"]["sentence_id"],
                "sentence": b["row"]["sentence"],
                "sentence_tokens": settings["bucket"],
                "target": b["kind"],
                "answer": answer,
                "base_id": str(index),
            }
            trials.append(_classed(tokenizer, text, [b["row"]["sentence"]], [b["kind"]], meta))
    return _numbered(trials)


def few_shot_trials(tokenizer, template, pool, aliases: Aliases, settings: dict, seed: int) -> list[dict]:
    """Per k: `samples_per_condition` base trials, half with a dropout test then half noise (as the paper), each
    rendered under every label condition and alias. Options show bare alias words (`none`: canonical names
    with pool descriptions); swapped labels are still scored against the true perturbation."""
    rng = random.Random(derive_seed(seed, "few_shot"))
    rows = _bucket_rows(pool, settings["bucket"])
    n = settings["samples_per_condition"]
    names = aliases.names(settings["aliases"])
    trials = []
    for k in settings["k"]:
        if k + 1 > len(rows):
            raise prompts.PromptError(f"few_shot k={k} needs {k + 1} distinct sentences; the pool has {len(rows)}")
        base = [
            {
                "kind": PERTURBATIONS[0] if i < n // 2 + n % 2 else PERTURBATIONS[1],
                "rows": rng.sample(rows, k + 1),  # one sentence per pair, then the test sentence
                "schedule": [kind for _ in range(k) for kind in rng.sample(PERTURBATIONS, 2)],
                "random_labels": [rng.choice(PERTURBATIONS) for _ in range(2 * k)],
                "variant": rng.choice(sorted(template.variants)),
                "order": rng.sample(PERTURBATIONS, 2),
                "drawn": {kind: rng.choice(aliases.pool[kind]) for kind in PERTURBATIONS},
            }
            for i in range(n)
        ]
        for condition in settings["label_conditions"]:
            for alias in names:
                for index, b in enumerate(base):
                    trial = _few_shot_trial(tokenizer, template, aliases, alias, condition, k, b)
                    trials.append({**trial, "base_id": f"k{k}-{index}"})
    return _numbered(trials)


def _few_shot_trial(tokenizer, template, aliases, alias, condition, k, b) -> dict:
    labelled = {
        "correct": b["schedule"],
        "empty": b["schedule"],
        "swapped": [_other(kind) for kind in b["schedule"]],
        "random": b["random_labels"],
    }[condition]
    teaching = [b["rows"][i // 2]["sentence"] for i in range(2 * k)]
    test = b["rows"][-1]
    texts = {
        kind: aliases.option(alias, kind, b["drawn"][kind]) if alias == "none" else aliases.word(alias, kind)
        for kind in PERTURBATIONS
    }
    sequence = [("intro", {})]
    sequence += [("teaching", {"sentence": s, "label": aliases.word(alias, kind)}) for s, kind in zip(teaching, labelled)]
    sequence += [("test", {"sentence": test["sentence"], **_options(template, b["order"], texts)})]
    text = prompts.render(tokenizer, prompts.messages(template, b["variant"], sequence))
    kinds = ["none" if condition == "empty" else kind for kind in b["schedule"]] + [b["kind"]]
    meta = {
        "alias": alias,
        "alias_group": aliases.entries[alias]["group"],
        "k": k,
        "label_condition": condition,
        "teaching_schedule": ",".join(b["schedule"]),
        "teaching_labels": ",".join(labelled),
        "template_variant": b["variant"],
        "sentence_id": test["sentence_id"],
        "sentence": test["sentence"],
        "sentence_tokens": test["sentence_tokens"],
        "target": b["kind"],
        "answer": template.letters[b["order"].index(b["kind"])],
    }
    return _classed(tokenizer, text, [*teaching, test["sentence"]], kinds, meta)


def _numbered(trials: list[dict]) -> list[dict]:
    """Trial ids; a trial without a base (one rendering per draw) is its own base."""
    return [{"trial_id": i, **trial, "base_id": trial.get("base_id", str(i))} for i, trial in enumerate(trials)]


def build_trials(experiment: str, tokenizer, template, settings: dict, pool: pd.DataFrame | None, seed: int,
                 aliases: Aliases | None = None):
    if experiment == "zero_shot":
        return zero_shot_trials(tokenizer, template, pool, aliases, settings, seed)
    if experiment == "few_shot":
        return few_shot_trials(tokenizer, template, pool, aliases, settings, seed)
    if experiment == "localization":
        return localization_trials(
            tokenizer, template, pool, settings["buckets"], settings["samples_per_condition"], seed
        )
    if experiment == "localization_control":
        return control_trials(tokenizer, template, settings["samples_per_condition"], seed)
    raise ValueError(f"unknown experiment '{experiment}'; known: {EXPERIMENTS}")

