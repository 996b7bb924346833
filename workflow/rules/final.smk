# Stage 3 of the method and the deliverable: pruning-ratio search, physical pruning, fine-tuning with distillation,
# then the final model goes through the baselines' export (parity), profiling and evaluation, and its fine-tuned
# weights are timed against the latency budget (the `budget` section) on its target (the run fails when it misses),
# and every baseline at that scale is timed the same way against the same budget (the report's in-budget marks).


rule search_ratio:
    input:
        arch="results/search_arch/arch.json",
        supernet="results/train_supernet/supernet.pt",
        tables="results/profile_device",
        data="results/prepare_data",
        code=stage_code("search"),
    output:
        pruned="results/search_ratio/pruned.pt",
        ratio="results/search_ratio/ratio.json",
        trials="results/search_ratio/trials.csv",
        metrics="results/search_ratio/ratio_metrics.json",
    params:
        config=config_json("search_ratio",
                           "search_arch.strategy", "search_arch.mode", "search_arch.trials", "search_arch.n_workers", "search_arch.seed",
                           "search_arch.prune_keep", "search_arch.val_set", "search_arch.val_crops", "search_arch.crop_size",
                           "search_arch.recovery_steps", "search_arch.recovery_per_width", "search_arch.plain_seeds",
                           "budget", "latency.targets", "latency.protocol",
                           "latency.net_warmup", "latency.net_runs", "latency.net_rounds", "latency.net_passes",
                           "finetune.lr", "finetune.min_lr", "finetune.weight_decay", "finetune.batch_size", "finetune.lr_patch_size",
                           "finetune.seed", "finetune.bf16", "finetune.channels_last", "finetune.augment"),
        out=subpath(output.pruned, parent=True),
    log:
        "logs/search_ratio/search_ratio.log",
    benchmark:
        "benchmarks/search_ratio.tsv"
    conda:
        "../envs/srnas.yaml"
    shell:
        "srnas search-ratio --arch {input.arch:q} --supernet {input.supernet:q} --tables {input.tables:q} --data-dir {input.data:q}"
        " --out {params.out:q} --config-json {params.config:q} --log {log:q}"


rule finetune:
    input:
        pruned="results/search_ratio/pruned.pt",
        supernet="results/train_supernet/supernet.pt",
        data="results/prepare_data",
        code=stage_code("finetune"),
    output:
        model="results/finetune/model.pt",
        metrics="results/finetune/train_metrics.json",
        curve="results/finetune/train_log.csv",
    params:
        config=config_json("finetune"),
        out=subpath(output.model, parent=True),
    log:
        "logs/finetune/finetune.log",
    benchmark:
        "benchmarks/finetune.tsv"
    conda:
        "../envs/srnas.yaml"
    shell:
        "srnas finetune --pruned {input.pruned:q} --supernet {input.supernet:q} --data-dir {input.data:q} --out {params.out:q}"
        " --config-json {params.config:q} --log {log:q}"


# The final model is exported in every deployable form (srnas export --deploy: ONNX and .pte, fp32 and int8, the int8
# ones calibrated on training patches), then timed and scored through each of those files.
rule export_final:
    input:
        checkpoint="results/finetune/model.pt",
        data="results/prepare_data",
        code=stage_code("export"),
    output:
        **deployed_files(f"results/export/{final_name()}"),
        parity=f"results/export/{final_name()}/parity.json",
    params:
        config=config_json("export"),
        out=lambda wildcards, output: os.path.dirname(output.parity),
        scale=config["supernet"]["scale"],
    log:
        "logs/export/final.log",
    benchmark:
        "benchmarks/export/final.tsv"
    conda:
        "../envs/srnas.yaml"
    shell:
        "srnas export --model final --scale {params.scale:q} --checkpoint {input.checkpoint:q} --deploy"
        " --data-dir {input.data:q} --out {params.out:q} --config-json {params.config:q} --log {log:q}"


rule profile_final:
    input:
        checkpoint="results/finetune/model.pt",
        **deployed_files(f"results/export/{final_name()}"),
        code=stage_code("profile"),
    output:
        latency=f"results/profile_model/{final_name()}.json",
    params:
        config=config_json("profile"),
        scale=config["supernet"]["scale"],
    log:
        "logs/profile_model/final.log",
    benchmark:
        "benchmarks/profile_model/final.tsv"
    conda:
        "../envs/srnas.yaml"
    shell:
        "srnas profile --model final --scale {params.scale:q} --checkpoint {input.checkpoint:q}"
        " --artifact {input.onnx:q} --artifact {input.onnx_int8:q} --artifact {input.pte:q} --artifact {input.pte_int8:q}"
        " --out {output.latency:q} --config-json {params.config:q} --log {log:q}"


rule evaluate_final:
    input:
        data="results/prepare_data",
        checkpoint="results/finetune/model.pt",
        tables="results/profile_device",
        **deployed_files(f"results/export/{final_name()}"),
        code=stage_code("evaluate"),
    output:
        metrics=f"results/evaluate/{final_name()}.json",
    params:
        config=config_json("data", "budget.target", "latency.targets"),
        scale=config["supernet"]["scale"],
    log:
        "logs/evaluate/final.log",
    benchmark:
        "benchmarks/evaluate/final.tsv"
    conda:
        "../envs/srnas.yaml"
    shell:
        "srnas evaluate --model final --scale {params.scale:q} --checkpoint {input.checkpoint:q}"
        " --data-dir {input.data:q} --tables {input.tables:q} --artifact {input.onnx:q} --artifact {input.onnx_int8:q} --artifact {input.pte:q} --artifact {input.pte_int8:q}"
        " --out {output.metrics:q}"
        " --config-json {params.config:q} --log {log:q}"


rule check_budget:
    input:
        checkpoint="results/finetune/model.pt",
        baselines=per_model("results/train_baseline/{model}_x{scale}/model.pt"),
        trainings=per_model("results/train_baseline/{model}_x{scale}/train_metrics.json"),  # DVC's dep is the folder
        curves=per_model("results/train_baseline/{model}_x{scale}/train_log.csv"),  # DVC's dep is the folder
        tables="results/profile_device",
        code=stage_code("search"),
    output:
        verdict="results/check_budget.json",
    params:
        config=config_json("budget", "latency.targets", "latency.protocol", "latency.net_warmup",
                           "latency.net_runs", "latency.net_rounds", "latency.net_passes"),
    log:
        "logs/check_budget/check_budget.log",
    benchmark:
        "benchmarks/check_budget.tsv"
    conda:
        "../envs/srnas.yaml"
    shell:
        "srnas check-budget --checkpoint {input.checkpoint:q} --baselines results/train_baseline --tables {input.tables:q}"
        " --out {output.verdict:q}"
        " --config-json {params.config:q} --log {log:q}"
