# dropnoise: rebuilds the results of "Language models recognize dropout and Gaussian noise applied to their
# activations" (arXiv 2604.17465). Targets are computed in workflow/rules/common.smk.
from snakemake.utils import min_version

min_version("9.19")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/prompts.smk"
include: "workflow/rules/inference.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/density.smk"
include: "workflow/rules/probing.smk"
include: "workflow/rules/dynamics.smk"


rule all:
    input:
        all_targets(),
    default_target: True


# A target under a folder that is no model's (a typo: results/qwen23b/zero_shot.csv) fails with the list of models
# instead of "No rule to produce"; it never runs.
rule unknown_model:
    input:
        not_a_model,
    output:
        "{top}/{unknown}/{path}",
    log:
        "logs/unknown_model/{top}/{unknown}/{path}.log",
    wildcard_constraints:
        top="results|paper_figures",
        unknown=UNKNOWN_MODEL,
        path=".+",
    localrule: True
