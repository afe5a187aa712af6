"""Label permutations that respect the experiments' design, for permutation nulls and shuffled-label baselines.

Rows of one trial, base trial or sentence are not independent (a trial's perturbed and clean rows, a zero-shot base
trial rendered under several aliases), so a label may only move where the design could have put it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _blocks_with_both(blocks: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per item: whether its block holds both labels."""
    return pd.Series(labels).groupby(blocks).transform("nunique").to_numpy() > 1


def null_labels(labels: np.ndarray, units: list[np.ndarray], permutations: int, seed: int) -> np.ndarray:
    """[m, permutations] label vectors under the null the design supports.

    `units`: each row's keys from the finest unit to the coarsest (a trial, its base trial, its sentence). Rows of
    a finest unit that carries both labels (a trial's perturbed and clean rows) trade labels among themselves; a
    unit that carries one label trades it, as a whole, with the other units of its next-coarser unit, where those
    carry both labels (two base trials of one sentence); what carries one label up to the coarsest unit trades
    among all such. Shuffling single rows instead would count a unit's repeated rows (a rendering under several
    aliases) as independent evidence and make the null far too narrow. The units must nest (a base trial in one
    sentence).
    """
    labels = np.asarray(labels)
    codes = [pd.factorize(np.asarray(key), use_na_sentinel=False)[0] for key in units]
    steps = []  # (rows, each row's item, item labels, item blocks): items trade labels within their block
    rows = np.arange(len(labels))
    mixed = _blocks_with_both(codes[0], labels)
    steps.append((rows[mixed], np.arange(mixed.sum()), labels[mixed], codes[0][mixed]))
    rows, item = rows[~mixed], codes[0][~mixed]  # the rest: finest units with one label
    for depth, level in enumerate([*codes[1:], np.zeros(len(labels), int)], start=1):  # last: one block of the rest
        item = pd.factorize(item)[0]
        item_label = pd.Series(labels[rows]).groupby(item).first().to_numpy()
        blocks = pd.Series(level[rows]).groupby(item)
        if len(rows) and blocks.nunique().max() > 1:
            raise ValueError(f"units do not nest: a unit at level {depth - 1} spans several units at level {depth}")
        item_block = blocks.first().to_numpy()
        both = _blocks_with_both(item_block, item_label)
        steps.append((rows[both[item]], pd.factorize(item[both[item]])[0], item_label[both], item_block[both]))
        keep = ~both[item]
        rows, item = rows[keep], item_block[item[keep]]  # units with one label merge into their coarser unit
    rng = np.random.default_rng(seed)
    out = np.repeat(labels[:, None], permutations, axis=1)
    by_block = [np.argsort(item_block, kind="stable") for _, _, _, item_block in steps]
    for p in range(permutations):
        for (step_rows, step_item, item_label, item_block), places in zip(steps, by_block):
            shuffled = np.empty_like(item_label)  # each block's labels in a random order of its items
            shuffled[places] = item_label[np.lexsort((rng.random(len(item_label)), item_block))]
            out[step_rows, p] = shuffled[step_item]
    return out
