from dropnoise import density_pipeline, pipeline

pipeline.setup_logging(snakemake.log[0])
density_pipeline.build_dependence(
    snakemake.params.models,
    snakemake.params.experiments,
    snakemake.input.trials,
    snakemake.input.density,
    snakemake.config,
    snakemake.output.dependence,
    snakemake.output.contrast,
    snakemake.output.nll,
)
