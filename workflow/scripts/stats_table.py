from dropnoise import pipeline

pipeline.setup_logging(snakemake.log[0])
pipeline.stats_table(
    snakemake.wildcards.table,
    list(snakemake.input.trials),
    snakemake.input.aliases,
    snakemake.params.settings,
    snakemake.output.csv,
    snakemake.output.tex,
)
