# Checkpoint dynamics (README "Checkpoint dynamics"; src/dropnoise/{checkpoints,training,dynamics}.py): every
# checkpoint of a series is a registry entry of its own (`{series}-step{N}`, added in common.smk), so the usual
# rules build its localization run, probes and mutual information; the rules here train the local tiny series and
# join the checkpoints into one table and figure per series.


rule train_tiny:
    input:
        unpack(training_inputs),
    output:
        checkpoints=directory("resources/trained/{model}"),
        loss="results/{model}/training.csv",
    log:
        "logs/train_tiny/{model}.log",
    conda:
        "../../envs/inference.yaml"
    params:
        source=model_source,
        steps=checkpoint_steps,
        sentences=config["sentences"],
        seed=config["seed"],
    threads: 2
    resources:
        mem_mb=model_mem_mb,
        runtime=model_runtime,
    wildcard_constraints:
        model="|".join(re.escape(key) for key in TRAINED),
    script:
        "../scripts/train_tiny.py"


rule dynamics:
    input:
        unpack(dynamics_inputs),
    output:
        "results/{model}/dynamics.csv",
    log:
        "logs/dynamics/{model}.log",
    conda:
        "../../envs/probing.yaml"
    params:
        steps=checkpoint_steps,
    wildcard_constraints:
        model="|".join(re.escape(key) for key in SERIES),
    localrule: True
    script:
        "../scripts/dynamics.py"


if config["probes"]["enabled"]:

    # The figure rule of probing.smk, drawing the dynamics table.
    use rule probe_figure as dynamics_figure with:
        input:
            table="results/{model}/dynamics.csv",
        wildcard_constraints:
            probe_figure="dynamics",
            model="|".join(re.escape(key) for key in SERIES),
