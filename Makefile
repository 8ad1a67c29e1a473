# The commands a newcomer needs (see README.md):
#   make install - create .venv/ with pdlab in it (the other targets do this first when needed)
#   make demo   - local, emulated PD-vs-colocated sweep ending in an HTML report (no GPU, no cluster)
#   make test   - the whole test suite, slow end-to-end tests included (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo test test-fast lint bench clean-results

# Creates .venv/ and installs pdlab into it, saying what it does (pip's own lines show its progress).
$(BIN)/pdlab: pyproject.toml
	@echo "==> creating the virtual environment $(VENV)/ with $$($(PYTHON) --version 2>&1)"
	$(PYTHON) -m venv $(VENV)
	@echo "==> upgrading pip inside $(VENV)/"
	$(BIN)/python -m pip install --progress-bar off --upgrade pip
	@echo "==> installing pdlab (editable) and its test tools into $(VENV)/: about a minute"
	$(BIN)/python -m pip install --progress-bar off -e '.[test]'
	@touch $(BIN)/pdlab
	@echo "==> installed. Use pdlab with:  . $(VENV)/bin/activate   (or call $(BIN)/pdlab directly)"

install: $(BIN)/pdlab

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
