SHELL := /bin/bash
BIN := .venv/bin
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

.PHONY: setup demo test lint pytest molecule clean bench

## Everything the demo and the tests need (Debian packages, .venv); safe to run again.
setup:
	@bash scripts/setup.sh

## The main job on a local sandbox: back up, break everything, restore_full.yml, compare.
demo: setup
	$(BIN)/python scripts/demo.py

## Lint and the whole test suite (unit and integration, against real PostgreSQL 15 and Redis).
test: setup lint pytest molecule

lint:
	$(BIN)/yamllint --strict .
	$(BIN)/ruff check .
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/ansible-lint --offline

pytest:
	@bash lab/image.sh >/dev/null
	$(BIN)/pytest -n 2 tests

## The multi-host scenarios (molecule/*/, shared settings in .config/molecule/config.yml) on podman containers, one
## after the other, stopping at the first failure (one of them: make molecule MOLECULE_SCENARIOS=new_host;
## CHRISTMAS_LAB_IMAGE=localhost/christmas-lab:TAG uses that image instead of building the current one). The
## replacement hosts install packages from the local repository lab/apt_repo.sh builds.
MOLECULE_SCENARIOS ?= $(patsubst molecule/%/molecule.yml,%,$(wildcard molecule/*/molecule.yml))
molecule: export PATH := $(CURDIR)/$(BIN):$(PATH)
molecule: export CONTAINERS_CONF := $(CURDIR)/lab/containers.conf
molecule:
	@bash lab/apt_repo.sh >/dev/null
	@set -e; export CHRISTMAS_LAB_IMAGE=$${CHRISTMAS_LAB_IMAGE:-$$(bash lab/image.sh)}; \
	for scenario in $(MOLECULE_SCENARIOS); do \
	  start=$$SECONDS; $(BIN)/molecule test -s $$scenario; \
	  echo "molecule: $$scenario passed in $$((SECONDS - start)) s"; \
	done

## Playbooks against pg_dump/pg_restore, redis-cli, tar and openssl at three data sizes; writes docs/benchmarks.*
## (options: make bench BENCH_ARGS="--sizes small,medium --runs 2 --operation 'DB PITR restore'").
bench: setup
	$(BIN)/pip install -q -r bench/requirements.txt
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf .sandbox .pytest_cache .ruff_cache .ansible drill_report
