# Inside the model (README "Inside the model"; src/dropnoise/{capture,probes,mutual_information}.py): the residual
# stream captured during the inference runs, layer-wise probes, mutual information and their figures. Everything
# here exists only when `probes.enabled`.
PROBE_TABLES = ("probes", "represented_vs_reported", "mutual_information")
PROBE_FIGURES = ("probes_accuracy", "probes_represented_vs_reported", "mi_layers")
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
    tables = {"probes_accuracy": "probes", "probes_represented_vs_reported": "represented_vs_reported",
              "mi_layers": "mutual_information"}
    return {"table": f"results/{wildcards.model}/{tables[wildcards.probe_figure]}.csv"}


if config["probes"]["enabled"]:

    # The inference rule with one more output, for the captured experiments only (same job, same forward passes).
    use rule perturbed_inference as perturbed_inference_capture with:
        output:
            "results/{model}/shards/{experiment}/{shard}.csv",
            activations="results/{model}/shards/{experiment}/{shard}.activations.npz",
        log:
            "logs/perturbed_inference/{model}/{experiment}/{shard}.log",
        wildcard_constraints:
            experiment="|".join(CAPTURED),

    ruleorder: perturbed_inference_capture > perturbed_inference

    rule probes:
        input:
            unpack(probe_inputs),
        output:
            "results/{model}/probes.csv",
        log:
            "logs/probes/{model}.log",
        conda:
            "../../envs/probing.yaml"
        params:
            experiments=CAPTURED,
        localrule: True
        script:
            "../scripts/probes.py"

    rule represented_vs_reported:
        input:
            unpack(trial_inputs),
            probes="results/{model}/probes.csv",
        output:
            "results/{model}/represented_vs_reported.csv",
        log:
            "logs/represented_vs_reported/{model}.log",
        conda:
            "../../envs/probing.yaml"
        params:
            experiments=CAPTURED,
        localrule: True
        script:
            "../scripts/represented_vs_reported.py"

    rule mutual_information:
        input:
            unpack(probe_inputs),
            probes="results/{model}/probes.csv",
        output:
            "results/{model}/mutual_information.csv",
        log:
            "logs/mutual_information/{model}.log",
        conda:
            "../../envs/probing.yaml"
        params:
            experiments=CAPTURED,
        localrule: True
        script:
            "../scripts/mutual_information.py"

    rule probe_figure:
        input:
            unpack(probe_figure_inputs),
        output:
            pdf="paper_figures/{model}/{probe_figure}.pdf",
            png=report(
                "paper_figures/{model}/{probe_figure}.png",
                caption="../report/{probe_figure}.rst",
                category="Inside the model",
                subcategory="{model}",
                labels={"model": "{model}", "figure": "{probe_figure}"},
            ),
        log:
            "logs/probe_figures/{model}/{probe_figure}.log",
        conda:
            "../../envs/probing.yaml"
        wildcard_constraints:
            probe_figure="|".join(PROBE_FIGURES),
        localrule: True
        script:
            "../scripts/probe_figure.py"
