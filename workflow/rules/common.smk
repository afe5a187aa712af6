# Validation, wildcard constraints and every input/param function of the DAG. Library: src/dropnoise.
import os
import re

import yaml

from snakemake.utils import validate

try:
    import dropnoise.checkpoints as dncheckpoints
    import dropnoise.config as dnconfig
    from dropnoise.labels import load_aliases
    from dropnoise.outputs import config_hash
    from dropnoise.vocabulary import POOL_EXPERIMENTS, STATS_TABLES
except ImportError as err:
    raise ImportError(
        "the dropnoise library is not installed in this Python; run `make install` (or `pip install -e .`)"
    ) from err

SCHEMA = os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml")
if problems := dnconfig.schema_problems(config, SCHEMA):
    # With --configfile, Snakemake skips a default config.yaml it cannot find without a word: say so first.
    missing = [] if os.path.exists("config.yaml") else [
        "no config.yaml in the working directory (the paper's configuration, which presets and overlays extend): "
        "run snakemake from the repository root, or give this directory config.yaml and data/ (links will do)"]
    raise dnconfig.ConfigError("invalid configuration:\n  " + "\n  ".join(missing + problems))
validate(config, schema=SCHEMA)  # fills in the schema's defaults
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
    table="|".join(STATS_TABLES),


ALIASES = load_aliases(config["aliases"])
# Figures -> the experiment whose results they draw. Paper figures put every model in one figure; model figures
# are drawn per model (paper_figures/{model}/).
PAPER_FIGURES = {
    "fig2_localization": "localization",
    "fig2_localization_by_length": "localization",
    "fig3_control": "localization_control",
    "fig5_few_shot_by_k": "few_shot",
    "equivalence_map": "localization",
}
EQUIVALENCE_TABLES = ("equivalence_curves", "equivalence_pairs", "equivalence_mapping")
MODEL_FIGURES = {"fig4_zero_shot": "zero_shot", "fig5_few_shot_heatmap": "few_shot", "fig6_flipped_labels": "few_shot"}
# Report captions, one per figure and table (workflow/report/captions.yaml).
with open(os.path.join(workflow.basedir, "workflow", "report", "captions.yaml")) as handle:
    CAPTIONS = yaml.safe_load(handle)


def not_a_model(wildcards):
    """The input of unknown_model (Snakefile): a target under a folder that is no model's names the models."""
    raise ValueError(
        f"{wildcards.top}/{wildcards.unknown}/{wildcards.path}: '{wildcards.unknown}' is not a model of this "
        f"configuration; its models are {', '.join(MODELS)} (add one under `models:`, or pass the config file that "
        "has it: --configfile my_models.yaml)"
    )


# results/ and paper_figures/ hold one folder per model, and results/stats/.
UNKNOWN_MODEL = "(?!(?:" + "|".join(re.escape(name) for name in [*MODELS, "stats"]) + ")/)[^/]+"


def all_targets():
    per_experiment = [
        f"results/{model}/{experiment}{suffix}"
        for model in config["run"]["models"]
        for experiment in config["run"]["experiments"]
        for suffix in (".csv", ".summary.csv")
    ]
    tables = [f"results/stats/{table}.{ext}" for table in STATS_TABLES if stats_trial_files(table) for ext in ("csv", "tex")]
    tables += [f"results/stats/{table}.csv" for table in EQUIVALENCE_TABLES if figure_models("equivalence_map")]
    figures = [f"paper_figures/{name}.{ext}" for name in PAPER_FIGURES if figure_models(name) for ext in ("pdf", "png")]
    figures += [
        f"paper_figures/{model}/{name}.{ext}"
        for name in MODEL_FIGURES
        for model in figure_models(name)
        for ext in ("pdf", "png")
    ]
    return per_experiment + tables + figures + density_targets() + probing_targets() + dynamics_targets()


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


def ran(model, experiment):
    return model in config["run"]["models"] and experiment in config["run"]["experiments"]


def aliases_of(model, experiment):
    return ALIASES.names(dnconfig.settings(config, model, experiment)["aliases"])


def has_canonical(model, experiment):
    groups = ALIASES.groups()
    return any(groups[a] == "canonical" for a in aliases_of(model, experiment))


def table_applies(table, model, experiment):
    """Whether a model x experiment has anything for a table: label pairs need a second label condition, alias
    controls a canonical alias and another one."""
    if not ran(model, experiment) or experiment not in STATS_TABLES[table]:
        return False
    if table == "label_pairs":
        return len(dnconfig.settings(config, model, experiment)["label_conditions"]) > 1
    if table == "alias_controls":
        return has_canonical(model, experiment) and len(aliases_of(model, experiment)) > 1
    return True


def stats_trial_files(table):
    return [
        f"results/{model}/{experiment}.csv"
        for model in config["run"]["models"]
        for experiment in STATS_TABLES[table]
        if table_applies(table, model, experiment)
    ]


def stats_inputs(wildcards):
    trials = stats_trial_files(wildcards.table)
    if not trials:
        raise ValueError(
            f"results/stats/{wildcards.table}.csv: no model in run.models ran an experiment this table tests "
            f"({', '.join(STATS_TABLES[wildcards.table])}, with the settings it needs; README \"Statistics, figures "
            "and the report\")"
        )
    return {"trials": trials, "aliases": config["aliases"]}


def figure_models(name):
    """The models a figure draws: those that ran its experiment (with a canonical alias, for few-shot figures, and
    correct teaching labels for the heatmap)."""
    experiment = PAPER_FIGURES.get(name) or MODEL_FIGURES[name]
    models = [m for m in config["run"]["models"] if ran(m, experiment)]
    if experiment == "few_shot":
        models = [m for m in models if has_canonical(m, experiment)]
    if name == "fig5_few_shot_heatmap":
        models = [m for m in models if "correct" in dnconfig.settings(config, m, experiment)["label_conditions"]]
    if name == "fig6_flipped_labels":
        models = [m for m in models if table_applies("label_pairs", m, experiment)]
    return models


def paper_figure_inputs(wildcards):
    name = wildcards.figure
    if name == "equivalence_map":
        return {table.split("_")[1]: f"results/stats/{table}.csv" for table in EQUIVALENCE_TABLES}
    return {model: f"results/{model}/{PAPER_FIGURES[name]}.summary.csv" for model in figure_models(name)}


def localization_tables(wildcards):
    """The localization tables of every model that ran it (the equivalence map's conditions)."""
    return [f"results/{model}/localization.csv" for model in figure_models("equivalence_map")]


def model_figure_inputs(wildcards):
    if wildcards.figure == "fig6_flipped_labels":
        return {"pairs": "results/stats/label_pairs.csv"}
    return {"summary": f"results/{wildcards.model}/{MODEL_FIGURES[wildcards.figure]}.summary.csv"}


def provenance(*ignored):
    """The sentence every report caption ends with: the model, and the configuration that produced the result (a
    rule's params, so a rerun trigger: hence only what decides results, `dnconfig.results_config`, not which files
    it came from or how its jobs were scheduled; `ignored`: sections a table cannot depend on, `figures`, so that
    restyling a figure reruns no statistics)."""

    def caption(wildcards):
        model = f"Model: **{wildcards.model}**. " if hasattr(wildcards, "model") else ""
        shown = {k: v for k, v in dnconfig.results_config(config).items() if k not in ignored}
        less = f" (less its {', '.join(ignored)} settings)" if ignored else ""
        stats = config["stats"]
        return (
            f"{model}Produced by the configuration with hash ``{config_hash(shown)}``{less}: "
            f"models {', '.join(config['run']['models'])}; experiments {', '.join(config['run']['experiments'])}; "
            f"scoring rule ``{stats['rule']}``; {stats['correction']} correction at alpha = {stats['alpha']} "
            f"(condition tests by {stats['condition_family']}); "
            f"seed {config['seed']}. Per-trial data: ``results/{{model}}/{{experiment}}.csv``."
        )

    return caption


# Registry fields that determine a model folder; scheduling fields (gpus, mem_mb, runtime, batch_size, grids)
# must not trigger a new download.
SOURCE_FIELDS = (
    "kind", "repo_id", "revision", "path", "module", "gguf_file", "family", "tokenizer_from", "chat_template", "layers",
    "seed", "training", "step",
)


def model_source(wildcards):
    entry = config["models"][wildcards.model]
    return {field: entry[field] for field in SOURCE_FIELDS if field in entry}


def inference_settings(wildcards):
    """What changes inference outputs besides the conditions (results do not depend on batch size)."""
    return {"device": config["inference"]["device"], "dtype": config["models"][wildcards.model].get("dtype", "auto")}


def experiment_settings(wildcards):
    """What the prompt set depends on: the experiment's settings less how its jobs split the work."""
    settings = dnconfig.settings(config, wildcards.model, wildcards.experiment)
    return {key: value for key, value in settings.items() if key not in ("shards", "shard_by")}


def model_folder(wildcards):
    return f"resources/models/{wildcards.model}"


def prompt_set_inputs(wildcards):
    template = dnconfig.template(config, wildcards.model, wildcards.experiment)  # a model's own, if set
    inputs = {"model": model_folder(wildcards), "template": template}
    if wildcards.experiment != "localization_control":
        inputs["sentences"] = f"results/{wildcards.model}/sentences.csv"
    if wildcards.experiment in dnconfig.GRID_EXPERIMENTS:
        inputs["aliases"] = config["aliases"]
    return inputs


def inference_inputs(wildcards):
    count = dnconfig.shard_count(config, wildcards.model, wildcards.experiment)
    if int(wildcards.shard) >= count:
        raise ValueError(f"{wildcards.model} runs {wildcards.experiment} in {count} shards, numbered 0 to {count - 1}")
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
    for source in [settings, *settings.get("mix", [])]:
        if source["source"] == "synthetic":
            inputs.setdefault("grammar", []).append(source.get("grammar", settings.get("grammar", "data/synthetic_grammar.yaml")))
        elif source["source"] == "file":
            inputs.setdefault("sentences", []).append(source["path"])
    return inputs


def shard_files(wildcards):
    count = dnconfig.shard_count(config, wildcards.model, wildcards.experiment)
    return [f"results/{wildcards.model}/shards/{wildcards.experiment}/{i}.csv" for i in range(count)]


def shard_conditions(wildcards):
    return dnconfig.shard_conditions(config, wildcards.model, wildcards.experiment, int(wildcards.shard))


def shard_trial_split(wildcards):
    return dnconfig.shard_trial_split(config, wildcards.model, wildcards.experiment, int(wildcards.shard))


def model_gpus(wildcards):
    """A model's GPUs as the `gpu` resource (sbatch --gpus=N), unless they are requested as gres."""
    return 0 if config["inference"].get("gpu_request") == "gres" else config["models"][wildcards.model].get("gpus", 0)


def model_gres(wildcards):
    """A model's GPUs as the `gres` resource (--gres=gpu[:type]:N) under inference.gpu_request: gres; else none."""
    gpus = config["models"][wildcards.model].get("gpus", 0)
    if config["inference"].get("gpu_request") != "gres" or not gpus:
        return ""
    return ":".join(["gpu", *filter(None, [config["inference"].get("gres_type")]), str(gpus)])


def model_mem_mb(wildcards, attempt):
    return config["models"][wildcards.model].get("mem_mb", 8000) * attempt


def model_runtime(wildcards, attempt):
    return config["models"][wildcards.model].get("runtime", 60) * attempt


def table_mem_mb(files, attempt, times, together=False):
    """Memory of a job that holds per-trial tables in pandas: `times` the CSV it holds at once, at least 4 GB.
    A whole table takes about three times its CSV (a paper-scale few-shot table, 3.0 GiB: 9.0 GiB to aggregate from
    its shards; benchmarks/README.md), hence 4 for aggregate; the summaries and statistics tables read only their
    columns (1.6 to 3.5 GiB for that table), hence 1.5; the density rules a third of the columns (2.0 GiB), hence 1.
    `together`: the files are held at once (a table's shards, the density rules' tables), else one after another
    (a statistics table's trial tables)."""
    sizes = [os.path.getsize(f) for f in files]
    held = sum(sizes) if together else max(sizes, default=0)
    return attempt * max(4000, int(times * held / 2**20))


def density_mem_mb(wildcards, input, attempt):
    """density_dependence and density_figures: every model's trial tables at once, a third of their columns."""
    return table_mem_mb(input.trials, attempt, 1, together=True)


# Data density (workflow/rules/density.smk): per model a density table; over every model and every run experiment
# that perturbs pool sentences, the regression table and its figures.
DENSITY_FIGURES = ("paper_figures/density_deciles", "paper_figures/density_odds_ratios")


def density_experiments():
    return [e for e in config["run"]["experiments"] if e in POOL_EXPERIMENTS]


def density_targets():
    if not config["density"]["enabled"]:
        return []
    targets = [f"results/{model}/density.csv" for model in config["run"]["models"]]
    if density_experiments():
        targets += ["results/stats/density_dependence.csv", *(f"{stem}.png" for stem in DENSITY_FIGURES)]
    return targets


def density_corpus_inputs(wildcards):
    """The targets to leave out, and the file the reference sentences are drawn from."""
    corpus = config["density"]["corpus"]
    inputs = {"sentences": f"results/{wildcards.model}/sentences.csv"}
    source = config["sentences"] if corpus["source"] == "pool" else corpus
    if source["source"] == "synthetic":
        inputs["grammar"] = config["sentences"].get("grammar", "data/synthetic_grammar.yaml")
    elif source["source"] == "file":
        inputs["sentences_file"] = source["path"]
    return inputs


def density_corpus_setting(wildcards):
    return {"corpus": config["density"]["corpus"], "seed": config["density"]["seed"], "pool": config["sentences"]}


def density_dependence_inputs(wildcards):
    """Trial tables model-major (the order density_pipeline.joined_tables reads them in) and density tables."""
    return {
        "trials": [
            f"results/{model}/{experiment}.csv"
            for model in config["run"]["models"]
            for experiment in density_experiments()
        ],
        "density": [f"results/{model}/density.csv" for model in config["run"]["models"]],
    }


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
    """Activations, trial tables and prompt templates (their option letters name the labels) per captured experiment."""
    inputs = {f"activations_{experiment}": paths for experiment, paths in activation_files(wildcards).items()}
    templates = {f"template_{e}": dnconfig.template(config, wildcards.model, e) for e in captured(wildcards)}
    return {**inputs, **templates, **trial_inputs(wildcards)}


def activation_mem_mb(wildcards, input, attempt):
    """Probes and mutual information hold every captured activation in float32 (twice the float16 files) plus
    per-fold copies and kernels: 2.2 times the activation files at the paper config's size (7.4 GiB for Qwen3-32B's
    3.3 GiB capture, benchmarks/probe_jobs.py), hence three times the inputs, at least 4 GB. Cluster jobs, since that
    is more than a submit host should load."""
    return attempt * max(4000, 3 * int(input.size_mb))


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


def capture_settings(wildcards):
    """The `probes:` settings that choose an inference job's captured rows and layers: a change re-runs the
    capturing jobs (the alias filter only those of zero-shot, the one experiment it applies to)."""
    keys = ["trials", "strengths", "layer_stride"] + (["aliases"] if wildcards.experiment == "zero_shot" else [])
    return {key: config["probes"].get(key) for key in keys}


def steering_settings(wildcards):
    """What changes steering.csv besides its inputs (rerun triggers)."""
    return {"steering": config["probes"]["steering"], "perturbation": config["perturbation"], "seed": config["seed"]}


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
    if not config["probes"]["enabled"]:
        raise WorkflowError(
            f"results/{wildcards.model}/dynamics.csv reads each checkpoint's probes, which are off: add "
            "`probes: {enabled: true}` (e.g. in an overlay passed with --configfile)"
        )
    keys = list(checkpoint_steps(wildcards))
    return {
        "summaries": [f"results/{key}/localization.summary.csv" for key in keys],
        "probes": [f"results/{key}/probes.csv" for key in keys],
        "mutual_information": [f"results/{key}/mutual_information.csv" for key in keys],
    }
