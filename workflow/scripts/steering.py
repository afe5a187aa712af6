from dropnoise import pipeline

pipeline.setup_logging(snakemake.log[0])
pipeline.steering_table(
    snakemake.wildcards.model,
    snakemake.input.model,
    snakemake.input.prompts,
    snakemake.input.grid,
    list(snakemake.input.activations),
    snakemake.input.sentences,
    snakemake.config,
    snakemake.output[0],
    threads=snakemake.threads,
)
