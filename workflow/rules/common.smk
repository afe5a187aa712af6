# Validation, wildcard constraints and every input/param function of the DAG. Library: src/dropnoise.
import os
import re

from snakemake.utils import validate

try:
    import dropnoise.config as dnconfig
except ImportError as err:
    raise ImportError(
        "the dropnoise library is not installed in this Python; run `make install` (or `pip install -e .`)"
    ) from err

validate(config, schema="../schemas/config.schema.yaml")
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
    ] + probing_targets()


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
SOURCE_FIELDS = ("kind", "repo_id", "revision", "module", "gguf_file", "family", "tokenizer_from", "chat_template", "layers", "seed")


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
STEERING = config["probes"]["steering"]["enabled"]
PROBE_TABLES = ("probes", "represented_vs_reported", "mutual_information") + (("steering",) if STEERING else ())
# figure -> the table it draws
PROBE_FIGURES = {
    "probes_accuracy": "probes",
    "probes_represented_vs_reported": "represented_vs_reported",
    "mi_layers": "mutual_information",
    **({"steering_dose_response": "steering"} if STEERING else {}),
}
CAPTURED = config["probes"]["experiments"]


def activation_files(wildcards):
    """Every shard's activation file per captured experiment."""
    return {
        experiment: [
            f"results/{wildcards.model}/shards/{experiment}/{i}.activations.npz"
            for i in range(dnconfig.shard_count(config, wildcards.model, experiment))
        ]
        for experiment in CAPTURED
    }


def trial_inputs(wildcards):
    return {f"trials_{experiment}": f"results/{wildcards.model}/{experiment}.csv" for experiment in CAPTURED}


def probe_inputs(wildcards):
    inputs = {f"activations_{experiment}": paths for experiment, paths in activation_files(wildcards).items()}
    return {**inputs, **trial_inputs(wildcards)}


def probe_figure_inputs(wildcards):
    return {"table": f"results/{wildcards.model}/{PROBE_FIGURES[wildcards.probe_figure]}.csv"}


def steering_inputs(wildcards):
    """The captured zero-shot runs (prompts, strength grid, activations), the sentence pool (the perplexity guard's
    text) and the model."""
    return {
        "model": model_folder(wildcards),
        "prompts": f"results/{wildcards.model}/prompts/zero_shot.jsonl",
        "grid": f"results/{wildcards.model}/strength_grid.json",
        "activations": activation_files(wildcards)["zero_shot"],
        "sentences": f"results/{wildcards.model}/sentences.csv",
    }


def steering_settings(wildcards):
    """What changes steering.csv besides its inputs (rerun triggers)."""
    return {"steering": config["probes"]["steering"], "perturbation": config["perturbation"], "seed": config["seed"]}
