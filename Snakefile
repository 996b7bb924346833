# srnas: one DAG from data to report. This file is a table of contents:
# helpers and config validation live in workflow/rules/common.smk, logic lives in the srnas package.
from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


report: "workflow/report/workflow.rst"  # `snakemake --report report.html`: the report's page, figures and tables


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/supernet.smk"
include: "workflow/rules/latency.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/final.smk"
include: "workflow/rules/deploy.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        "results/report.md",
    default_target: True
