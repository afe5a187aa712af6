"""The cost of a configuration: forward passes and tokens per model and experiment, as the DAG shards them.

Counts come from the config (trials per experiment, conditions per shard); prompt lengths from trials rendered with
a real tokenizer. A job runs each of its trials' unperturbed prefix once and one suffix per distinct condition
(the no-op conditions share one clean row), so the engine's tokens depend on how many conditions of a trial share a
job; the reference toolkit runs the whole prompt once per (trial, condition).
"""

from __future__ import annotations

from . import config as dnconfig
from . import tasks
from .labels import load_aliases
from .prompts import load_template


def trial_classes(config: dict, model: str, experiment: str) -> dict[str | None, int]:
    """Trials per class: zero-shot single-class trials only run under their own perturbation's conditions."""
    settings = dnconfig.settings(config, model, experiment)
    samples = settings["samples_per_condition"]
    if experiment == "localization":
        return {None: len(settings["buckets"]) * samples}
    if experiment == "localization_control":
        pairs = load_template(settings["template"], tasks.PLACEHOLDERS[experiment]).extra["topic_pairs"]
        return {None: len(pairs) * samples}
    aliases = len(load_aliases(config["aliases"]).names(settings["aliases"]))
    if experiment == "zero_shot":
        if settings["mode"] == "single_class":
            return {"dropout": aliases * samples, "noise": aliases * samples}
        return {None: aliases * samples}
    return {None: len(settings["k"]) * len(settings["label_conditions"]) * aliases * samples}


def _is_clean(condition: dict) -> bool:
    return all(value == 0 for key, value in condition.items() if key != "target")


def passes(config: dict, model: str, experiment: str, shard_by: str | None = None) -> dict[str, int]:
    """trials; passes (one per trial and condition, the reference's count); distinct rows the engine computes
    (a job's no-op conditions once per trial); prefix runs (once per trial and job). Zero-/few-shot conditions are
    grid indices here; an index is clean only in a configured grid with a 0. shard_by: "conditions" or "trials"
    (each trial meets all its conditions in one job) in place of the configured one."""
    classes = trial_classes(config, model, experiment)
    grid = dnconfig.strength_grid(config, model)
    strengths = None if grid == "auto" else {k: tasks.expand_grid(grid.get(k, [])) for k in ("dropout", "noise")}
    out = {"trials": sum(classes.values()), "passes": 0, "rows": 0, "prefix_runs": 0}
    by = dnconfig.shard_by(config, model, experiment, shard_by)
    # by trials, each trial meets every condition in exactly one job: the jobs count as one job of all trials
    jobs = 1 if by == "trials" else dnconfig.shard_count(config, model, experiment, by)
    for shard in (dnconfig.shard_conditions(config, model, experiment, i, by) for i in range(jobs)):
        known = experiment not in dnconfig.GRID_EXPERIMENTS or strengths is not None  # auto: indices only
        if experiment in dnconfig.GRID_EXPERIMENTS and known:
            shard = dnconfig.resolve_indices(shard, strengths)
        for kind, trials in classes.items():
            mine = [c for c in shard if kind is None or kind in c]
            clean = sum(map(_is_clean, mine)) if known else 0
            out["passes"] += trials * len(mine)
            out["rows"] += trials * (len(mine) - max(clean - 1, 0))
            out["prefix_runs"] += trials * bool(mine)
    return out


def flops(passes_: dict[str, int], prompt_tokens: float, suffix_tokens: float, matmul_params: int,
          head_params: int) -> dict[str, float]:
    """Forward FLOPs (2 x weights x tokens; attention scores not counted) of the reference (whole prompt per
    pass, logits at every position) and of the engine (prefix once per trial and job, suffixes per distinct row,
    logits at the last position)."""
    reference = passes_["passes"] * prompt_tokens * 2 * (matmul_params + head_params)
    tokens = passes_["prefix_runs"] * (prompt_tokens - suffix_tokens) + passes_["rows"] * suffix_tokens
    engine = 2 * matmul_params * tokens + 2 * head_params * passes_["rows"]
    return {"reference": reference, "engine": engine, "engine_tokens": tokens}
