from dropnoise import pipeline

pipeline.setup_logging(snakemake.log[0])
pipeline.dynamics_table(snakemake.params.steps, list(snakemake.input.summaries), list(snakemake.input.probes),
                        list(snakemake.input.mutual_information), snakemake.output[0])
