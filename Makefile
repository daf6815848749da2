# Two commands do all the set-up: `make run` and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

# Debian packages the tests drive for real: Chromium for the browser tests, Redis and
# PostgreSQL for the scale-out seams, sqlite3 for the backup examples in docs/ (Node.js, for
# the real piesocket-js SDK, is checked below).
TEST_PACKAGES := chromium redis-server postgresql sqlite3

.PHONY: run test lint system-deps bench clean

$(VENV)/.run: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test: pyproject.toml $(VENV)/.run
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.run
	$(BIN)/c8ws serve

lint: $(VENV)/.test
	$(BIN)/ruff check app tests bench playwright
	$(BIN)/mypy app

system-deps:
	@missing=""; for package in $(TEST_PACKAGES); do \
	  dpkg -s $$package >/dev/null 2>&1 || missing="$$missing $$package"; done; \
	command -v npm >/dev/null 2>&1 || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

tests/sdk/node_modules: tests/sdk/package.json
	cd tests/sdk && npm install --no-audit --no-fund --silent
	touch $@

test: lint system-deps tests/sdk/node_modules
	$(BIN)/pytest -q

bench: $(VENV)/.test system-deps
	cd bench/peers && npm install --no-audit --no-fund --silent
	$(BIN)/python bench/fanout.py

clean:
	rm -rf $(VENV) var
