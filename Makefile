# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Quiet, offline-safe defaults for the libraries' telemetry.
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: run test lint typecheck pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first: its CPU build; any later range that admits a newer torch would pull CUDA.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/qt demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Two workers (the machine's two cores); a test module stays on one worker, so its
# module fixtures and the session's trained home are built once per worker.
pytest: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=20

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/features.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/backtest.py
	$(BIN)/python bench/cli.py
	$(BIN)/python bench/execution.py
	$(BIN)/python bench/parity.py
	$(BIN)/python bench/live.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/candles.py
	$(BIN)/python bench/drift.py
	$(BIN)/python bench/scale.py

clean:
	rm -rf $(VENV) .qt .mypy_cache .ruff_cache .pytest_cache
