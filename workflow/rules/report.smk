rule report:
    input:
        data="results/prepare_data",
        checkpoints=per_model("results/train_baseline/{model}_x{scale}/model.pt"),
        trainings=per_model("results/train_baseline/{model}_x{scale}/train_metrics.json"),
        curves=per_model("results/train_baseline/{model}_x{scale}/train_log.csv"),  # DVC's dep is the folder
        evaluations=per_model("results/evaluate/{model}_x{scale}.json"),
        latencies=per_model("results/profile_model/{model}_x{scale}.json"),
        supernet="results/train_supernet/train_metrics.json",
        device="results/profile_device",
        search="results/search_arch/arch.json",
        ratio="results/search_ratio/ratio.json",
        final_evaluation=f"results/evaluate/{final_name()}.json",
        final_latency=f"results/profile_model/{final_name()}.json",
        final_parity=f"results/export/{final_name()}/parity.json",
        deployed_parity=f"results/deploy/{deployed_baseline_name()}/parity.json",
        deployed_latency=f"results/deploy/{deployed_baseline_name()}/profile.json",
        deployed_evaluation=f"results/deploy/{deployed_baseline_name()}/evaluate.json",
        final_training="results/finetune/train_metrics.json",
        budget="results/check_budget.json",
        code=stage_code("report"),
    output:
        report="results/report.md",
        figures=report(directory("results/report"), patterns=["{name}.png", "{name}.html"], caption="../report/report.rst",
                       category="Report", labels={"file": "{name}"}),
        metrics=report("results/metrics.json", caption="../report/metrics.rst", category="Metrics"),
        models=report("results/models.csv", caption="../report/models.rst", category="Metrics"),
    params:
        config=config_json("data"),
    log:
        "logs/report/report.log",
    benchmark:
        "benchmarks/report.tsv"
    conda:
        "../envs/srnas.yaml"
    shell:
        "srnas report --results results --out {output.report:q} --figures {output.figures:q} --metrics {output.metrics:q}"
        " --models {output.models:q}"
        " --config-json {params.config:q} --log {log:q}"
