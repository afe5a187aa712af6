# Validation, wildcard constraints and every input/param function of the DAG. Library: src/dropnoise.
import os
import re

from snakemake.utils import validate

try:
    import dropnoise.checkpoints as dncheckpoints
    import dropnoise.config as dnconfig
except ImportError as err:
    raise ImportError(
        "the dropnoise library is not installed in this Python; run `make install` (or `pip install -e .`)"
    ) from err

validate(config, schema="../schemas/config.schema.yaml")
config["models"] = dncheckpoints.expand(config)  # every checkpoint of a series is a registry entry of its own
dnconfig.check(config, root=workflow.basedir)

MODELS = list(config["models"])
# Passed on to cluster jobs when set; neither is required (public models, the default cache). Never printed.
HF_ENVVARS = [name for name in ("HF_TOKEN", "HF_HOME") if name in os.environ]


envvars:
    *HF_ENVVARS,


EXPERIMENTS = list(config["experiments"])


wildcard_constraints:
    model="|".join(re.escape(m) for m in MODELS),
    experiment="|".join(EXPERIMENTS),
    shard=r"\d+",


def all_targets():
    return [
        f"results/{model}/{experiment}{suffix}"
        for model in config["run"]["models"]
        for experiment in config["run"]["experiments"]
        for suffix in (".csv", ".summary.csv")
    ] + probing_targets() + dynamics_targets()


def probing_targets():
    """Inside the model (workflow/rules/probing.smk), only when `probes.enabled`."""
    if not config["probes"]["enabled"]:
        return []
    return [
        path
        for model in config["run"]["models"]
        for path in [
            *(f"results/{model}/{table}.csv" for table in PROBE_TABLES),
            *(f"paper_figures/{model}/{figure}.{ext}" for figure in PROBE_FIGURES for ext in ("pdf", "png")),
        ]
    ]


# Registry fields that determine a model folder; scheduling fields (gpus, mem_mb, runtime, batch_size, grids)
# must not trigger a new download.
SOURCE_FIELDS = (
    "kind", "repo_id", "revision", "module", "gguf_file", "family", "tokenizer_from", "chat_template", "layers", "seed",
    "training", "step",
)


def model_source(wildcards):
    entry = config["models"][wildcards.model]
    return {field: entry[field] for field in SOURCE_FIELDS if field in entry}


def inference_settings(wildcards):
    """What changes inference outputs besides the conditions (results do not depend on batch size)."""
    return {"device": config["inference"]["device"], "dtype": config["models"][wildcards.model].get("dtype", "auto")}


def experiment_settings(wildcards):
    return dnconfig.settings(config, wildcards.model, wildcards.experiment)


def model_folder(wildcards):
    return f"resources/models/{wildcards.model}"


def prompt_set_inputs(wildcards):
    inputs = {"model": model_folder(wildcards), "template": config["experiments"][wildcards.experiment]["template"]}
    if wildcards.experiment != "localization_control":
        inputs["sentences"] = f"results/{wildcards.model}/sentences.csv"
    if wildcards.experiment in dnconfig.GRID_EXPERIMENTS:
        inputs["aliases"] = config["aliases"]
    return inputs


def inference_inputs(wildcards):
    inputs = {
        "model": model_folder(wildcards),
        "prompts": f"results/{wildcards.model}/prompts/{wildcards.experiment}.jsonl",
    }
    if wildcards.experiment in dnconfig.GRID_EXPERIMENTS:
        inputs["grid"] = f"results/{wildcards.model}/strength_grid.json"
    return inputs


def strength_grid_inputs(wildcards):
    """An auto grid reads the model's localization and topic-control summaries; a configured one reads nothing."""
    if dnconfig.strength_grid(config, wildcards.model) != "auto":
        return {}
    return {
        "localization": f"results/{wildcards.model}/localization.summary.csv",
        "control": f"results/{wildcards.model}/localization_control.summary.csv",
    }


def strength_grid_setting(wildcards):
    grid = dnconfig.strength_grid(config, wildcards.model)
    return {"grid": grid, "rule": config["strength_grid"]} if grid == "auto" else {"grid": grid}


def sentence_inputs(wildcards):
    """The model folder (its tokenizer counts tokens) and the source file the pool is drawn from."""
    settings = config["sentences"]
    inputs = {"model": model_folder(wildcards)}
    if settings["source"] == "synthetic":
        inputs["grammar"] = settings.get("grammar", "data/synthetic_grammar.yaml")
    elif settings["source"] == "file":
        inputs["sentences"] = settings["path"]
    return inputs


def shard_files(wildcards):
    count = dnconfig.shard_count(config, wildcards.model, wildcards.experiment)
    return [f"results/{wildcards.model}/shards/{wildcards.experiment}/{i}.csv" for i in range(count)]


def shard_conditions(wildcards):
    return dnconfig.shard_conditions(config, wildcards.model, wildcards.experiment, int(wildcards.shard))


def model_gpus(wildcards):
    return config["models"][wildcards.model].get("gpus", 0)


def model_mem_mb(wildcards, attempt):
    return config["models"][wildcards.model].get("mem_mb", 8000) * attempt


def model_runtime(wildcards, attempt):
    return config["models"][wildcards.model].get("runtime", 60) * attempt


# Inside the model (workflow/rules/probing.smk).
PROBE_TABLES = ("probes", "represented_vs_reported", "mutual_information")
# figure -> the table it draws
PROBE_FIGURES = {
    "probes_accuracy": "probes",
    "probes_represented_vs_reported": "represented_vs_reported",
    "mi_layers": "mutual_information",
}
CAPTURED = config["probes"]["experiments"]


def captured(wildcards):
    """The model's captured experiments (a checkpoint's: localization only)."""
    return dnconfig.captured(config, wildcards.model)


def activation_files(wildcards):
    """Every shard's activation file per captured experiment."""
    return {
        experiment: [
            f"results/{wildcards.model}/shards/{experiment}/{i}.activations.npz"
            for i in range(dnconfig.shard_count(config, wildcards.model, experiment))
        ]
        for experiment in captured(wildcards)
    }


def trial_inputs(wildcards):
    return {f"trials_{experiment}": f"results/{wildcards.model}/{experiment}.csv" for experiment in captured(wildcards)}


def probe_inputs(wildcards):
    inputs = {f"activations_{experiment}": paths for experiment, paths in activation_files(wildcards).items()}
    return {**inputs, **trial_inputs(wildcards)}


def probe_figure_inputs(wildcards):
    return {"table": f"results/{wildcards.model}/{PROBE_FIGURES[wildcards.probe_figure]}.csv"}


# Checkpoint dynamics (workflow/rules/dynamics.smk, src/dropnoise/checkpoints.py).
SERIES = dncheckpoints.series_keys(config["models"])
TRAINED = [key for key in SERIES if config["models"][key]["kind"] == "trained_tiny"]


def dynamics_targets():
    return [
        path
        for model in config["dynamics"]["models"]
        for path in (f"results/{model}/dynamics.csv", *(f"paper_figures/{model}/dynamics.{ext}" for ext in ("pdf", "png")))
    ]


def prepare_inputs(wildcards):
    """A trained_tiny entry (series or checkpoint) copies its checkpoint from the series' training run."""
    entry = config["models"][wildcards.model]
    if entry["kind"] != "trained_tiny":
        return {}
    return {"trained": f"resources/trained/{entry.get('checkpoint_of', wildcards.model)}"}


def training_inputs(wildcards):
    """The sentence source the tiny model is trained on (sentence_inputs without a model folder)."""
    return {name: path for name, path in sentence_inputs(wildcards).items() if name != "model"}


def checkpoint_steps(wildcards):
    return dncheckpoints.steps(config["models"], wildcards.model)


def dynamics_inputs(wildcards):
    """Per checkpoint, in step order: its localization summary, probes and mutual information."""
    keys = list(checkpoint_steps(wildcards))
    return {
        "summaries": [f"results/{key}/localization.summary.csv" for key in keys],
        "probes": [f"results/{key}/probes.csv" for key in keys],
        "mutual_information": [f"results/{key}/mutual_information.csv" for key in keys],
    }
