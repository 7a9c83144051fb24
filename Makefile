# The two commands: `make up` (run everything) and `make test` (run every test).
# Everything else installs itself on first use: the virtualenv, the pinned Python packages and
# the Kafka broker's jars (from Maven Central). Runtime state lives in .state/ (git-ignored).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

GITLEAKS_VERSION := 8.30.1
GITLEAKS := .state/tools/gitleaks-$(GITLEAKS_VERSION)/gitleaks
SCAN_REPO ?= .

.PHONY: install system-packages secret-scan up down status test bench clean-state help

help:
	@echo "make up       start Kafka, the live consumer, the feed and Airflow; unpause the DAGs; print the UI address"
	@echo "make down     stop everything make up started"
	@echo "make status   health check: what is down, why, and the fix"
	@echo "make test     scan the repository and its history for secrets, then run the whole test suite"
	@echo "make bench    run the benchmarks"

install: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] >= (3, 11), "Python 3.11+ is needed"' \
		|| { echo "error: $(PYTHON) is older than 3.11; install Python 3.11 and run again (or PYTHON=/path/to/python3.11 make ...)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip==26.3"
	$(BIN)/python -m pip install -q -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	@touch $@

up: install
	@$(BIN)/citibikes up

down:
	@if [ -x $(BIN)/citibikes ]; then $(BIN)/citibikes down; else echo "nothing to stop (not installed)"; fi

status:
	@$(BIN)/citibikes status || true   # exit 1 (something down) and 3 (nothing runs) are for scripts: `citibikes status`

test: install system-packages secret-scan
	$(BIN)/python -m pytest

# gitleaks over every commit of the repository (SCAN_REPO): a key, token or password ever committed fails the
# build, even when a later commit removed it (rotate it, then rewrite the history). Built once with Go.
secret-scan: $(GITLEAKS)
	$(GITLEAKS) git --no-banner --no-color --redact --verbose --log-level warn $(SCAN_REPO)
	@echo "secret scan: no secret in $$(git -C $(SCAN_REPO) rev-list --count HEAD) commits"

$(GITLEAKS):
	@command -v go >/dev/null || { echo "error: go not found: the secret scanner (gitleaks) is built with Go; install Go 1.23+ and run again"; exit 2; }
	GOBIN=$(CURDIR)/$(dir $(GITLEAKS)) go install github.com/zricethezav/gitleaks/v8@v$(GITLEAKS_VERSION)

# The tests' Debian packages, installed in one go when missing: PostgreSQL (the live store's tests start a real
# server) and Chromium (the dashboard's tests drive it through Playwright, which downloads no browser).
system-packages:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing=" postgresql"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing (Debian packages) for the tests"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } \
		|| { echo "error: cannot install$$missing; run 'sudo apt-get install$$missing' and try again"; exit 2; }; \
	fi

bench: install
	$(BIN)/python -m bench

clean-state: down
	rm -rf .state
