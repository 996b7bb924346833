rule report:
    input:
        data="results/prepare_data",
        checkpoints=per_model("results/train_baseline/{model}_x{scale}/model.pt"),
        trainings=per_model("results/train_baseline/{model}_x{scale}/train_metrics.json"),
        evaluations=per_model("results/evaluate/{model}_x{scale}.json"),
        latencies=per_model("results/profile_model/{model}_x{scale}.json"),
        supernet="results/train_supernet/train_metrics.json",
        device="results/profile_device",
        search="results/search_arch/arch.json",
        ratio="results/search_ratio/ratio.json",
        final_evaluation=f"results/evaluate/{final_name()}.json",
        final_latency=f"results/profile_model/{final_name()}.json",
        final_parity=f"results/export/{final_name()}/parity.json",
        final_training="results/finetune/train_metrics.json",
        budget="results/check_budget.json",
        code=stage_code("report"),
    output:
        report="results/report.md",
        figures=directory("results/report"),
        metrics="results/metrics.json",
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
        " --config-json {params.config:q} --log {log:q}"
