from dropnoise import pipeline

pipeline.setup_logging(snakemake.log[0])
pipeline.represented_vs_reported(
    snakemake.input.probes,
    {e: snakemake.input[f"trials_{e}"] for e in snakemake.params.experiments},
    snakemake.params.rule,
    snakemake.params.aliases,
    snakemake.output[0],
)
