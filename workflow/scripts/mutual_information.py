from dropnoise import pipeline

pipeline.setup_logging(snakemake.log[0])
experiments = snakemake.params.experiments
pipeline.mutual_information(
    snakemake.params.settings,
    snakemake.params.seed,
    {e: snakemake.input[f"template_{e}"] for e in experiments},
    {e: list(snakemake.input[f"activations_{e}"]) for e in experiments},
    {e: snakemake.input[f"trials_{e}"] for e in experiments},
    snakemake.input.probes,
    snakemake.output[0],
)
