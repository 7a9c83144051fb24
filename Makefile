# The two commands: `make up` (run everything) and `make test` (run every test).
# Everything else installs itself on first use: the virtualenv, the pinned Python packages and
# the Kafka broker's jars (from Maven Central). Runtime state lives in .state/ (git-ignored).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install system-packages up down status test bench clean-state help

help:
	@echo "make up       start Kafka, the live consumer, the feed and Airflow; unpause the DAGs; print the UI address"
	@echo "make down     stop everything make up started"
	@echo "make status   health check: what is down, why, and the fix"
	@echo "make test     run the whole test suite (starts and stops its own Kafka broker)"
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

test: install system-packages
	$(BIN)/python -m pytest

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
