from dropnoise import density_pipeline, pipeline

pipeline.setup_logging(snakemake.log[0])
density_pipeline.build_corpus(
    snakemake.config, snakemake.input.sentences, snakemake.output[0], root=snakemake.scriptdir + "/../.."
)
