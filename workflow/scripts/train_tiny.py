from dropnoise import pipeline

pipeline.setup_logging(snakemake.log[0])
pipeline.train_tiny(snakemake.wildcards.model, snakemake.config, snakemake.output.checkpoints, snakemake.output.loss,
                    root=snakemake.scriptdir + "/../..", threads=snakemake.threads)
