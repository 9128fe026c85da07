# paceline — every target installs what it needs into .venv from the lock files.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet --disable-pip-version-check
RUNTIME := $(VENV)/.runtime-installed
DEV := $(VENV)/.dev-installed

.DEFAULT_GOAL := help
.PHONY: help run test test-pg15 test-citus soak bench lint format check lock docker clean

help: ## Show the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z0-9-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUNTIME): requirements.lock pyproject.toml | $(BIN)/python
	$(PIP) --require-hashes -r requirements.lock
	$(PIP) --no-deps -e .
	touch $@

$(DEV): requirements-dev.lock $(RUNTIME)
	$(PIP) --require-hashes -r requirements-dev.lock
	touch $@

run: $(RUNTIME) ## Run paceline on http://127.0.0.1:8080 (embedded PostgreSQL unless DATABASE_URL is set)
	$(BIN)/paceline serve

test: $(DEV) ## Run the test suite (embedded PostgreSQL unless TEST_DATABASE_URL is set)
	$(BIN)/pytest $(PYTEST_ARGS)

test-pg15: $(DEV) ## Run the test suite against the PostgreSQL on 127.0.0.1:5432
	TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres $(BIN)/pytest $(PYTEST_ARGS)

# On a Citus cluster: the integration and process tests, with the same assertions as on one
# server. Those marked one_server (one server's plans and counters, database clones, a
# downgrade, a trigger) skip there, each saying why. The unit tests need no database.
CITUS_TESTS ?= tests/integration tests/process

test-citus: $(DEV) ## The suite on a local Citus cluster (scripts/citus; CITUS_SRC=<tree> builds it first)
	@if [ -n "$(CITUS_SRC)" ]; then CITUS_SRC="$(CITUS_SRC)" scripts/citus build; fi
	scripts/citus start
	TEST_DATABASE_URL=$$(scripts/citus url) $(BIN)/pytest $(CITUS_TESTS) $(PYTEST_ARGS)

SOAK_SECONDS ?= 600
SOAK_SEED ?=
soak: $(DEV) ## Chaos soak: 3 replicas, seeded faults, every invariant audited (SOAK_SECONDS, SOAK_SEED)
	SOAK_SECONDS=$(SOAK_SECONDS) SOAK_SEED=$(SOAK_SEED) $(BIN)/python -m tests.soak

bench: $(DEV) ## Benchmarks, one table of figures vs same-run ceilings (20-40 min; BENCH_ARGS=--quick: a 4-min smoke run)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

lint: $(DEV) ## ruff and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(DEV) ## Format and sort imports
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

check: lint test ## Everything CI checks

lock: ## Re-resolve the lock files from pyproject.toml (needs uv)
	uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes -o requirements.lock
	uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 --generate-hashes -o requirements-dev.lock

docker: ## Build the image (needs a Docker engine)
	docker build -t paceline .

clean: ## Remove the virtualenv, caches and the embedded database
	rm -rf $(VENV) .paceline .pytest_cache .mypy_cache .ruff_cache
