# Signalfire's entry points. `make up` runs the whole stack; `make test` runs every check.
# Both install what they need: uv (from PyPI), the workspace, PostgreSQL 15 and TimescaleDB.

SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
TOOLS := .signalfire/tools
UV := $(shell command -v uv 2>/dev/null || echo $(TOOLS)/bin/uv)
PYTEST_ARGS ?=
# `make up RULES=a.yaml,rules/ NOTIFY=my-notify.yaml AGENT=my-agent.yaml`: your own files
# (relative to the repository or absolute) instead of the shipped ones.
# `make up NATS_NODES=3`: a three-node JetStream cluster instead of one nats-server.
# `make up EVALUATORS=2 NOTIFIERS=2 GATEWAYS=2 INGEST_WORKERS=2`: replicas side by side.
RULES ?=
NOTIFY ?=
AGENT ?=
NATS_NODES ?=
EVALUATORS ?=
NOTIFIERS ?=
GATEWAYS ?=
INGEST_WORKERS ?=
UP_ARGS = $(if $(RULES),--rules '$(RULES)') $(if $(NOTIFY),--notify '$(NOTIFY)') $(if $(AGENT),--agent-config '$(AGENT)') \
  $(if $(NATS_NODES),--nats-nodes '$(NATS_NODES)') $(if $(EVALUATORS),--evaluators '$(EVALUATORS)') \
  $(if $(NOTIFIERS),--notifiers '$(NOTIFIERS)') $(if $(GATEWAYS),--gateways '$(GATEWAYS)') \
  $(if $(INGEST_WORKERS),--ingest-workers '$(INGEST_WORKERS)')

.PHONY: help up test sync provision provision-test lint format typecheck coverage unit integration e2e faults screenshots schemas api-docs clean

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## |^##\+ ' $(MAKEFILE_LIST) \
	  | awk -F':.*## ' '/^##\+ /{print "                   " substr($$0, 5); next} {printf "  make %-11s %s\n", $$1, $$2}'

$(TOOLS)/bin/uv:
	@echo "[make] installing uv $(UV_VERSION) from PyPI into $(TOOLS)"
	@python3 -m venv $(TOOLS)
	@$(TOOLS)/bin/pip install --quiet "uv==$(UV_VERSION)"

sync: $(if $(shell command -v uv 2>/dev/null),,$(TOOLS)/bin/uv)  ## install the workspace (uv sync --locked)
	@$(UV) sync --locked --all-packages --quiet

provision:  ## install PostgreSQL 15, build TimescaleDB once (cached), the dashboard's npm packages
	@bash deploy/dev/provision-postgres.sh
	@bash deploy/dev/provision-web.sh

provision-test: provision  ## also Chromium (Debian's) for the browser tests
	@bash deploy/dev/provision-web.sh chromium

up: sync provision  ## run NATS, PostgreSQL/TimescaleDB, the four services and an agent (Ctrl-C stops)
	@$(UV) run --no-sync python deploy/dev/devstack.py up $(UP_ARGS)
##+ your own files: RULES=f[,f...] (rule files, directories, globs) NOTIFY=f AGENT=f, relative to
##+ the repository or absolute; checked before anything starts, rules and NOTIFY reloaded when
##+ edited; a process that exits is restarted (back-off 1 s doubling to 30 s);
##+ NATS_NODES=3: a three-node JetStream cluster on loopback, 3 replicas (docs/scaling.md);
##+ EVALUATORS=N NOTIFIERS=N GATEWAYS=N INGEST_WORKERS=N: replicas side by side (docs/scaling.md)

# Coverage: line and branch coverage of shared/src and services/*/src, services started as
# subprocesses included ([tool.coverage.*] in pyproject.toml). The total is printed even when a
# test fails; the per-file report is .signalfire/coverage/html/index.html (and coverage.xml).
COV_DIR := .signalfire/coverage

# Two passes: the fault tests (kill -9, outages and load, with timing tolerances) one at a time
# on an otherwise quiet machine, then everything else in TEST_WORKERS pytest-xdist processes, a
# test file to a process (its module fixtures started once). Most of those tests wait on
# servers, browsers and clocks rather than compute: on 2 cores the second pass takes ~10 minutes
# instead of ~17. A pass that selects no test (PYTEST_ARGS=-k ...) is not a failure. A failure
# of the first pass is recapped at the very end (its assertion and FAULT lines), where a
# truncated CI log still shows it.
TEST_WORKERS ?= 2
PYTEST_COV = $(UV) run --no-sync pytest --cov --cov-report= --durations=15 $(PYTEST_ARGS)

test: sync provision-test lint typecheck  ## lint, types and every test, with line+branch coverage
	@rm -rf $(COV_DIR) && mkdir -p $(COV_DIR)
	@$(PYTEST_COV) -vv tests/faults 2>&1 | tee $(COV_DIR)/faults.log; rc=$${PIPESTATUS[0]}; [ $$rc = 5 ] && rc=0; \
	rc2=0; $(PYTEST_COV) --cov-append --cov-report=html --cov-report=xml -n $(TEST_WORKERS) --dist loadfile \
	  --ignore=tests/faults || rc2=$$?; [ $$rc2 = 5 ] && rc2=0; \
	echo "[make] coverage (line+branch, shared/src and services/*/src):" \
	  "$$($(UV) run --no-sync coverage report --format=total)% -- per file: $(COV_DIR)/html/index.html"; \
	if [ $$rc != 0 ]; then echo "[make] the fault pass failed (whole output: $(COV_DIR)/faults.log):"; \
	  grep -E '^(FAILED|ERROR) |^E  |^FAULT ' $(COV_DIR)/faults.log | cut -c1-400 | head -80; fi; \
	[ $$rc = 0 ] && [ $$rc2 = 0 ]

coverage:  ## the per-file coverage table of the last `make test` (least covered first)
	@$(UV) run --no-sync coverage report --sort=cover

lint:  ## ruff lint and format check
	@$(UV) run --no-sync ruff check .
	@$(UV) run --no-sync ruff format --check .

format:  ## apply ruff's formatting and safe fixes
	@$(UV) run --no-sync ruff format .
	@$(UV) run --no-sync ruff check --fix .

typecheck:  ## mypy (strict) on every package, the dev stack, the benchmarks and the tests
	@$(UV) run --no-sync mypy shared/src services/*/src deploy/dev bench tests

unit: sync  ## unit tests only (no servers)
	@$(UV) run --no-sync pytest tests/unit $(PYTEST_ARGS)

integration: sync provision  ## integration tests (real NATS and PostgreSQL)
	@$(UV) run --no-sync pytest tests/integration $(PYTEST_ARGS)

e2e: sync provision-test  ## the whole stack, end to end
	@$(UV) run --no-sync pytest tests/e2e $(PYTEST_ARGS)

faults: sync provision  ## the fault suite: kill -9, NATS and PostgreSQL outages, poison; prints each one's numbers
	@$(UV) run --no-sync pytest tests/faults -s $(PYTEST_ARGS)

screenshots: sync provision-test  ## refresh docs/screenshots (every dashboard page, both themes)
	@SF_UPDATE_SCREENSHOTS=1 $(UV) run --no-sync pytest tests/e2e/test_screenshots.py $(PYTEST_ARGS)

schemas: sync  ## regenerate docs/schemas from the event contract
	@$(UV) run --no-sync signalfire schemas write docs/schemas

api-docs: sync  ## regenerate the endpoint table of docs/gateway.md from the API's declarations
	@$(UV) run --no-sync python -m signalfire.gateway.api.doc_table docs/gateway.md

clean:  ## remove local state (.signalfire), caches and the virtual environment
	rm -rf .signalfire .venv .pytest_cache .mypy_cache .ruff_cache
