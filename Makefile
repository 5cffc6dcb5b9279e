# jrd: `make run` starts a working HTTPS JupyterLab; `make test` runs every test.
# Both install what they need first (Debian packages through apt when run as root).

PYTHON ?= /usr/bin/python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: install system-deps run test unit bench lint clean

install: system-deps $(STAMP)

system-deps:
	@scripts/install-system-deps runtime

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

# As root, Jupyter runs as the unprivileged `jupyter` account, never as root.
run: install
	@if [ "$$(id -u)" = 0 ] && ! id jupyter >/dev/null 2>&1; then \
		useradd --create-home --shell /bin/bash jupyter && echo "created the account 'jupyter' for Jupyter to run as"; fi
	$(BIN)/jrd run --dev

test: install
	@scripts/install-system-deps test
	$(BIN)/python -m pytest

unit: install
	$(BIN)/python -m pytest -m "not integration"

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	@touch $(BENCH_STAMP)

# Every benchmark under bench/ (each starts its own jrd on loopback ports; about 15 minutes in all),
# then docs/benchmarks.md and its charts in docs/bench/.  One alone: $(BIN)/python bench/bench_NAME.py
bench: install $(BENCH_STAMP)
	@scripts/install-system-deps test
	$(BIN)/python bench/report.py

lint: install
	$(BIN)/python -m ruff check jrd tests bench

clean:
	rm -rf $(VENV) .jrd build *.egg-info
