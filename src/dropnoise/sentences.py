"""Sentence pools bucketed by length in the model's own tokens (the paper's 3, 7, 11, 15, 19, 23).

Sources:
- ``synthetic``: a seeded generator over our own grammar (data/synthetic_grammar.yaml); works offline;
- ``wikitext``: WikiText-103 train (the paper's source), through the `datasets` library where it can be reached;
- ``file``: any user file, one sentence per line.
Candidates are counted with `tokenizer.encode(s, add_special_tokens=False)` and kept when their count is exactly
a bucket; each bucket keeps up to `per_bucket` distinct sentences.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd
import yaml

SLOT = re.compile(r"\{([a-z_]+)\}")


class SentenceError(RuntimeError):
    """The sentence source cannot fill the requested buckets."""


class Grammar:
    """Templates with {slot} placeholders, each slot a list of fillers that may hold slots themselves."""

    max_depth = 4

    def __init__(self, path: str | Path):
        data = yaml.safe_load(Path(path).read_text())
        self.templates = data["templates"]
        self.slots = data["slots"]
        used = {name for text in self.templates + sum(self.slots.values(), []) for name in SLOT.findall(text)}
        missing = used - set(self.slots)
        if missing:
            raise SentenceError(f"{path}: undefined slot(s) {sorted(missing)}")

    def _expand(self, text: str, rng: random.Random, depth: int) -> str:
        if depth > self.max_depth:
            raise SentenceError(f"grammar recursion deeper than {self.max_depth} in {text!r}")
        return SLOT.sub(lambda m: self._expand(rng.choice(self.slots[m.group(1)]), rng, depth + 1), text)

    def sentences(self, seed: int) -> Iterator[str]:
        rng = random.Random(seed)
        while True:
            text = self._expand(rng.choice(self.templates), rng, 0)
            yield text[0].upper() + text[1:]


WIKITEXT_MARKUP = [(" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" , ", ", "), (" . ", ". "), (" ; ", "; "),
                   (" : ", ": "), (" 's", "'s"), (" n't", "n't"), ("( ", "("), (" )", ")"), (' " ', ' "')]


def detokenize(line: str) -> str:
    """Undo WikiText's tokenization markup (`@-@`, spaces before punctuation)."""
    for raw, text in WIKITEXT_MARKUP:
        line = line.replace(raw, text)
    return re.sub(r" ([.,;:!?])$", r"\1", line)


def pool_sources(settings: dict) -> list[dict]:
    """The sources of the sentence pool: the `sentences` section's own, then each of its `mix`."""
    return [settings, *settings.get("mix", [])]


def source_key(index: int) -> str:
    """Where the `index`-th of `pool_sources` is configured, for messages."""
    return "sentences" if index == 0 else f"sentences.mix[{index - 1}]"


def corpus_source(config: dict) -> dict:
    """The density reference corpus's source: the targets' own (`pool`), or the corpus section's."""
    corpus = config["density"]["corpus"]
    if corpus["source"] == "pool":
        return config["sentences"]
    return {"grammar": config["sentences"].get("grammar", "data/synthetic_grammar.yaml"), **corpus}


def configured_sources(config: dict) -> list[dict]:
    """Every source a run reads: the pool's and, with the density analysis on, its reference corpus's."""
    return pool_sources(config["sentences"]) + ([corpus_source(config)] if config["density"]["enabled"] else [])


NO_DATASETS = ("sentence source 'wikitext' needs the `datasets` package: `pip install -e '.[wikitext]'` (with "
               "--use-conda the inference env has it), or use `sentences: {source: synthetic}` or `source: file`.")


def require_readable(sources: list[dict]) -> None:
    """Stop before any download when a configured source cannot be read in this Python (wikitext without
    `datasets`), instead of in the sentence job after the model has been fetched."""
    if any(source["source"] == "wikitext" for source in sources):
        try:
            import datasets  # noqa: F401
        except ImportError as err:
            raise SentenceError(NO_DATASETS) from err


def wikitext_sentences(seed: int) -> Iterator[str]:
    """Sentences of WikiText-103 train (detokenized), split at sentence ends, headings and empty lines dropped,
    shuffled."""
    require_readable([{"source": "wikitext"}])
    from datasets import load_dataset

    try:
        lines = load_dataset("Salesforce/wikitext", "wikitext-103-raw-v1", split="train")["text"]
    except Exception as err:  # offline, or no datasets hub
        raise SentenceError(
            f"sentence source 'wikitext' needs WikiText-103 from the datasets hub, which is unreachable here "
            f"({type(err).__name__}: {err}). Use `sentences: {{source: synthetic}}` or `source: file`."
        ) from err
    sentences = [
        s.strip()
        for line in lines
        if line.strip() and not line.strip().startswith("=")
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", detokenize(line.strip()))
    ]
    random.Random(seed).shuffle(sentences)
    yield from sentences


def user_path(path: str | Path) -> Path:
    """A path the configuration gives (a sentence file, a local model): from the working directory, or from the
    home directory where it starts with ~."""
    return Path(path).expanduser()


def file_sentences(path: str | Path) -> Iterator[str]:
    path = user_path(path)
    if not path.exists():
        raise SentenceError(f"sentence file '{path}' does not exist")
    for line in path.read_text().splitlines():
        if line.strip():
            yield line.strip()


def bucket(
    candidates: Iterable[str], tokenizer, buckets: list[int], per_bucket: int, max_candidates: int
) -> pd.DataFrame:
    """Keep distinct candidates whose token count is exactly a bucket, until every bucket is full."""
    pools: dict[int, dict[str, None]] = {n: {} for n in buckets}
    for seen, sentence in enumerate(candidates):
        if seen >= max_candidates or all(len(pool) >= per_bucket for pool in pools.values()):
            break
        if "{" in sentence or "}" in sentence or "\n" in sentence:
            continue  # would break str.format of the templates
        n = len(tokenizer.encode(sentence, add_special_tokens=False))
        if n in pools and len(pools[n]) < per_bucket:
            pools[n][sentence] = None
    empty = [n for n, pool in pools.items() if not pool]
    if empty:
        raise SentenceError(f"no sentence of exactly {empty} tokens found among the first {max_candidates} "
                            "candidates; raise sentences.max_candidates, give the source more text, or drop that "
                            "length from the experiments' buckets")
    rows = [
        {"sentence_id": f"t{n:02d}-{i:05d}", "sentence_tokens": n, "sentence": s}
        for n, pool in pools.items()
        for i, s in enumerate(pool)
    ]
    return pd.DataFrame(rows)


def candidates(source: dict, seed: int, grammar_path: str | Path) -> Iterator[str]:
    kind = source["source"]
    if kind == "synthetic":
        return Grammar(grammar_path).sentences(seed)
    if kind == "wikitext":
        return wikitext_sentences(seed)
    if kind == "file":
        return file_sentences(source["path"])
    raise SentenceError(f"unknown sentence source '{kind}'")
