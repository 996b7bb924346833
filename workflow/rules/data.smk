rule prepare_data:
    input:
        code=package_files("data", "imresize.py", "images.py"),
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
        "srnas prepare-data --out {output} --config-json {params.config:q} --log {log}"
