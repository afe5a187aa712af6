from dropnoise import pipeline

pipeline.setup_logging(snakemake.log[0])
pipeline.run_shard(
    snakemake.wildcards.model,
    snakemake.input.model,
    snakemake.input.prompts,
    snakemake.wildcards.experiment,
    snakemake.params.conditions,
    snakemake.config,
    snakemake.output[0],
    threads=snakemake.threads,
    grid_file=snakemake.input.get("grid"),
    capture_file=snakemake.output.get("activations"),
    capture_settings=snakemake.params.get("capture"),
    trial_split=snakemake.params.trials,
)
