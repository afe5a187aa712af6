"""Checkpoint series: each checkpoint a registry entry's `checkpoints:` lists becomes a registry entry of its own,
so every existing rule runs on it as on any model (one folder, one `results/{key}/`, no twin rules).

The checkpoint of `olmo2-1b` at training step 1000 is the model key `olmo2-1b-step1000`: the series entry with
the checkpoint's own fields (an `hf` checkpoint's revision, optionally its repo_id; a `trained_tiny` checkpoint's
step) and the small localization run of `dynamics.localization` replacing the entry's localization settings and
grid. Keys stay plain registry names, so paths and wildcards need nothing new.
"""

from __future__ import annotations

from .config import ConfigError

KINDS = ("hf", "trained_tiny")
# Fields of a series entry that its checkpoints do not inherit.
SERIES_ONLY = ("checkpoints", "description")


def key(series: str, step: int) -> str:
    return f"{series}-step{step}"


def steps(models: dict, series: str) -> dict[str, int]:
    """Checkpoint key -> training step of one series, in step order."""
    return {key(series, p["step"]): p["step"] for p in sorted(models[series]["checkpoints"], key=lambda p: p["step"])}


def series_keys(models: dict) -> list[str]:
    return [name for name, entry in models.items() if entry.get("checkpoints")]


def _problems(series: str, entry: dict) -> list[str]:
    where = f"models.{series}.checkpoints"
    if entry["kind"] not in KINDS:
        return [f"{where}: only {' and '.join(KINDS)} entries have checkpoints (this one is {entry['kind']})"]
    found = []
    seen = set()
    for i, point in enumerate(entry["checkpoints"]):
        here = f"{where}[{i}] (step {point['step']})"
        if point["step"] in seen:
            found.append(f"{here}: step {point['step']} is listed twice")
        seen.add(point["step"])
        if entry["kind"] == "hf" and "revision" not in point:
            found.append(f"{here}: an hf checkpoint needs a revision (its Hub branch, tag or commit)")
        if entry["kind"] == "trained_tiny" and set(point) != {"step"}:
            found.append(f"{here}: a trained_tiny checkpoint is named by its step only (got {sorted(point)})")
    return found


def derive(series: str, entry: dict, point: dict, dynamics: dict) -> dict:
    """The registry entry of one checkpoint."""
    derived = {name: value for name, value in entry.items() if name not in SERIES_ONLY}
    small = dict(dynamics["localization"])
    grid = small.pop("grid", None)
    derived["settings"] = {**entry.get("settings", {}), "localization": {**entry.get("settings", {}).get("localization", {}), **small}}
    if grid is not None:
        derived["grids"] = {**entry.get("grids", {}), "localization": grid}
    return {**derived, **point, "checkpoint_of": series,
            "description": f"{entry.get('description', series)}, checkpoint at step {point['step']}"}


def expand(config: dict) -> dict:
    """The model registry with every checkpoint added as an entry; a bad checkpoint list raises ConfigError
    naming the entry (before any job, so before any model loads)."""
    models = config["models"]
    out = dict(models)
    problems = []
    for series in series_keys(models):
        entry = models[series]
        found = _problems(series, entry)
        problems += found
        if found:
            continue
        for point in entry["checkpoints"]:
            name = key(series, point["step"])
            derived = derive(series, entry, point, config["dynamics"])
            if name in models and models[name] != derived:  # an identical entry: the registry was expanded already
                problems.append(f"models.{series}.checkpoints: the checkpoint key '{name}' is already a registry entry")
            out[name] = derived
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return out
