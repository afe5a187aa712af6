# Data-density dependence (README "Data density"; src/dropnoise/density*.py). On with `density: {enabled: true}`.


# May read WikiText from the datasets hub (corpus source wikitext), so it runs where the network is.
rule density_corpus:
    input:
        unpack(density_corpus_inputs),
    output:
        "results/{model}/density/corpus.csv",
    log:
        "logs/density_corpus/{model}.log",
    conda:
        "../../envs/inference.yaml"
    params:
        setting=density_corpus_setting,
    localrule: True
    script:
        "../scripts/density_corpus.py"


# Loads the model (clean NLL, and embeddings with encoder: model) and the sentence encoder: sized like inference.
rule density_features:
    input:
        model=model_folder,
        sentences="results/{model}/sentences.csv",
        corpus="results/{model}/density/corpus.csv",
    output:
        "results/{model}/density/features.npz",
    log:
        "logs/density_features/{model}.log",
    conda:
        "../../envs/inference.yaml"
    params:
        encoder=config["density"]["encoder"],
        inference=inference_settings,
    threads: 4
    resources:
        gpu=model_gpus,
        gres=model_gres,
        mem_mb=model_mem_mb,
        runtime=model_runtime,
    script:
        "../scripts/density_features.py"


rule density:
    input:
        sentences="results/{model}/sentences.csv",
        features="results/{model}/density/features.npz",
    output:
        csv="results/{model}/density.csv",
        facts="results/{model}/density.json",
    log:
        "logs/density/{model}.log",
    conda:
        "../../envs/density.yaml"
    params:
        bandwidth=config["density"]["bandwidth"],
    localrule: True
    script:
        "../scripts/density.py"


rule density_dependence:
    input:
        unpack(density_dependence_inputs),
    output:
        dependence=report(
            "results/stats/density_dependence.csv",
            caption="../report/caption.rst",
            category="Data density",
            labels={"table": "density_dependence"},
        ),
        contrast=report(
            "results/stats/density_source_contrast.csv",
            caption="../report/caption.rst",
            category="Data density",
            labels={"table": "density_source_contrast"},
        ),
        nll=report(
            "results/stats/density_nll.csv",
            caption="../report/caption.rst",
            category="Data density",
            labels={"table": "density_nll"},
        ),
    log:
        "logs/density_dependence.log",
    resources:
        mem_mb=density_mem_mb,
    conda:
        "../../envs/density.yaml"
    params:
        models=config["run"]["models"],
        experiments=density_experiments(),
        rule=config["density"]["rule"],
        permutations=config["density"]["permutations"],
        correction=config["stats"]["correction"],
        caption=CAPTIONS["density_tables"],
        provenance=provenance("figures"),
    script:
        "../scripts/density_dependence.py"


rule density_figures:
    input:
        unpack(density_dependence_inputs),
        dependence="results/stats/density_dependence.csv",
    output:
        deciles=report(
            "paper_figures/density_deciles.png",
            caption="../report/density_deciles.rst",
            category="Data density",
        ),
        deciles_pdf="paper_figures/density_deciles.pdf",
        odds_ratios=report(
            "paper_figures/density_odds_ratios.png",
            caption="../report/density_odds_ratios.rst",
            category="Data density",
        ),
        odds_ratios_pdf="paper_figures/density_odds_ratios.pdf",
    log:
        "logs/density_figures.log",
    resources:
        mem_mb=density_mem_mb,
    conda:
        "../../envs/density.yaml"
    params:
        models=config["run"]["models"],
        experiments=density_experiments(),
        provenance=provenance(),
    script:
        "../scripts/density_figures.py"
