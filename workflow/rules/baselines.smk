# Baselines: train, export (with parity), profile. Every later model reuses these rules' CLI.


rule train_baseline:
    input:
        data="results/prepare_data",
        code=stage_code("train"),
    output:
        model="results/train_baseline/{model}_x{scale}/model.pt",
        metrics="results/train_baseline/{model}_x{scale}/train_metrics.json",
    params:
        config=config_json("train"),
        out=subpath(output.model, parent=True),
    log:
        "logs/train_baseline/{model}_x{scale}.log",
    benchmark:
        "benchmarks/train_baseline/{model}_x{scale}.tsv"
    conda:
        "../envs/srnas.yaml"
    shell:
        "srnas train --model {wildcards.model} --scale {wildcards.scale} --data-dir {input.data} --out {params.out}"
        " --config-json {params.config:q} --log {log}"


rule export:
    input:
        checkpoint="results/train_baseline/{model}_x{scale}/model.pt",
        data="results/prepare_data",
        code=stage_code("export"),
    output:
        onnx="results/export/{model}_x{scale}/model.onnx",
        parity="results/export/{model}_x{scale}/parity.json",
    params:
        config=config_json("export"),
        out=subpath(output.onnx, parent=True),
    log:
        "logs/export/{model}_x{scale}.log",
    benchmark:
        "benchmarks/export/{model}_x{scale}.tsv"
    conda:
        "../envs/srnas.yaml"
    shell:
        "srnas export --model {wildcards.model} --scale {wildcards.scale} --checkpoint {input.checkpoint}"
        " --data-dir {input.data} --out {params.out} --config-json {params.config:q} --log {log}"


rule profile_model:
    input:
        checkpoint="results/train_baseline/{model}_x{scale}/model.pt",
        onnx="results/export/{model}_x{scale}/model.onnx",
        code=stage_code("profile"),
    output:
        latency="results/profile_model/{model}_x{scale}.json",
    params:
        config=config_json("profile"),
    log:
        "logs/profile_model/{model}_x{scale}.log",
    benchmark:
        "benchmarks/profile_model/{model}_x{scale}.tsv"
    conda:
        "../envs/srnas.yaml"
    shell:
        "srnas profile --model {wildcards.model} --scale {wildcards.scale} --checkpoint {input.checkpoint}"
        " --onnx {input.onnx} --out {output.latency} --config-json {params.config:q} --log {log}"
