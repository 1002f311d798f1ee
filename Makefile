# Podium: `make demo` runs the whole pipeline on the embedded DuckDB warehouse,
# `make test` runs the test suite. Both create .venv on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# pytest-xdist workers for `make test` and `make test-fast`: one per core of the 2-core CI machine
JOBS   ?= 2

# MLflow's usage telemetry stays off: Podium talks to loopback and the warehouse only.
export MLFLOW_DISABLE_TELEMETRY := true

.DEFAULT_GOAL := help
.PHONY: help demo test test-fast check app ui docs docs-site clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[1m%-9s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/podium: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev,docs]'
	touch $@

demo: $(BIN)/podium ## Run the full pipeline on DuckDB + the bundled F1 data
	$(BIN)/podium run

check: $(BIN)/podium ## Lint and format check (ruff), type check of pipelines/ (mypy)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(BIN)/podium ## Run the tests (pytest), on two worker processes (JOBS=2)
	$(BIN)/python -m pytest -n $(JOBS) --dist loadgroup --no-loadscope-reorder --durations=25

test-fast: $(BIN)/podium ## Unit and data tiers, under 2 minutes
	$(BIN)/python -m pytest -n $(JOBS) --dist loadgroup --no-loadscope-reorder tests/unit tests/data

app: $(BIN)/podium ## Open the analysts' app (podium app) on http://127.0.0.1:8501
	$(BIN)/podium app

ui: $(BIN)/podium ## Open the MLflow UI on http://127.0.0.1:5000
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000

docs: $(BIN)/podium ## Regenerate docs/*.png from the demo's MLflow store (after make demo)
	$(BIN)/python docs/capture.py

docs-site: $(BIN)/podium ## Build the docs site into site/ (mkdocs build --strict)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean: ## Remove local state: warehouse, MLflow store, Optuna studies (keeps .venv)
	rm -rf warehouse mlflow.db mlruns mlartifacts optuna site
