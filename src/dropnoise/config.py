"""Checks of the configuration beyond its JSON schema, and the lookups the DAG makes in it.

The schema (workflow/schemas/config.schema.yaml) checks shapes and types; `check` checks what a schema cannot:
references between sections, files that must exist, strengths that must be valid. Both run when the Snakefile is
parsed, before any job (and so before any model) starts.
"""

from __future__ import annotations

import copy
import difflib

from pathlib import Path

import jsonschema
import yaml

from .labels import AliasError, load_aliases
from .sentences import pool_sources, source_key, user_path
from .vocabulary import PERTURBATIONS
from .tasks import EXPERIMENTS, conditions, expand_grid, shard

# Experiments whose strengths come from the model's strength grid (results/{model}/strength_grid.json).
GRID_EXPERIMENTS = ("zero_shot", "few_shot")


SHARD_BY = ("conditions", "trials")  # what an experiment's shards split; the first is the default

# The model-entry keys only one or some kinds read (every other key of the schema applies to all kinds). A key of
# another kind would be silently ignored, e.g. `revision` on a gguf_package entry, so it is an error.
KIND_KEYS = {
    "hf": {"repo_id", "revision", "checkpoints", "chat_template"},
    "local": {"path", "chat_template"},
    "gguf_package": {"module", "gguf_file"},
    "tiny": {"family", "tokenizer_from", "chat_template", "layers", "seed"},
    "trained_tiny": {"family", "tokenizer_from", "chat_template", "layers", "training", "checkpoints"},
}


# Keys that decide how and where jobs run, never what they compute (results do not depend on the batch size or on
# how the work is split into jobs).
SCHEDULING_KEYS = {
    "model": ("mem_mb", "runtime", "batch_size", "description"),  # not gpus: `dtype: auto` is bfloat16 on GPU
    "inference": ("batch_size", "gpu_request", "gres_type"),
    "density": ("batch_size",),
    "experiment": ("shards", "shard_by"),  # an experiment's settings, wherever they are given
}


def results_config(config: dict) -> dict:
    """The configuration less its SCHEDULING_KEYS: what a report caption's hash identifies, so that giving a job
    more memory or another batch size reruns no table or figure."""
    out = copy.deepcopy(config)
    entries = list(out.get("models", {}).values())
    experiments = [*out.get("experiments", {}).values(), out.get("dynamics", {}).get("localization", {}),
                   *(section for entry in entries for section in entry.get("settings", {}).values())]
    sections = [(out.get("inference", {}), "inference"), (out.get("density", {}), "density"),
                *((entry, "model") for entry in entries), *((section, "experiment") for section in experiments)]
    for section, kind in sections:
        for field in SCHEDULING_KEYS[kind]:
            section.pop(field, None)
    return out


class ConfigError(ValueError):
    """A configuration error; the message names the key and says what is wrong."""


def schema_problems(config: dict, schema_file: str | Path) -> list[str]:
    """Every violation of the JSON schema, one line each, as `key.path: what` (Snakemake's own validation stops at
    the first and prints the whole schema before it says where)."""
    schema = yaml.safe_load(Path(schema_file).read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)

    def where(error) -> str:
        path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path)
        return path.lstrip(".") or "config"

    return sorted({f"{where(error)}: {error.message}" for error in validator.iter_errors(config)} | set(_new_entry_typos(config)))


def _new_entry_typos(config: dict) -> list[str]:
    """An overlay entry under a misspelt model key is a new model without a `kind`: say which key was meant."""
    entries = config.get("models") if isinstance(config.get("models"), dict) else {}
    known = [key for key, entry in entries.items() if isinstance(entry, dict) and "kind" in entry]
    return [f"models.{key}: no `kind`, so a new model; did you mean '{close[0]}'? (an overlay changes an entry under "
            "its exact key)"
            for key, entry in entries.items() if isinstance(entry, dict) and "kind" not in entry
            and (close := difflib.get_close_matches(key, known, n=1))]


def check(config: dict, root: str | Path = ".") -> None:
    """Every problem of a schema-valid configuration, raised together. Files the configuration names (templates,
    aliases, sentence and corpus files, a local model) are looked for where the jobs read them, from the working
    directory (Snakemake's `--directory`); the chat templates the workflow ships, under its `root`."""
    root, here = Path(root), Path(".")
    models = config["models"]
    problems = []
    for key in config["run"]["models"]:
        if key not in models:
            problems.append(f"run.models: unknown model key '{key}'; known keys: {', '.join(sorted(models))}")
    for key, entry in models.items():
        if "checkpoint_of" not in entry:  # (a checkpoint's entry carries its series' fields and its own)
            problems += _foreign_keys(key, entry)
        if entry["kind"] in ("tiny", "trained_tiny"):
            source = models.get(entry["tokenizer_from"])
            if source is None or source["kind"] != "gguf_package":
                problems.append(
                    f"models.{key}.tokenizer_from: '{entry['tokenizer_from']}' must be the key of a gguf_package entry"
                )
        template = entry.get("chat_template")
        if template is not None and not (root / "data/chat_templates" / f"{template}.jinja").exists():
            shipped = sorted(p.stem for p in (root / "data/chat_templates").glob("*.jinja"))
            problems.append(f"models.{key}.chat_template: no file data/chat_templates/{template}.jinja (the name, "
                            f"without .jinja: {', '.join(shipped)}, or a file of your own there)")
        if entry["kind"] == "local" and not (user_path(entry["path"]) / "config.json").is_file():
            problems.append(f"models.{key}.path: '{entry['path']}' ({user_path(entry['path']).resolve()}) is not a model "
                            "folder (no config.json in it; a folder written by save_pretrained, or a downloaded Hub "
                            "snapshot)")
        for experiment in entry.get("grids", {}):  # (settings: the schema names their experiments)
            if experiment not in EXPERIMENTS:
                problems.append(f"models.{key}.grids: unknown experiment '{experiment}'")
        runs_grid = any(e in config["run"]["experiments"] for e in GRID_EXPERIMENTS) and "checkpoint_of" not in entry
        if strength_grid(config, key) == "auto" and runs_grid:
            for needed in ("localization", "localization_control"):
                if needed not in config["experiments"]:
                    problems.append(f"models.{key}.strength_grid: auto needs experiments.{needed} (its results set the range)")
                    continue
                for kind in PERTURBATIONS:  # the range is read off the strengths above 0 that ran
                    if not any(v > 0 for v in expand_grid(grid(config, key, needed).get(kind, []))):
                        problems.append(f"models.{key}.strength_grid: auto needs a {kind} strength above 0 in the "
                                        f"{needed} grid (experiments.{needed}.grid or models.{key}.grids.{needed})")
    for name in config["run"]["experiments"]:
        if name not in config["experiments"]:
            problems.append(f"run.experiments: '{name}' has no settings under experiments.{name}")
    for name, section in config["experiments"].items():
        if not (here / section["template"]).exists():
            problems.append(f"experiments.{name}.template: file '{section['template']}' does not exist")
        problems += _sharding_problems(f"experiments.{name}", section)
    capacity = config["sentences"]["per_bucket"] * len(pool_sources(config["sentences"]))
    runs_few_shot = "few_shot" in config["run"]["experiments"] and "few_shot" in config["experiments"]
    for key, entry in models.items() if runs_few_shot else ():  # a trial shows k + 1 sentences of one length
        if "checkpoint_of" in entry:
            continue
        k = max(settings(config, key, "few_shot")["k"])
        if k + 1 > capacity:
            where = f"models.{key}.settings" if "k" in entry.get("settings", {}).get("few_shot", {}) else "experiments"
            problems.append(f"{where}.few_shot.k: k = {k} needs {k + 1} distinct sentences of one length; the pool "
                            f"holds at most {capacity} (sentences.per_bucket per source)")
    for key, entry in models.items():  # a model's own settings may change shards, samples or shard_by
        for name, own in entry.get("settings", {}).items():
            if name in config["experiments"] and {"shards", "samples_per_condition", "shard_by"} & set(own):
                where = "dynamics.localization" if "checkpoint_of" in entry else f"models.{key}.settings.{name}"
                problems += _sharding_problems(where, settings(config, key, name))
    for where, spec in _grids(config):
        for kind in PERTURBATIONS:
            problems += [f"{where}.{kind}: {problem}" for problem in map(_range_problem, spec.get(kind, [])) if problem]
            values = expand_grid(spec.get(kind, []))
            if kind == "dropout" and any(v >= 1 for v in values):
                problems.append(f"{where}.dropout: dropout rates must be < 1, got {max(values)}")
    aliases = None
    aliases_path = here / config["aliases"]
    if not aliases_path.exists():
        problems.append(f"aliases: file '{config['aliases']}' does not exist")
    else:
        try:
            aliases = load_aliases(aliases_path)
        except AliasError as err:
            problems.append(f"aliases: {err}")
        else:
            for key, entry in models.items():  # every entry: a target can name a model that run.models does not
                for name in GRID_EXPERIMENTS:
                    if name not in config["experiments"]:
                        continue
                    own = "aliases" in entry.get("settings", {}).get(name, {})
                    where = (f"models.{entry.get('checkpoint_of', key)}.settings.{name}.aliases" if own
                             else f"experiments.{name}.aliases")
                    try:
                        aliases.names(settings(config, key, name)["aliases"])
                    except AliasError as err:
                        problems.append(f"{where}: {err}")
            for field in ("emphasis", "flipped_labels"):
                unknown = [a for a in config["figures"][field] if a not in aliases.entries]
                if unknown:
                    problems.append(f"figures.{field}: unknown alias(es) {unknown}; see {config['aliases']}")
    if config["probes"]["enabled"]:
        captured = config["probes"].get("aliases") or []
        if captured and aliases is not None and "zero_shot" in config["experiments"]:
            for key in models:  # every entry: a target can name a model that run.models does not
                ran = _alias_names(aliases, settings(config, key, "zero_shot"))
                for alias in (a for a in captured if ran is not None and a not in ran):
                    problems.append(f"probes.aliases: '{alias}' is not among the zero_shot aliases of {key}")
        for name in config["probes"]["experiments"]:
            if name not in config["run"]["experiments"]:
                problems.append(f"probes.experiments: '{name}' is not in run.experiments (its runs are what is captured)")
        if config["probes"]["steering"]["enabled"]:
            problems += _steering_problems(config, aliases)
    problems += _dynamics_problems(config)
    sources = pool_sources(config["sentences"])
    for i, source in enumerate(sources):
        where = source_key(i)
        if source["source"] == "file" and not user_path(source["path"]).exists():
            problems.append(f"{where}.path: file '{source['path']}' does not exist")
    kinds = [source["source"] for source in sources]
    if len(set(kinds)) < len(kinds):
        problems.append(f"sentences.mix: sources {kinds} repeat a kind; the pool's `source` column must tell them apart")
    corpus = config["density"]["corpus"]
    if config["density"]["enabled"] and corpus["source"] == "file" and not user_path(corpus["path"]).exists():
        problems.append(f"density.corpus.path: file '{corpus['path']}' does not exist")
    if problems:  # once each (every checkpoint of a series shares its dynamics settings)
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(dict.fromkeys(problems)))


def _foreign_keys(key: str, entry: dict) -> list[str]:
    kind = entry["kind"]
    return [
        f"models.{key}.{name}: only {' and '.join(k for k, keys in KIND_KEYS.items() if name in keys)} entries read "
        f"this key, and this entry is {kind}"
        for name in sorted(set(entry) - KIND_KEYS[kind]) if any(name in keys for keys in KIND_KEYS.values())
    ]


def _sharding_problems(where: str, section: dict) -> list[str]:
    """Sharded by trials, every shard needs a base trial: each experiment has at least samples_per_condition."""
    by = section.get("shard_by", SHARD_BY[0])
    if by not in SHARD_BY:
        return [f"{where}.shard_by: '{by}' is neither 'conditions' nor 'trials'"]
    if by == "trials" and section["shards"] > section["samples_per_condition"]:
        return [f"{where}.shards: {section['shards']} shards by trials but only {section['samples_per_condition']} "
                "samples_per_condition (lower shards, or set shard_by: conditions)"]
    return []


def _steering_problems(config: dict, aliases) -> list[str]:
    """Steering reads the captured zero-shot runs of one alias at one grid rank; 0 is every curve's reference."""
    steering = config["probes"]["steering"]
    if "zero_shot" not in config["probes"]["experiments"]:
        return ["probes.steering: needs zero_shot in probes.experiments (vectors come from its captured activations); "
                "or set probes.steering.enabled: false"]
    problems = []
    if "zero_shot" not in config["experiments"]:
        return problems  # reported as a probes.experiments / run.experiments problem
    if 0 not in steering["scales"]:
        problems.append("probes.steering.scales: must include 0 (the unsteered reference of every curve and of the guard)")
    captured = config["probes"].get("aliases")
    if captured is not None and steering["alias"] not in captured:
        problems.append(f"probes.steering.alias: '{steering['alias']}' is not captured (probes.aliases: {captured})")
    for key in config["run"]["models"]:
        if key not in config["models"]:
            continue
        ran = None if aliases is None else _alias_names(aliases, settings(config, key, "zero_shot"))
        if ran is not None and steering["alias"] not in ran:
            problems.append(f"probes.steering.alias: '{steering['alias']}' is not among the zero_shot aliases of {key}")
        points = min(grid_points(config, key).values())
        if steering["level"] is not None and steering["level"] >= points:
            problems.append(f"probes.steering.level: {steering['level']} is beyond {key}'s {points}-point strength grid")
    return problems


def _alias_names(aliases, experiment_settings: dict) -> list[str] | None:
    """The alias names an experiment's settings expand to; None where they name an unknown alias (which the alias
    check reports), so that nothing is compared with them."""
    try:
        return aliases.names(experiment_settings["aliases"])
    except AliasError:
        return None


def _dynamics_problems(config: dict) -> list[str]:
    """Checkpoint dynamics run localization with activation capture on every checkpoint (checkpoints.py)."""
    dynamics, probes = config["dynamics"], config["probes"]
    problems = [
        f"dynamics.models: '{key}' is not a registry entry with a checkpoints: list"
        for key in dynamics["models"]
        if not config["models"].get(key, {}).get("checkpoints")
    ]
    if dynamics["models"] and not (probes["enabled"] and "localization" in probes["experiments"]):
        problems.append("dynamics.models: checkpoint dynamics need probes.enabled: true with localization in "
                        "probes.experiments (each checkpoint's localization run is captured and probed)")
    extra = set(dynamics["localization"].get("buckets", [])) - set(config["experiments"]["localization"]["buckets"])
    if extra:
        problems.append(f"dynamics.localization.buckets: {sorted(extra)} not in experiments.localization.buckets "
                        "(the sentence pools hold only those lengths)")
    return problems


def captured(config: dict, model: str) -> list[str]:
    """Experiments whose runs capture activations: a checkpoint runs localization only."""
    return ["localization"] if "checkpoint_of" in config["models"][model] else config["probes"]["experiments"]


def _range_problem(item) -> str | None:
    """A {start, stop, step} range must run upward and end on its stop (else it would expand to nothing, or past
    its stop)."""
    if not isinstance(item, dict):
        return None
    steps = (item["stop"] - item["start"]) / item["step"]
    where = f"range from {item['start']} to {item['stop']} by {item['step']}"
    if steps < 0:
        return f"{where} runs downward (stop below start): it would hold no strength"
    if abs(steps - round(steps)) > 1e-6:
        return f"{where}: the step does not divide stop - start, so the last strength would not be the stop"
    return None


def _grids(config: dict):
    for name, section in config["experiments"].items():
        if "grid" in section:
            yield f"experiments.{name}.grid", section["grid"]
    for key, entry in config["models"].items():
        for name, grid in entry.get("grids", {}).items():
            yield f"models.{key}.grids.{name}", grid
        if isinstance(entry.get("strength_grid"), dict):
            yield f"models.{key}.strength_grid", entry["strength_grid"]


def settings(config: dict, model: str, experiment: str) -> dict:
    """An experiment's settings, with the model's own settings for it replacing keys (e.g. extended aliases)."""
    return {**config["experiments"][experiment], **config["models"][model].get("settings", {}).get(experiment, {})}


def template(config: dict, model: str, experiment: str) -> str:
    """The prompt template a model's trials of an experiment are rendered with (its own settings may replace it)."""
    return settings(config, model, experiment)["template"]


def strength_grid(config: dict, model: str):
    """`auto` or the model's explicit zero-shot/few-shot grid (the paper's, for the paper's models)."""
    return config["models"][model].get("strength_grid", "auto")


def grid_points(config: dict, model: str) -> dict[str, int]:
    grid = strength_grid(config, model)
    if grid == "auto":
        return dict.fromkeys(PERTURBATIONS, config["strength_grid"]["points"])
    return {kind: len(expand_grid(grid.get(kind, []))) for kind in PERTURBATIONS}


def grid(config: dict, model: str, experiment: str) -> dict:
    """The experiment's grid, with the model's own grid replacing it per perturbation where given."""
    base = dict(config["experiments"][experiment]["grid"])
    base.update(config["models"][model].get("grids", {}).get(experiment, {}))
    return base


def experiment_conditions(config: dict, model: str, experiment: str) -> list[dict]:
    """Localization conditions carry strengths; zero-/few-shot conditions carry indices into the model's strength
    grid (known only once auto grids are derived), resolved by `resolve_indices` when the shard runs."""
    if experiment not in GRID_EXPERIMENTS:
        return conditions(grid(config, model, experiment))
    points = grid_points(config, model)
    if experiment == "few_shot":
        return [{"dropout": i, "noise": j} for i in range(points["dropout"]) for j in range(points["noise"])]
    if settings(config, model, experiment)["mode"] == "mixed":
        if points["dropout"] != points["noise"]:
            raise ConfigError(f"models.{model}: zero_shot mode mixed pairs strengths by rank; give both grids the same length")
        return [{"dropout": i, "noise": i} for i in range(points["dropout"])]
    return [{kind: i} for kind in PERTURBATIONS for i in range(points[kind])]


def resolve_indices(conditions_: list[dict], strengths: dict) -> list[dict]:
    return [{kind: strengths[kind][index] for kind, index in c.items()} for c in conditions_]


def shard_by(config: dict, model: str, experiment: str, instead: str | None = None) -> str:
    """"conditions": each job runs all trials under some conditions (one run per condition, as the toolkit);
    "trials": each job runs some base trials under every condition, so the engine reuses a trial's unperturbed
    prefix across all of them. The rows are the same either way (scores up to float rounding, which batch
    composition never changes beyond). instead: this one in place of the configured one (cost estimates)."""
    return instead or settings(config, model, experiment).get("shard_by", SHARD_BY[0])


def shard_count(config: dict, model: str, experiment: str, by: str | None = None) -> int:
    """Configured shards (a model's settings may replace them); by conditions, never more than there are
    conditions (by trials, `check` keeps them within the base trials). by: the configured shard_by, or this one."""
    shards = settings(config, model, experiment)["shards"]
    if shard_by(config, model, experiment, by) == "trials":
        return shards
    return min(shards, len(experiment_conditions(config, model, experiment)))


def shard_conditions(config: dict, model: str, experiment: str, index: int, by: str | None = None) -> list[dict]:
    every = experiment_conditions(config, model, experiment)
    if shard_by(config, model, experiment, by) == "trials":
        return every
    return shard(every, index, shard_count(config, model, experiment, by))


def shard_trial_split(config: dict, model: str, experiment: str, index: int) -> list[int] | None:
    """[index, count] for tasks.shard_trials when the experiment is sharded by trials, else None (every trial)."""
    if shard_by(config, model, experiment) == "trials":
        return [index, shard_count(config, model, experiment)]
    return None


def sentence_buckets(config: dict, model: str | None = None) -> list[int]:
    """Every sentence length `model`'s pool must hold: those of the configured experiments, and those of the
    model's own settings (another model's own lengths are not drawn into its pool)."""
    buckets = set()
    for name, section in config["experiments"].items():
        for settings_ in (section, settings(config, model, name) if model else section):
            buckets.update(settings_.get("buckets", []))
            if "bucket" in settings_:
                buckets.add(settings_["bucket"])
    return sorted(buckets)
