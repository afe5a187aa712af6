from dropnoise import pipeline

pipeline.setup_logging(snakemake.log[0])
pipeline.probe_figure(snakemake.wildcards.probe_figure, snakemake.wildcards.model, snakemake.input.table, snakemake.output.pdf)
