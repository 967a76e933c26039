# Two entry points for people (README): `make run` and `make test`. Everything they need is
# installed from this repository's own files: Python packages from pyproject.toml into .venv,
# the local Azure servers from tests/emulators/package-lock.json.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PY_STAMP := $(VENV)/.installed
NPM_DIR := tests/emulators
NPM_STAMP := $(NPM_DIR)/node_modules/.installed
RUN_ARGS ?= --simulate

.PHONY: install run test lint bench servers clean

install: $(PY_STAMP) $(NPM_STAMP)

$(PY_STAMP): pyproject.toml
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
	$(PY) -m pytest -q

lint: $(PY_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy deploy/functions deploy/k8s

bench: $(PY_STAMP)
	$(PY) -m bench.processor

clean:
	rm -rf $(VENV) $(NPM_DIR)/node_modules .pytest_cache var
