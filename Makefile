# The two commands a newcomer needs (see README.md):
#   make demo   - local, emulated PD-vs-colocated sweep ending in an HTML report (no GPU, no cluster)
#   make test   - the whole test suite, slow end-to-end tests included (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-fast lint bench clean-results

$(BIN)/pdlab: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(BIN)/pdlab

demo: $(BIN)/pdlab
	$(BIN)/pdlab sweep params/demo-sweep.yaml

test: $(BIN)/pdlab
	$(BIN)/python -m pytest -q

test-fast: $(BIN)/pdlab
	$(BIN)/python -m pytest -q -m 'not slow'

lint: $(BIN)/pdlab
	$(BIN)/ruff check pdlab tests benchmarks notebooks
	$(BIN)/lint-imports

bench: $(BIN)/pdlab
	$(BIN)/python benchmarks/run_all.py
