# Entry points for developers and CI (see docs/development.md). `make test` is what CI runs (.ci/run).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test
.NOTPARALLEL:

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pip runs again only when pyproject.toml changes (or .venv is gone): the stamp's name holds its hash.
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)

.PHONY: demo test venv helm promtool chromium lint typecheck pytest docs services-up services-down services-status

# ruff, mypy, then the whole pytest suite against a real Kafka broker and Redis server
# (the suite includes `mkdocs build --strict` of the docs: tests/docs).
test: lint typecheck pytest

# The main job: the daemon on the bundled real bars with the demo model, no services needed.
# DEMO_ARGS go to `kronos-stream demo` (e.g. DEMO_ARGS='--mode exact --bars 120 --out /tmp/demo.png').
demo: venv
	$(BIN)/kronos-stream demo $(DEMO_ARGS)

venv: $(STAMP)

$(STAMP):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	  || { echo "make: $(PYTHON) is older than 3.11; run with PYTHON=python3.11 (or newer)" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --progress-bar off --cache-dir .cache/pip -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

# helm for the chart tests, built once into .cache/helm (scripts/run-tests calls it too).
helm:
	scripts/ensure-helm

# promtool for the alert-rule tests, from Debian's prometheus package into .cache/promtool
# (scripts/run-tests calls it too).
promtool:
	scripts/ensure-promtool

# Debian's chromium and chromium-driver for the dashboard's browser test, installed as root when
# missing (scripts/run-tests calls it too).
chromium:
	scripts/ensure-chromium

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy

# Starts Kafka and Redis if they are not running, and stops what it started. PYTEST_ARGS go to pytest.
pytest: venv
	scripts/run-tests $(PYTEST_ARGS)

# The docs site into site/ (ignored); `.venv/bin/mkdocs serve` previews it.
docs: venv
	$(BIN)/mkdocs build --strict

services-up: venv
	scripts/services up
	@echo 'services are up; for this shell: eval "$$(scripts/services env)"'

services-down:
	scripts/services down

services-status:
	scripts/services status
