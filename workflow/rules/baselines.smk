# Baselines: the budget-fitted grid pick, train, export (with parity), profile. Every later model reuses these rules' CLI.


rule fit_baselines:
    input:
        tables="results/profile_device",
        code=stage_code("fit"),
    output:
        choice="results/fit_baselines/choice.json",
        grid="results/fit_baselines/grid.json",
    params:
        config=config_json("baselines.fit_widths", "baselines.fit_max_blocks", "budget", "latency.targets",
                           "latency.protocol", "latency.net_warmup", "latency.net_runs", "latency.net_rounds",
                           "latency.net_passes"),
        out=subpath(output.choice, parent=True),
    log:
        "logs/fit_baselines/fit_baselines.log",
    benchmark:
        "benchmarks/fit_baselines.tsv"
    conda:
        "../envs/srnas.yaml"
    shell:
        "srnas fit-baselines --tables {input.tables:q} --out {params.out:q} --config-json {params.config:q} --log {log:q}"


rule train_baseline:
    input:
        data="results/prepare_data",
        fitted="results/fit_baselines/choice.json",
        code=stage_code("train"),
    output:
        model="results/train_baseline/{model}_x{scale}/model.pt",
        metrics="results/train_baseline/{model}_x{scale}/train_metrics.json",
        curve="results/train_baseline/{model}_x{scale}/train_log.csv",
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
        "srnas train --model {wildcards.model:q} --scale {wildcards.scale:q} --data-dir {input.data:q} --out {params.out:q}"
        " --fitted {input.fitted:q} --config-json {params.config:q} --log {log:q}"


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
        "srnas export --model {wildcards.model:q} --scale {wildcards.scale:q} --checkpoint {input.checkpoint:q}"
        " --data-dir {input.data:q} --out {params.out:q} --config-json {params.config:q} --log {log:q}"


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
        "srnas profile --model {wildcards.model:q} --scale {wildcards.scale:q} --checkpoint {input.checkpoint:q}"
        " --onnx {input.onnx:q} --out {output.latency:q} --config-json {params.config:q} --log {log:q}"
