rule prepare_data:
    input:
        raw=raw_images(),
        code=stage_code("prepare_data"),
    output:
        directory("results/prepare_data"),
    params:
        config=config_json("data"),
    log:
        "logs/prepare_data/prepare_data.log",
    benchmark:
        "benchmarks/prepare_data.tsv"
    conda:
        "../envs/srnas.yaml"
    shell:
        "srnas prepare-data --out {output:q} --config-json {params.config:q} --log {log:q}"
