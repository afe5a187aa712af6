from dropnoise import density_pipeline, pipeline

pipeline.setup_logging(snakemake.log[0])
density_pipeline.build_features(
    snakemake.wildcards.model,
    snakemake.input.model,
    snakemake.config,
    snakemake.input.sentences,
    snakemake.input.corpus,
    snakemake.output[0],
    threads=snakemake.threads,
)
