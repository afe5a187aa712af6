"""Shared fixtures: tiny random models of every supported family, and real tokenizers (no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from dropnoise import models, stats

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = sorted(models.TINY_CONFIG_CLASSES)
CHAT_TEMPLATES = sorted(p.stem for p in (ROOT / "data/chat_templates").glob("*.jinja"))


@pytest.fixture(scope="session")
def paper_config() -> dict:
    return yaml.safe_load((ROOT / "config.yaml").read_text())


@pytest.fixture(scope="session")
def smol_tokenizer(paper_config):
    """SmolLM2-135M-Instruct's tokenizer and ChatML template, read from the packaged GGUF."""
    return models.package_tokenizer(paper_config["models"]["smollm2-135m"])


def build_tiny(family: str, vocab_size: int = 256, n_layers: int = 2, seed: int = 0, window: int = 16):
    torch.manual_seed(seed)
    config = models.tiny_config(family, vocab_size, n_layers, window)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


@pytest.fixture(params=FAMILIES)
def tiny_model(request):
    return build_tiny(request.param)


def kish_design_effect(correct, groups) -> float:
    """One cell's design effect by sentence, 1 + (m_w - 1) rho, from its own rows (rho = 1 where they estimate
    none): what the tables' design effects reduce to for a cell of one-way clustering."""
    num, den, size = stats.icc_terms(correct, groups)
    rho = stats.own_icc(num, den)
    return max(1.0, 1 + (size - 1) * (1.0 if np.isnan(rho) else rho))
