rule prepare_model:
    input:
        unpack(prepare_inputs),
    output:
        directory("resources/models/{model}"),
    params:
        source=model_source,
    log:
        "logs/prepare_model/{model}.log",
    conda:
        "../../envs/inference.yaml",
    localrule: True
    script:
        "../scripts/prepare_model.py"
