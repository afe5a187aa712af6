"""One figure style for every plot of the workflow, sized for a paper column, saved as PDF and PNG.

Figures are pure functions of result tables; they call `figure()` for a sized canvas and `save()` to write both
formats atomically (an interrupted job never leaves a complete-looking figure).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from .outputs import atomic_path  # noqa: E402

COLUMN_WIDTH = 3.3  # inches: one column of a two-column paper
FULL_WIDTH = 6.9  # inches: both columns
DPI = 300
CHANCE_STYLE = {"color": "0.35", "linestyle": "--", "linewidth": 0.8}
STRENGTH_LABELS = {"dropout": "dropout rate p", "noise": "noise SD σ (activation units)"}


def apply() -> None:
    """Seaborn's paper context with small fonts that stay legible at column width."""
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=0.9)
    plt.rcParams.update({
        "figure.dpi": 100,
        "savefig.dpi": DPI,
        "savefig.bbox": "tight",
        "legend.frameon": False,
        "axes.titlesize": 8,
        "axes.labelsize": 8,
        "xtick.labelsize": 7,
        "ytick.labelsize": 7,
        "legend.fontsize": 7,
        "pdf.fonttype": 42,
    })


def figure(ncols: int = 1, nrows: int = 1, width: float = COLUMN_WIDTH, height: float | None = None, **kwargs):
    """A figure of `ncols` x `nrows` panels `width` inches wide; panels are about 3:4 unless `height` is given."""
    apply()
    height = height if height is not None else 0.75 * width / ncols * nrows
    return plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, **kwargs)


def save(fig, stem: str | Path) -> list[Path]:
    """Write `stem`.pdf and `stem`.png (each via a temporary file renamed into place) and close the figure."""
    stem = Path(stem)
    written = []
    for suffix in (".pdf", ".png"):
        path = stem.with_suffix(suffix)
        with atomic_path(path, suffix) as tmp:
            fig.savefig(tmp, format=suffix[1:])
        written.append(path)
    plt.close(fig)
    return written
