# aggregate reads the model folder's marker through the model module, hence the inference env. The table rules are
# cluster jobs: a paper-scale few-shot table takes 2 to 9 GB to hold (table_mem_mb), too much for a submit host.
rule aggregate:
    input:
        shards=shard_files,
        model=model_folder,
    output:
        trials="results/{model}/{experiment}.csv",
        provenance="results/{model}/{experiment}.provenance.json",
    log:
        "logs/aggregate/{model}/{experiment}.log",
    resources:
        mem_mb=lambda wildcards, input, attempt: table_mem_mb(input.shards, attempt, 4, together=True),
    conda:
        "../../envs/inference.yaml",
    script:
        "../scripts/aggregate.py"


rule summarize:
    input:
        "results/{model}/{experiment}.csv",
    output:
        "results/{model}/{experiment}.summary.csv",
    log:
        "logs/summarize/{model}/{experiment}.log",
    resources:
        mem_mb=lambda wildcards, input, attempt: table_mem_mb(input, attempt, 1.5),
    conda:
        "../../envs/analysis.yaml",
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
        provenance=provenance("figures"),
    resources:
        mem_mb=lambda wildcards, input, attempt: table_mem_mb(input.trials, attempt, 1.5),
    conda:
        "../../envs/analysis.yaml",
    script:
        "../scripts/stats_table.py"


# The dropout <-> noise equivalence map (src/dropnoise/equivalence.py; the paper's auxiliary notebook): which sigma
# makes a sentence as easy to localize as dropout rate p, per model x sentence length; its figure is a paper_figure.
rule equivalence_map:
    input:
        trials=localization_tables,
    output:
        curves="results/stats/equivalence_curves.csv",
        pairs=report(
            "results/stats/equivalence_pairs.csv",
            caption="../report/caption.rst",
            category="Statistical tests",
            labels={"table": "equivalence_pairs"},
        ),
        mapping=report(
            "results/stats/equivalence_mapping.csv",
            caption="../report/caption.rst",
            category="Statistical tests",
            labels={"table": "equivalence_mapping"},
        ),
    log:
        "logs/stats/equivalence_map.log",
    params:
        caption=CAPTIONS["equivalence_tables"],
        provenance=provenance("figures"),
    resources:
        mem_mb=lambda wildcards, input, attempt: table_mem_mb(input.trials, attempt, 1, together=True),
    conda:
        "../../envs/analysis.yaml",
    script:
        "../scripts/equivalence_map.py"
