from dropnoise import pipeline

pipeline.setup_logging(snakemake.log[0])
pipeline.equivalence_map(
    list(snakemake.input.trials),
    snakemake.output.curves,
    snakemake.output.pairs,
    snakemake.output.mapping,
)
