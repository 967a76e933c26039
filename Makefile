# Two entry points for people (README): `make run` and `make test`. Everything they need is
# installed from this repository's own files: Python packages from pyproject.toml into .venv,
# the local Azure servers from tests/emulators/package-lock.json, and with apt-get when they are
# missing Debian's gcc (setup.py compiles the hot path), chromium (the browser tests open the
# HTML report in it headless) and tmux (the terminal tests look at the progress display in it).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PY_STAMP := $(VENV)/.installed
NPM_DIR := tests/emulators
NPM_STAMP := $(NPM_DIR)/node_modules/.installed
RUN_ARGS ?= --simulate
DEBIAN_PACKAGES ?= chromium tmux
COMPILER_PACKAGES ?= gcc
# Test processes: most of the suite waits on local servers and child processes, so two keep a
# 2-core machine busy. They steal each other's queued tests: handed out in chunks up front, one
# process ran the last 300 s alone (on this project's 2-core machine, 2,245 tests: one process
# busy 910 s, the other 602 s, done at 612 s).
TEST_WORKERS ?= 2

.PHONY: install run test lint bench servers clean debian compiler

install: $(PY_STAMP) $(NPM_STAMP) debian

# apt-get as root, else through sudo when there is one; `apt-get update` first, once, since a
# fresh machine's package lists may be empty or old. Packages are named by their command.
define apt_install
	@missing=; for package in $(1); do \
		command -v $$package >/dev/null 2>&1 || missing="$$missing $$package"; done; \
	[ -z "$$missing" ] || { \
		if [ "$$(id -u)" = 0 ]; then sudo=; \
		elif command -v sudo >/dev/null 2>&1; then sudo=sudo; \
		else echo "missing:$$missing: install these Debian packages as root" >&2; exit 1; fi; \
		$$sudo apt-get update && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	}
endef

debian:
	$(call apt_install,$(DEBIAN_PACKAGES))

# The C compiler setup.py compiles the hot path with (without one it installs plain Python).
compiler:
	$(call apt_install,$(COMPILER_PACKAGES))

# setup.py compiles the hot path in place (an editable install): editing its sources reinstalls,
# so `make run` and `make test` never load a compiled module older than its source.
COMPILED_SOURCES := $(wildcard stream/hotpath/*.py)

$(PY_STAMP): pyproject.toml setup.py $(COMPILED_SOURCES) | compiler
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(NPM_STAMP): $(NPM_DIR)/package.json $(NPM_DIR)/package-lock.json
	cd $(NPM_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: $(PY_STAMP)
	$(VENV)/bin/evalstream process $(RUN_ARGS)

test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=25

lint: $(PY_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy deploy/functions deploy/k8s

bench: $(PY_STAMP)
	$(PY) -m bench.processor

clean:
	rm -rf $(VENV) $(NPM_DIR)/node_modules .pytest_cache var build
	find . -name '*.so' -not -path './node_modules/*' -not -path './$(VENV)/*' -delete
