# The two newcomer commands: `make sandbox` (run Tourniquet on an embedded API server) and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: sandbox test lint crds bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

sandbox: $(BIN)/.installed
	$(BIN)/tourniquet sandbox

lint: $(BIN)/.installed
	$(BIN)/ruff check operator tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/tourniquet crds --check

test: lint
	$(BIN)/pytest

crds: $(BIN)/.installed
	$(BIN)/tourniquet crds

bench: $(BIN)/.installed
	$(BIN)/python bench/bench_agentdeployments.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .sandbox
