# The compiler-aware latency model: per-target layer table, measured pruning schemes, overhead calibration.
# Needs no data: it times layers of the search space (supernet.space) on each target of latency.targets.


rule profile_device:
    input:
        code=stage_code("latency"),
    output:
        tables=directory("results/profile_device"),
    params:
        config=config_json("supernet.space", "supernet.scale", "latency"),
    log:
        "logs/profile_device/profile_device.log",
    benchmark:
        "benchmarks/profile_device.tsv"
    conda:
        "../envs/srnas.yaml"
    shell:
        "srnas profile-device --out {output.tables:q} --config-json {params.config:q} --log {log:q}"
