# pg-coordinator: `make help` lists the targets.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
PG15   := /usr/lib/postgresql/15/bin

.DEFAULT_GOAL := help
.PHONY: help venv demo example test test-embedded test-pg15 chaos bench bench-handover bench-scale lint format clean

CHAOS_DURATION ?= 300
CHAOS_ARGS ?=
BENCH_ARGS ?=

help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

# .venv/.installed-GROUP: the package installed with that dependency group (dev, bench);
# `--group` needs pip 25.1 or later, hence the upgrade first.
$(VENV)/.installed-%: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade 'pip>=25.1'
	$(BIN)/pip install --quiet -e . --group $*
	touch $@

venv: $(STAMP) ## create .venv with the package and its dev dependency group

demo: $(STAMP) ## three instances on an embedded PostgreSQL 18: crash, hang and graceful failover
	$(BIN)/coordinator demo

example: $(STAMP) ## two replicas of examples/fastapi_app (a leader-only job, fenced writes) on :8001 and :8002
	$(BIN)/python -m examples.fastapi_app

test: test-embedded test-pg15 ## the whole suite on embedded PostgreSQL 18, the core tests on system PostgreSQL 15

test-embedded: $(STAMP) ## the whole suite on embedded PostgreSQL 18
	COORDINATOR_TEST_PG=embedded $(BIN)/pytest

test-pg15: $(STAMP) ## the core election tests on the system PostgreSQL 15
	@if [ -x $(PG15)/postgres ]; then \
		COORDINATOR_TEST_PG=system-15 $(BIN)/pytest -m core; \
	else \
		echo "test-pg15: skipped, $(PG15) not found (apt-get install postgresql-15)"; \
	fi

chaos: $(STAMP) ## random real faults for CHAOS_DURATION seconds (300), then check the guarantees (CHAOS_ARGS=--help)
	$(BIN)/python -m chaos --duration $(CHAOS_DURATION) $(CHAOS_ARGS)

bench: $(VENV)/.installed-bench ## failover, floor, trace, peers, overhead, scale, then job continuity (about 60 min; BENCH_ARGS=--quick): bench/RESULTS.md
	sh bench/setup.sh
	$(BIN)/python -m bench $(BENCH_ARGS)
	$(BIN)/python -m bench.scale
	$(BIN)/python -m bench.jobs

bench-handover: $(VENV)/.installed-bench ## pg-coordinator's crash and graceful hand-over against pals's, interleaved, and the trace (about 5 min)
	$(BIN)/python -m bench.handover $(BENCH_ARGS)

SCALE_TIERS ?= 50x1000,50x10000,50x100000
bench-scale: $(VENV)/.installed-bench ## the 100,000-group tier alone (SCALE_TIERS=PxG,...): bench/RESULTS.md, bench/scale.png
	$(BIN)/python -m bench.scale --tier-only --tiers $(SCALE_TIERS)

lint: $(STAMP) ## ruff and strict mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean: ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist build
