# Two entry points (see README): `make run` (set up + main job) and `make test` (set up + test suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.srnas-installed
# Large activations: keep glibc from returning memory to the OS on every forward (srnas.runtimes.allocator explains why).
export MALLOC_MMAP_THRESHOLD_ := 1073741824
export MALLOC_TRIM_THRESHOLD_ := 1073741824
export PATH := $(BIN):$(PATH)
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false

.PHONY: setup run test lint smoke benchmark checkout plots-offline clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==26.3"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,mobile]"  # mobile: ExecuTorch (.pte, XNNPACK)
	@touch $(STAMP)

run: setup  ## the main job: the whole pipeline on the embedded default data
	$(BIN)/snakemake --cores all

smoke: setup  ## the pipeline on the tiny smoke profile
	$(BIN)/snakemake --cores all --configfile config/smoke.yaml

benchmark: setup  ## the benchmark profile (T91 train; Set5, Set14, B100 eval); DATA_ROOT=../shared/data
	$(BIN)/snakemake --cores all --configfile config/benchmark.yaml --config "data={root: $(or $(DATA_ROOT),../shared/data)}"

test: setup  ## the test suite, on two pytest-xdist workers (tests/conftest.py: a file per worker at a time)
	$(BIN)/python -m pytest -n auto --maxprocesses 2 --dist loadfile --no-loadscope-reorder

checkout: setup  ## restore DVC-tracked outputs, then tell Snakemake they are current (DVC does not keep mtimes)
	$(BIN)/dvc checkout
	$(BIN)/snakemake --touch --cores 1 --no-hooks  # no hooks: touching outputs opens no MLflow pipeline run

plots-offline: setup  ## `dvc plots` pages that render without internet: Vega's JS inlined into a template (.dvc/config.local)
	npm ci --no-audit --no-fund
	$(BIN)/srnas plots-template

lint: setup
	$(BIN)/snakemake --lint

clean:
	rm -rf results/prepare_data results/train_baseline results/export results/profile_model results/evaluate results/report* results/metrics.json logs benchmarks
