# ferry — developer and CI entry points. `make test` is what CI runs (.ci/run).
#
#   make venv      create .venv and install ferry in it (editable, with the dev extras)
#   make lint      ruff + mypy --strict + import-linter (the layers of docs/architecture.md)
#   make test      lint, then the test suite
#   make demo      ferry at work (~20 s): a progress bar, then a job surviving a kill -9
#   make bench     benchmarks against curl and aria2   (make bench QUICK=1 for a short run)
#   make torture   crash/restart torture run           (make torture QUICK=1 likewise)
#   make soak      30-minute soak: 10,000 jobs, restarts; RSS/fds/tasks flat (QUICK=1: 2 min)
#   make man       regenerate man/ and completions/ from the code (commit the result)
#   make install   install ferry (pip) and its man pages and shell completions under PREFIX
#   make clean     remove the venv and every cache

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Touched after a successful install: the venv is rebuilt only when pyproject.toml changes.
STAMP  := $(VENV)/.installed

# Lint what exists: an empty directory is not in a fresh clone.
LINT_PATHS := $(wildcard src tests benchmarks scripts harness)

# `make bench QUICK=1` → the benchmark sees QUICK=1 in its environment; otherwise no QUICK.
QUICK ?=
QUICK_ENV := $(if $(filter-out 0,$(QUICK)),env QUICK=1,env -u QUICK)

.PHONY: all venv lint test demo bench torture clean man install install-data

all: test

venv: $(STAMP)

# The interpreter of the venv. A Debian python3 without its venv module (or ensurepip)
# cannot create one: as root we install python3-venv, otherwise we say what is missing.
$(BIN)/python:
	@if ! $(PYTHON) -c 'import venv, ensurepip' 2>/dev/null; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	        echo "== $(PYTHON) has no venv/ensurepip: installing python3-venv"; \
	        export DEBIAN_FRONTEND=noninteractive; \
	        apt-get update -qq && \
	        apt-get install -y -qq --no-install-recommends python3-venv python3-pip; \
	    else \
	        echo "error: $(PYTHON) cannot create a virtualenv; install python3-venv" >&2; \
	        exit 1; \
	    fi; \
	fi
	@rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

lint: venv
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy
	$(BIN)/lint-imports

# Four workers, each taking whole test files (module fixtures and order kept): the tests
# mostly wait on the real servers and daemons they start.
TEST_WORKERS ?= 4

test: lint
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

demo: venv
	$(BIN)/python scripts/demo.py

bench: venv
	$(QUICK_ENV) $(BIN)/python benchmarks/run.py
	$(QUICK_ENV) $(BIN)/python benchmarks/speed.py
	$(QUICK_ENV) $(BIN)/python benchmarks/bandwidth.py
	$(QUICK_ENV) $(BIN)/python benchmarks/proxy_bench.py
	$(QUICK_ENV) $(BIN)/python benchmarks/fleet_bench.py

torture: venv
	$(QUICK_ENV) $(BIN)/python benchmarks/torture.py

# Not in `make test`: 30 minutes (QUICK=1: 2). Samples in benchmarks/results/soak.csv, the
# plot in benchmarks/soak.png (commit it with the figures in benchmarks/README.md).
.PHONY: soak
soak: venv
	$(QUICK_ENV) $(BIN)/python benchmarks/soak.py

# Man pages and completions are generated from the code (ferry/manpages.py) and committed,
# so `pip install` ships them; a test fails when these copies differ from the code.
man: venv
	$(BIN)/python -m ferry.manpages man
	$(BIN)/python -m ferry.manpages --completions completions

# `make install` (PREFIX=/usr/local, DESTDIR for staging): the package with pip, then the
# man pages and completions where man, bash-completion, zsh and fish look.
PREFIX  ?= /usr/local
DATADIR := $(DESTDIR)$(PREFIX)/share
PIP_INSTALL ?= $(PYTHON) -m pip install --prefix=$(DESTDIR)$(PREFIX) .

install: install-data
	$(PIP_INSTALL)

install-data:
	install -Dm644 man/man1/ferry.1 $(DATADIR)/man/man1/ferry.1
	install -Dm644 man/man5/ferryd.toml.5 $(DATADIR)/man/man5/ferryd.toml.5
	install -Dm644 man/man8/ferryd.8 $(DATADIR)/man/man8/ferryd.8
	install -Dm644 completions/ferry $(DATADIR)/bash-completion/completions/ferry
	install -Dm644 completions/_ferry $(DATADIR)/zsh/site-functions/_ferry
	install -Dm644 completions/ferry.fish $(DATADIR)/fish/vendor_completions.d/ferry.fish

clean:
	rm -rf $(VENV) .demo build .pytest_cache .mypy_cache .ruff_cache
	rm -rf src/*.egg-info
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
