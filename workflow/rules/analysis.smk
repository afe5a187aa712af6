# aggregate reads the model folder's marker through the model module, hence the inference env.
rule aggregate:
    input:
        shards=shard_files,
        model=model_folder,
    output:
        trials="results/{model}/{experiment}.csv",
        provenance="results/{model}/{experiment}.provenance.json",
    log:
        "logs/aggregate/{model}/{experiment}.log",
    conda:
        "../../envs/inference.yaml",
    localrule: True
    script:
        "../scripts/aggregate.py"


rule summarize:
    input:
        "results/{model}/{experiment}.csv",
    output:
        "results/{model}/{experiment}.summary.csv",
    log:
        "logs/summarize/{model}/{experiment}.log",
    conda:
        "../../envs/analysis.yaml",
    localrule: True
    script:
        "../scripts/summarize.py"


rule stats_table:
    input:
        unpack(stats_inputs),
    output:
        csv=report(
            "results/stats/{table}.csv",
            caption="../report/caption.rst",
            category="Statistical tests",
            labels={"table": "{table}"},
        ),
        tex="results/stats/{table}.tex",
    log:
        "logs/stats/{table}.log",
    params:
        settings=config["stats"],
        caption=lambda wildcards: CAPTIONS[wildcards.table],
        provenance=provenance,
    conda:
        "../../envs/analysis.yaml",
    localrule: True
    script:
        "../scripts/stats_table.py"
