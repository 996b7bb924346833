rule evaluate:
    input:
        data="results/prepare_data",
        checkpoint="results/train_baseline/{model}_x{scale}/model.pt",
        tables="results/profile_device",
        code=stage_code("evaluate"),
    output:
        metrics="results/evaluate/{model}_x{scale}.json",
    params:
        config=config_json("data", "budget.target", "latency.targets"),
    log:
        "logs/evaluate/{model}_x{scale}.log",
    benchmark:
        "benchmarks/evaluate/{model}_x{scale}.tsv"
    conda:
        "../envs/srnas.yaml"
    shell:
        "srnas evaluate --model {wildcards.model:q} --scale {wildcards.scale:q} --checkpoint {input.checkpoint:q}"
        " --data-dir {input.data:q} --tables {input.tables:q} --out {output.metrics:q} --config-json {params.config:q} --log {log:q}"
