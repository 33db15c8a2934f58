# pg-coordinator: `make help` lists the targets.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
PG15   := /usr/lib/postgresql/15/bin

.DEFAULT_GOAL := help
.PHONY: help venv demo test test-embedded test-pg15 lint format clean

help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP) ## create .venv with the package and its dev extras

demo: $(STAMP) ## three instances on an embedded PostgreSQL 18: crash, hang and graceful failover
	$(BIN)/coordinator demo

test: test-embedded test-pg15 ## the whole suite on embedded PostgreSQL 18, the core tests on system PostgreSQL 15

test-embedded: $(STAMP) ## the whole suite on embedded PostgreSQL 18
	COORDINATOR_TEST_PG=embedded $(BIN)/pytest

test-pg15: $(STAMP) ## the core election tests on the system PostgreSQL 15
	@if [ -x $(PG15)/postgres ]; then \
		COORDINATOR_TEST_PG=system-15 $(BIN)/pytest -m core; \
	else \
		echo "test-pg15: skipped, $(PG15) not found (apt-get install postgresql-15)"; \
	fi

lint: $(STAMP) ## ruff and strict mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean: ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist build
