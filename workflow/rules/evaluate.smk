rule evaluate:
    input:
        data="results/prepare_data",
        checkpoint="results/train_baseline/{model}_x{scale}/model.pt",
        code=stage_code("evaluate"),
    output:
        metrics="results/evaluate/{model}_x{scale}.json",
    params:
        config=config_json("data"),
    log:
        "logs/evaluate/{model}_x{scale}.log",
    benchmark:
        "benchmarks/evaluate/{model}_x{scale}.tsv"
    conda:
        "../envs/srnas.yaml"
    shell:
        "srnas evaluate --model {wildcards.model} --scale {wildcards.scale} --checkpoint {input.checkpoint}"
        " --data-dir {input.data} --out {output.metrics} --config-json {params.config:q} --log {log}"
