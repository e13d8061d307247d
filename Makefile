SHELL := /bin/bash
BIN := .venv/bin
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

.PHONY: setup demo test lint pytest clean bench

## Everything the demo and the tests need (Debian packages, .venv); safe to run again.
setup:
	@bash scripts/setup.sh

## The main job on a local sandbox: back up, break everything, restore_full.yml, compare.
demo: setup
	$(BIN)/python scripts/demo.py

## Lint and the whole test suite (unit and integration, against real PostgreSQL 15 and Redis).
test: setup lint pytest

lint:
	$(BIN)/yamllint --strict .
	$(BIN)/ruff check .
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/ansible-lint --offline

pytest:
	@bash lab/image.sh >/dev/null
	$(BIN)/pytest -n 2 tests

## Playbooks against pg_dump/pg_restore, redis-cli, tar and openssl at three data sizes; writes docs/benchmarks.*
## (options: make bench BENCH_ARGS="--sizes small,medium --runs 2").
bench: setup
	$(BIN)/pip install -q -r bench/requirements.txt
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf .sandbox .pytest_cache .ruff_cache .ansible
