from pathlib import Path

from dropnoise import pipeline

pipeline.setup_logging(snakemake.log[0])
inputs = {name: path for name, path in snakemake.input.items() if name != "aliases"}
if "model" in snakemake.wildcards.keys():
    inputs["model"] = snakemake.wildcards.model
pipeline.paper_figure(
    snakemake.wildcards.figure,
    inputs,
    snakemake.config,
    snakemake.input.aliases,
    str(Path(snakemake.output.pdf).with_suffix("")),
)
