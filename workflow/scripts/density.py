from dropnoise import density_pipeline, pipeline

pipeline.setup_logging(snakemake.log[0])
density_pipeline.build_density(
    snakemake.config, snakemake.input.sentences, snakemake.input.features, snakemake.output.csv, snakemake.output.facts
)
