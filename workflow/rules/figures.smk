# The paper's figures (src/dropnoise/figures.py): pure functions of the summaries and statistics tables, on CPU.
rule paper_figure:
    wildcard_constraints:
        figure="|".join(PAPER_FIGURES),
    input:
        unpack(paper_figure_inputs),
        aliases=config["aliases"],
    output:
        pdf="paper_figures/{figure}.pdf",
        png=report(
            "paper_figures/{figure}.png",
            caption="../report/caption.rst",
            category="Paper figures",
            labels={"figure": "{figure}"},
        ),
    log:
        "logs/figures/{figure}.log",
    params:
        caption=lambda wildcards: CAPTIONS[wildcards.figure],
        provenance=provenance(),
    conda:
        "../../envs/figures.yaml",
    localrule: True
    script:
        "../scripts/paper_figure.py"


rule model_figure:
    wildcard_constraints:
        figure="|".join(MODEL_FIGURES),
    input:
        unpack(model_figure_inputs),
        aliases=config["aliases"],
    output:
        pdf="paper_figures/{model}/{figure}.pdf",
        png=report(
            "paper_figures/{model}/{figure}.png",
            caption="../report/caption.rst",
            category="Paper figures",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "{figure}"},
        ),
    log:
        "logs/figures/{model}/{figure}.log",
    params:
        caption=lambda wildcards: CAPTIONS[wildcards.figure],
        provenance=provenance(),
    conda:
        "../../envs/figures.yaml",
    localrule: True
    script:
        "../scripts/paper_figure.py"
