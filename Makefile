# Two entry points, both self-contained on a fresh machine (see README):
#   make quickstart   - create .venv, install orchestrate, run examples/quickstart
#   make test         - create .venv, install orchestrate with test extras, run the suite
#   make bench        - orchestrate against make, doit and dask on the same workloads (bench/peers.py, ~3 min)
#   make mutation     - mutation score of the pure decision modules (bench/mutation.sh, ~12 min)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

$(BIN)/orchestrate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

.PHONY: install quickstart test bench mutation
install: $(BIN)/orchestrate

quickstart: install
	cd examples/quickstart && ../../$(BIN)/orchestrate run plan

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	$(BIN)/python bench/peers.py $(BENCH_ARGS)

mutation: install
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,mutation]'
	bench/mutation.sh
