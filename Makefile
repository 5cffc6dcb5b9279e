# jrd: `make run` starts a working HTTPS JupyterLab; `make test` runs every test.
# Both install what they need first (Debian packages through apt when run as root).
#
# As root, Jupyter runs as the `jupyter` account and must read the virtualenv. A checkout
# that other accounts cannot enter (root's 0700 home) keeps its virtualenv and jrd's files in
# /var/lib/jrd-dev/NAME instead, with .venv a link to it (see jrd/checkout.py); `make run`
# says so.  `make run USE_VENV=DIR` runs with an existing virtualenv that has jrd, installing
# nothing into it; `make run ARGS='--config FILE'` passes arguments to `jrd run --dev`.

PYTHON ?= /usr/bin/python3
WHERE = PYTHONPATH="$(CURDIR)" $(PYTHON) -m jrd.checkout
VENV ?= $(or $(shell $(WHERE) venv 2>/dev/null),.venv)
BIN := $(if $(USE_VENV),$(USE_VENV),$(VENV))/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: install system-deps run test unit bench lint clean

install: system-deps $(if $(USE_VENV),,$(STAMP))

system-deps:
	@scripts/install-system-deps runtime

# umask 022: the Jupyter account must be able to read what root installs.
$(STAMP): pyproject.toml
	@test -x "$(VENV)/bin/python" || { umask 022 && $(PYTHON) -m venv "$(VENV)"; }
	umask 022 && "$(VENV)/bin/python" -m pip install --quiet --upgrade pip
	umask 022 && "$(VENV)/bin/python" -m pip install --quiet -e '.[test]'
	@if [ "$(VENV)" != .venv ] && { [ -L .venv ] || [ ! -e .venv ]; }; then ln -sfn "$(VENV)" .venv; fi
	@touch "$(STAMP)"

# As root, Jupyter runs as the unprivileged `jupyter` account, never as root.
run: install
	@if [ "$$(id -u)" = 0 ] && ! id jupyter >/dev/null 2>&1; then \
		useradd --create-home --shell /bin/bash jupyter && echo "created the account 'jupyter' for Jupyter to run as"; fi
	@"$(BIN)/python" -m jrd.checkout explain
	"$(BIN)/jrd" run --dev $(ARGS)

# Most of the suite waits on real processes (idle deadlines, restarts, a browser), so two
# pytest processes share it, each taking a whole test file at a time (a file's tests keep
# their order and fixtures); TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: install
	@scripts/install-system-deps test
	"$(BIN)/python" -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

unit: install
	"$(BIN)/python" -m pytest -m "not integration"

$(BENCH_STAMP): pyproject.toml $(STAMP)
	"$(BIN)/python" -m pip install --quiet -e '.[test,bench]'
	@touch $(BENCH_STAMP)

# Every benchmark under bench/ (each starts its own jrd on loopback ports; about 15 minutes in all),
# then docs/benchmarks.md and its charts in docs/bench/.  One alone: $(BIN)/python bench/bench_NAME.py
bench: install $(BENCH_STAMP)
	@scripts/install-system-deps test
	"$(BIN)/python" bench/report.py

lint: install
	"$(BIN)/python" -m ruff check jrd tests bench

# jrd's files outside the checkout too, if it keeps them there.
clean:
	rm -rf "$(VENV)" .venv .jrd build *.egg-info
	@home="$$($(WHERE) home)"; case $$home in /*) echo "rm -rf $$home"; rm -rf "$$home";; esac
