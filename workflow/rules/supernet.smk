# Stage 1 of the method: the weight-sharing supernet (sandwich rule, in-place distillation).


rule train_supernet:
    input:
        data="results/prepare_data",
        code=stage_code("supernet"),
    output:
        supernet="results/train_supernet/supernet.pt",
        metrics="results/train_supernet/train_metrics.json",
        curve="results/train_supernet/train_log.csv",
    params:
        config=config_json("supernet"),
        out=subpath(output.supernet, parent=True),
    log:
        "logs/train_supernet/train_supernet.log",
    benchmark:
        "benchmarks/train_supernet.tsv"
    conda:
        "../envs/srnas.yaml"
    shell:
        "srnas train-supernet --data-dir {input.data:q} --out {params.out:q} --config-json {params.config:q} --log {log:q}"
