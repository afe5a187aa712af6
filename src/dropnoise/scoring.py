"""Score next-token logits at the answer position against option letters, by the paper's three rules.

- primary: argmax over letters of the primary token (" A") logit (forced choice);
- aggregate: argmax over letters of the summed probability of the letter's variants ("A", " A", "a", " a");
- argmax: the full-vocabulary argmax token mapped to its letter, or OTHER (a non-letter answer is wrong).
Probabilities come from a float32 softmax over the full vocabulary.
"""

from __future__ import annotations

import torch

from .vocabulary import RULES

OTHER = "OTHER"


def score(logits: torch.Tensor, answers: list[str], tokens: dict[str, dict], decode) -> list[dict]:
    """One row per prompt. logits: [batch, vocab] at the last position; answers: the correct letter per row."""
    logits = logits.float()
    log_probs = torch.log_softmax(logits, dim=-1)
    probs = log_probs.exp()
    letters = list(tokens)
    primary_ids = [tokens[letter]["primary"] for letter in letters]
    aggregate = torch.stack([probs[:, tokens[letter]["variants"]].sum(dim=-1) for letter in letters], dim=-1)
    entropy = -(probs * log_probs).nan_to_num().sum(dim=-1)
    # The few numbers each row needs, moved to the CPU in one transfer each (not one per value and row: on a GPU
    # every transfer waits for the device).
    primary_logits, primary_probs, primary_log_probs, aggregate, entropy, argmax_ids = (
        t.cpu() for t in (logits[:, primary_ids], probs[:, primary_ids], log_probs[:, primary_ids], aggregate,
                          entropy, logits.argmax(dim=-1))
    )
    argmax_ids = argmax_ids.tolist()
    variant_to_letter = {tid: letter for letter in letters for tid in tokens[letter]["variants"]}
    rows = []
    for b, answer in enumerate(answers):
        i = letters.index(answer)
        others = [j for j in range(len(letters)) if j != i]
        predictions = {
            "primary": letters[int(primary_logits[b].argmax())],
            "aggregate": letters[int(aggregate[b].argmax())],
            "argmax": variant_to_letter.get(argmax_ids[b], OTHER),
        }
        row = {}
        for j, letter in enumerate(letters):
            row[f"logit_{letter}"] = float(primary_logits[b, j])
            row[f"prob_{letter}"] = float(primary_probs[b, j])
            row[f"sum_prob_{letter}"] = float(aggregate[b, j])
        for rule in RULES:
            row[f"pred_{rule}"] = predictions[rule]
            row[f"correct_{rule}"] = predictions[rule] == answer
        row["logit_diff"] = float(primary_logits[b, i] - torch.logsumexp(primary_logits[b, others], dim=0))
        row["log_prob_correct"] = float(primary_log_probs[b, i])
        row["argmax_token"] = decode([argmax_ids[b]])
        row["entropy"] = float(entropy[b])
        rows.append(row)
    return rows
