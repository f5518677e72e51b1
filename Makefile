# The two commands of the quick start, plus the checks CI runs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test check lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(BIN)/foryou demo

test: $(VENV)/.installed-dev
	$(BIN)/ruff check foryou tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest

check: test

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) foryou-data .pytest_cache .mypy_cache .ruff_cache
