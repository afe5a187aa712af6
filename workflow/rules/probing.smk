# Inside the model (README "Inside the model"; src/dropnoise/{capture,probes,mutual_information,steering}.py): the
# residual stream captured during the inference runs, layer-wise probes, mutual information, steering vectors and
# their figures. Everything here exists only when `probes.enabled`.

if config["probes"]["enabled"]:

    # The inference rule with one more output, for the captured experiments only (same job, same forward passes),
    # and the capture settings as one more param (the inherited params are kept).
    use rule perturbed_inference as perturbed_inference_capture with:
        output:
            "results/{model}/shards/{experiment}/{shard}.csv",
            activations="results/{model}/shards/{experiment}/{shard}.activations.npz",
        log:
            "logs/perturbed_inference/{model}/{experiment}/{shard}.log",
        params:
            capture=capture_settings,
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
            experiments=captured,
            settings={k: config["probes"][k] for k in ("folds", "C")},
            seed=config["seed"],
        resources:
            mem_mb=activation_mem_mb,
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
            experiments=captured,
            rule=config["stats"]["rule"],
            aliases=config["probes"].get("aliases"),
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
            experiments=captured,
            settings=config["probes"]["mutual_information"],
            seed=config["seed"],
        resources:
            mem_mb=activation_mem_mb,
        script:
            "../scripts/mutual_information.py"

    if STEERING:

        # Forward passes with the steering hook: an inference job (the model's GPUs, memory and runtime).
        rule steering:
            input:
                unpack(steering_inputs),
            output:
                "results/{model}/steering.csv",
            log:
                "logs/steering/{model}.log",
            conda:
                "../../envs/inference.yaml"
            params:
                settings=steering_settings,
                inference=inference_settings,
            threads: 4
            resources:
                gpu=model_gpus,
                gres=model_gres,
                mem_mb=model_mem_mb,
                runtime=model_runtime,
            script:
                "../scripts/steering.py"

    rule probe_figure:
        input:
            unpack(probe_figure_inputs),
        output:
            pdf="paper_figures/{model}/{probe_figure}.pdf",
            png=report(
                "paper_figures/{model}/{probe_figure}.png",
                caption="../report/caption.rst",
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
        params:
            caption=lambda wildcards: CAPTIONS[wildcards.probe_figure],
            provenance=provenance(),
        localrule: True
        script:
            "../scripts/probe_figure.py"
