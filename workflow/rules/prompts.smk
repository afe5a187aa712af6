rule sentences:
    input:
        unpack(sentence_inputs),
    output:
        "results/{model}/sentences.csv",
    log:
        "logs/sentences/{model}.log",
    conda:
        "../../envs/inference.yaml",
    params:
        settings=config["sentences"],
        buckets=lambda wildcards: dnconfig.sentence_buckets(config, wildcards.model),
        seed=config["seed"],
    script:
        "../scripts/sentences.py"


rule prompt_set:
    input:
        unpack(prompt_set_inputs),
    output:
        "results/{model}/prompts/{experiment}.jsonl",
    log:
        "logs/prompt_set/{model}/{experiment}.log",
    conda:
        "../../envs/inference.yaml",
    params:
        settings=experiment_settings,
        seed=config["seed"],
    script:
        "../scripts/prompt_set.py"


rule strength_grid:
    input:
        unpack(strength_grid_inputs),
    output:
        "results/{model}/strength_grid.json",
    log:
        "logs/strength_grid/{model}.log",
    conda:
        "../../envs/analysis.yaml"
    params:
        setting=strength_grid_setting,
    localrule: True
    script:
        "../scripts/strength_grid.py"
