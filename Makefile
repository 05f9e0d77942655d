# Two entry points, both self-contained on a fresh machine (see README):
#   make quickstart   - create .venv, install orchestrate, run examples/quickstart
#   make test         - create .venv, install orchestrate with test extras, run the suite
#   make bench        - orchestrate against make, doit and dask on the same workloads (bench/peers.py, ~3 min)
#   make mutation     - mutation score of the pure decision modules (bench/mutation.sh, ~12 min)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PACKAGES := actors adapters cli control domain messages monitoring persistence planning views

$(BIN)/orchestrate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,ui,postgres]'
	touch $@

.PHONY: install bytecode quickstart test browser bench mutation
install: $(BIN)/orchestrate bytecode

# An editable install compiles none of the packages' bytecode, and with PYTHONDONTWRITEBYTECODE
# set nothing ever writes it: every command would compile its modules from source first (about
# 0.1 s of a one-task run). compileall only rewrites what is out of date.
bytecode: $(BIN)/orchestrate
	$(BIN)/python -m compileall -q $(PACKAGES)

quickstart: install
	cd examples/quickstart && ../../$(BIN)/orchestrate run plan

# The ray extra too: the Ray adapter's tests start a real two-node cluster.
test: install browser
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,ui,ray]'
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The dashboard and report tests drive Debian's Chromium (Playwright never downloads a browser
# here). Installed only when missing, and only where apt-get can (root); elsewhere those tests
# skip and say why.
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi

bench: install
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	$(BIN)/python bench/peers.py $(BENCH_ARGS)

mutation: install
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,mutation]'
	bench/mutation.sh
