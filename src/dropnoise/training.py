"""A tiny language model trained from random initialisation, with checkpoints: the local stand-in for a public
checkpoint series (kind `trained_tiny`), so that checkpoint dynamics run end to end on a laptop CPU.

Next-token loss on our own sentence pool (the configured sentence source, drawn with its own seed), packed into
fixed-length blocks separated by the tokenizer's end-of-text token; AdamW; everything seeded. The softmax runs
over the tokens the text uses (about a thousand of SmolLM2's 49,152 for the synthetic grammar): the
full-vocabulary head would make each CPU step about 15 times slower, and tokens the text never uses would only be
pushed down. Those tokens keep their random embeddings. The initial weights are step 0. Each checkpoint is a complete model folder (weights, tokenizer, marker) written into a hidden sibling
and renamed into place, so a folder named `step{N}` is always complete.
"""

from __future__ import annotations

import logging
from itertools import islice
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM

from . import models, outputs

log = logging.getLogger(__name__)

HELD_OUT = 0.1  # share of the sentences kept out of training, for the held-out loss at every checkpoint


def blocks(sentences: list[str], tokenizer, length: int) -> torch.Tensor:
    """The sentences as one token stream (end-of-text between them), cut into rows of `length` tokens."""
    separator = tokenizer.eos_token_id
    stream = [t for s in sentences for t in [*tokenizer.encode(s, add_special_tokens=False), separator]]
    rows = len(stream) // length
    if rows == 0:
        raise models.ModelError(f"{len(sentences)} sentences make fewer than {length} tokens: raise training.sentences")
    return torch.tensor(stream[: rows * length]).view(rows, length)


def lm_loss(model, batch: torch.Tensor, vocabulary: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy with the softmax over `vocabulary` (sorted token ids) only."""
    hidden = model.get_decoder()(input_ids=batch).last_hidden_state[:, :-1]
    logits = hidden @ model.get_output_embeddings().weight[vocabulary].T
    targets = torch.searchsorted(vocabulary, batch[:, 1:].contiguous())
    return torch.nn.functional.cross_entropy(logits.reshape(-1, len(vocabulary)), targets.reshape(-1))


@torch.no_grad()
def mean_loss(model, data: torch.Tensor, batch_size: int, vocabulary: torch.Tensor) -> float:
    model.eval()
    losses = [lm_loss(model, batch, vocabulary).item() for batch in data.split(batch_size)]
    model.train()
    return sum(losses) / len(losses)


def save_checkpoint(model, tokenizer, folder: Path, key: str, entry: dict, step: int) -> None:
    with outputs.staged_folder(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        models.write_marker(tmp, key, entry, revision=revision(key, entry, step))


def revision(key: str, entry: dict, step: int) -> str:
    return f"trained:{key}:seed={entry['training']['seed']}:step={step}"


def train(key: str, entry: dict, tokenizer, sentences, chat_template: str | None, out: Path) -> pd.DataFrame:
    """Train `entry` (a trained_tiny registry entry) and save a checkpoint at each of its steps under `out`;
    returns the loss per checkpoint (mean training loss since the previous one, held-out loss)."""
    settings = entry["training"]
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    pool = list(islice(sentences, settings["sentences"]))
    cut = max(1, int(len(pool) * HELD_OUT))
    held_out = blocks(pool[:cut], tokenizer, settings["context"])
    data = blocks(pool[cut:], tokenizer, settings["context"])
    vocabulary = torch.unique(torch.cat([data.flatten(), held_out.flatten()]))
    torch.manual_seed(settings["seed"])
    config = models.tiny_config(entry["family"], len(tokenizer), entry.get("layers", 2))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["learning_rate"], weight_decay=0.01)
    order = torch.Generator().manual_seed(settings["seed"])
    saves = sorted(p["step"] for p in entry["checkpoints"])
    log.info("%s: %d parameters, %d training and %d held-out blocks of %d tokens over %d token types, "
             "checkpoints at %s", key, sum(p.numel() for p in model.parameters()), len(data), len(held_out),
             settings["context"], len(vocabulary), saves)
    rows, recent = [], []
    model.train()
    for step in tqdm(range(saves[-1] + 1), desc=f"training {key}", unit="step"):
        if step in saves:
            row = {"step": step, "train_loss": sum(recent) / len(recent) if recent else float("nan"),
                   "held_out_loss": mean_loss(model, held_out, settings["batch_size"], vocabulary)}
            save_checkpoint(model, tokenizer, out / f"step{step}", key, entry, step)
            log.info("step %d: train loss %.3f, held-out loss %.3f", step, row["train_loss"], row["held_out_loss"])
            rows.append(row)
            recent = []
        if step < saves[-1]:
            batch = data[torch.randint(len(data), (settings["batch_size"],), generator=order)]
            loss = lm_loss(model, batch, vocabulary)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            recent.append(loss.item())
    return pd.DataFrame(rows)
