# Stage 2 of the method: compiler-aware architecture and pruning-scheme search (Bayesian optimization).
# The Optuna study persists in results/search_arch/study.db (not an output): a killed search resumes.


rule search_arch:
    input:
        supernet="results/train_supernet/supernet.pt",
        tables="results/profile_device",
        data="results/prepare_data",
        code=stage_code("search"),
    output:
        arch="results/search_arch/arch.json",
        trials="results/search_arch/trials.csv",
        front="results/search_arch/pareto.csv",
        plot=report("results/search_arch/pareto.png", caption="../report/search_pareto.rst", category="Search"),
        metrics="results/search_arch/search_metrics.json",
    params:
        config=config_json("search_arch.strategy", "search_arch.mode", "search_arch.trials", "search_arch.n_workers", "search_arch.seed",
                           "search_arch.prune_keep", "search_arch.val_set", "search_arch.val_crops", "search_arch.crop_size",
                           "search_arch.recovery_steps", "search_arch.recovery_per_width", "search_arch.plain_seeds",
                           "budget", "search_ratio.importance", "latency.targets", "latency.protocol",
                           "latency.net_warmup", "latency.net_runs", "latency.net_rounds", "latency.net_passes",
                           "finetune.lr", "finetune.min_lr", "finetune.weight_decay", "finetune.batch_size", "finetune.lr_patch_size",
                           "finetune.seed", "finetune.bf16", "finetune.channels_last", "finetune.augment"),
        out=subpath(output.arch, parent=True),
    log:
        "logs/search_arch/search_arch.log",
    benchmark:
        "benchmarks/search_arch.tsv"
    conda:
        "../envs/srnas.yaml"
    shell:
        "srnas search-arch --supernet {input.supernet:q} --tables {input.tables:q} --data-dir {input.data:q} --out {params.out:q}"
        " --config-json {params.config:q} --log {log:q}"
