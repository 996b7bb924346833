# One baseline (DEPLOYED_BASELINE, at the final model's scale) goes through what the final model goes through as
# deployed: every deployable form (ONNX and .pte, fp32 and int8 calibrated on training patches), timed and scored
# through each file, so the report gives int8 against fp32 of the same network for a baseline too. Its trained weights
# are train_baseline's; everything else lands in results/deploy/<name>/ (the baselines' own export, profile_model and
# evaluate stay as they were: ONNX fp32, checked, cheap).


rule export_deployed:
    input:
        checkpoint=f"results/train_baseline/{deployed_baseline_name()}/model.pt",
        data="results/prepare_data",
        code=stage_code("export"),
    output:
        **deployed_files(f"results/deploy/{deployed_baseline_name()}"),
        parity=f"results/deploy/{deployed_baseline_name()}/parity.json",
    params:
        config=config_json("export"),
        out=lambda wildcards, output: os.path.dirname(output.parity),
        model=DEPLOYED_BASELINE,
        scale=config["supernet"]["scale"],
    log:
        f"logs/deploy/export_{deployed_baseline_name()}.log",
    benchmark:
        f"benchmarks/deploy/export_{deployed_baseline_name()}.tsv"
    conda:
        "../envs/srnas.yaml"
    shell:
        "srnas export --model {params.model:q} --scale {params.scale:q} --checkpoint {input.checkpoint:q} --deploy"
        " --data-dir {input.data:q} --out {params.out:q} --config-json {params.config:q} --log {log:q}"


rule profile_deployed:
    input:
        checkpoint=f"results/train_baseline/{deployed_baseline_name()}/model.pt",
        **deployed_files(f"results/deploy/{deployed_baseline_name()}"),
        code=stage_code("profile"),
    output:
        latency=f"results/deploy/{deployed_baseline_name()}/profile.json",
    params:
        config=config_json("profile"),
        model=DEPLOYED_BASELINE,
        scale=config["supernet"]["scale"],
    log:
        f"logs/deploy/profile_{deployed_baseline_name()}.log",
    benchmark:
        f"benchmarks/deploy/profile_{deployed_baseline_name()}.tsv"
    conda:
        "../envs/srnas.yaml"
    shell:
        "srnas profile --model {params.model:q} --scale {params.scale:q} --checkpoint {input.checkpoint:q}"
        " --artifact {input.onnx:q} --artifact {input.onnx_int8:q} --artifact {input.pte:q} --artifact {input.pte_int8:q}"
        " --out {output.latency:q} --config-json {params.config:q} --log {log:q}"


rule evaluate_deployed:
    input:
        data="results/prepare_data",
        checkpoint=f"results/train_baseline/{deployed_baseline_name()}/model.pt",
        **deployed_files(f"results/deploy/{deployed_baseline_name()}"),
        code=stage_code("evaluate"),
    output:
        metrics=f"results/deploy/{deployed_baseline_name()}/evaluate.json",
    params:
        config=config_json("data"),
        model=DEPLOYED_BASELINE,
        scale=config["supernet"]["scale"],
    log:
        f"logs/deploy/evaluate_{deployed_baseline_name()}.log",
    benchmark:
        f"benchmarks/deploy/evaluate_{deployed_baseline_name()}.tsv"
    conda:
        "../envs/srnas.yaml"
    shell:
        "srnas evaluate --model {params.model:q} --scale {params.scale:q} --checkpoint {input.checkpoint:q}"
        " --data-dir {input.data:q} --artifact {input.onnx:q} --artifact {input.onnx_int8:q} --artifact {input.pte:q} --artifact {input.pte_int8:q}"
        " --out {output.metrics:q} --config-json {params.config:q} --log {log:q}"
