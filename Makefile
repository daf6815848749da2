# Two commands do all the set-up: `make run` and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: run test lint bench clean

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
	$(BIN)/ruff check app tests bench
	$(BIN)/mypy app

test: lint
	$(BIN)/pytest -q

bench: $(VENV)/.test
	cd bench/peers && npm install --no-audit --no-fund --silent
	$(BIN)/python bench/fanout.py

clean:
	rm -rf $(VENV) var
