from dropnoise import pipeline

pipeline.setup_logging(snakemake.log[0])
pipeline.build_sentences(snakemake.input.model, snakemake.config, snakemake.output[0], root=snakemake.scriptdir + "/../..",
                         model=snakemake.wildcards.model)
