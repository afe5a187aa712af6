rule perturbed_inference:
    input:
        unpack(inference_inputs),
    output:
        "results/{model}/shards/{experiment}/{shard}.csv",
    log:
        "logs/perturbed_inference/{model}/{experiment}/{shard}.log",
    conda:
        "../../envs/inference.yaml",
    params:
        conditions=shard_conditions,
        trials=shard_trial_split,
        perturbation=config["perturbation"],
        inference=inference_settings,
    threads: 4
    resources:
        gpu=model_gpus,
        gres=model_gres,
        mem_mb=model_mem_mb,
        runtime=model_runtime,
    script:
        "../scripts/perturbed_inference.py"
