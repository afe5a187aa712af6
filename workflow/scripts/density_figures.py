from pathlib import Path

from dropnoise import density_pipeline, pipeline

pipeline.setup_logging(snakemake.log[0])
density_pipeline.build_figures(
    snakemake.params.models,
    snakemake.params.experiments,
    snakemake.input.trials,
    snakemake.input.density,
    snakemake.input.dependence,
    snakemake.config,
    Path(snakemake.output.deciles).with_suffix(""),
    Path(snakemake.output.odds_ratios).with_suffix(""),
)
