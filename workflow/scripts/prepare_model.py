from dropnoise import pipeline

pipeline.setup_logging(snakemake.log[0])
pipeline.prepare_model(snakemake.wildcards.model, snakemake.config, snakemake.output[0], root=snakemake.scriptdir + "/../..",
                       trained=snakemake.input.get("trained"))
