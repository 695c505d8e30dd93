# sam-engine: `make run` materializes the whole engine and prints the report; `make test` runs the suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= $(shell command -v python3.11 || command -v python3)
DATA_DIR ?= $(CURDIR)/data
PROFILE ?= default
export SAM_ENGINE_DATA_DIR := $(abspath $(DATA_DIR))
export DAGSTER_HOME := $(SAM_ENGINE_DATA_DIR)/dagster_home
export MLFLOW_TRACKING_URI := sqlite:///$(SAM_ENGINE_DATA_DIR)/mlflow.db
export PYTHONUNBUFFERED := 1

.PHONY: venv venv-test run pretrain ui test test-fast bench refenv annotate backup lint mlflow-ui dagster-home chromium clean

# `venv`: what the engine needs (make run, ui, annotate); `venv-test` adds the test, benchmark and lint tools.
# Byte-compiling is done by compileall on every core instead of pip's one-by-one pass (same .pyc files).
venv: $(VENV)/.installed
venv-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -e .
	@PYTHONDONTWRITEBYTECODE= $(PY) -m compileall -q -j 0 $(VENV)/lib >/dev/null 2>&1 || true
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

dagster-home:
	@mkdir -p $(DAGSTER_HOME)
	@cp -f instance/dagster.yaml $(DAGSTER_HOME)/dagster.yaml

# System Chromium for the browser tests (Debian package); skipped with a note when it cannot be installed.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "note: could not install chromium; browser tests will be skipped"; \
	  else echo "note: chromium missing and not root; browser tests will be skipped"; fi; }

# PRETRAIN=1 trains v0 from scratch in the run instead of starting from the released checkpoint.
run: venv dagster-home
	$(PY) -m jobs.run_engine --profile $(PROFILE) $(if $(PRETRAIN),--pretrain)

# Rebuild the released public-data checkpoint (released/public_v0.{pt,json}) with its recorded recipe.
pretrain: venv
	$(PY) -m sam_engine.release build --profile $(PROFILE)

# `dg dev`, Dagster's recommended command, on this project (pyproject's [tool.dg]), through jobs/ui.py so that
# SIGINT and SIGTERM stop it even when a script started it in the background. Ctrl-C stops it all; so does
# SIGTERM to `dg` or to the process group (make itself holds a SIGTERM until its recipe ends).
UI_PORT ?= 3000
ui: venv dagster-home
	$(PY) -m jobs.ui -h 127.0.0.1 -p $(UI_PORT)

# MLflow on the engine's store; prints the links that open the model-training view (runs, registered versions).
mlflow-ui: venv
	$(PY) -m sam_engine.mlflow_ui --host 127.0.0.1 --port 5000 --profile $(PROFILE)

# The annotation server on loopback with the latest model version (after `make run`); HOST/PORT override.
HOST ?= 127.0.0.1
PORT ?= 8765
annotate: venv
	@latest=$$(ls $(SAM_ENGINE_DATA_DIR)/models/model_v*/model.pt 2>/dev/null | sort | tail -1); \
	if [ -z "$$latest" ]; then echo "no model yet: run 'make run' first"; exit 1; fi; \
	echo "serving $$latest"; \
	$(PY) -m sam_engine.annotation serve --host $(HOST) --port $(PORT) --data-dir $(SAM_ENGINE_DATA_DIR) \
	  --checkpoint $$latest --dataset-dir pool=$(SAM_ENGINE_DATA_DIR)/corpora/target_pool/images \
	  --dataset-dir gold=$(SAM_ENGINE_DATA_DIR)/corpora/gold/images

backup: venv
	$(PY) -m sam_engine.backup create --data-dir $(SAM_ENGINE_DATA_DIR) --dest backups

test: venv-test chromium
	$(PY) -m pytest -q

# The developer's loop: the suite without the tests marked slow, browser or load (no chromium needed).
test-fast: venv-test
	$(PY) -m pytest -q -m "not slow and not browser and not load"

bench: venv-test
	$(PY) -m benchmarks.run_all

# The official segment-anything package (needs torchvision) in its own venv, for the official-AMG comparison
# (benchmarks/bench_official_amg.py) and the official-checkpoint fixture (tools/make_official_fixture.py).
refenv: .refenv/.installed

.refenv/.installed:
	@test -x .refenv/bin/python || $(PYTHON) -m venv .refenv
	.refenv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1 segment-anything
	@touch $@

lint: venv-test
	$(VENV)/bin/ruff check sam_engine assets jobs tests benchmarks tools

clean:
	rm -rf $(SAM_ENGINE_DATA_DIR)
