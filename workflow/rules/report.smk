rule report:
    input:
        evaluations=expand("results/evaluate/{model}_x{scale}.json", model=baseline_models(), scale=scales()),
        code=package_files("report.py"),
    output:
        report="results/report.md",
        metrics="results/metrics.json",
    params:
        config=config_json(),
    log:
        "logs/report/report.log",
    benchmark:
        "benchmarks/report.tsv"
    conda:
        "../envs/srnas.yaml"
    shell:
        "srnas report --results results --out {output.report} --metrics {output.metrics}"
        " --config-json {params.config:q} --log {log}"
