# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CLI := $(BIN)/stripe-streams
STAMP := $(VENV)/.installed

.PHONY: install services migrate test unit lint demo dashboard down clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

services: install
	$(CLI) services up

migrate: services
	$(CLI) migrate

lint: install
	$(BIN)/ruff check streams ingest projections tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: install
	$(BIN)/pytest -q tests/unit

test: migrate lint
	$(BIN)/pytest -q -p no:cacheprovider tests

demo: migrate
	$(BIN)/python -m streams.devtools.demo

dashboard: install
	$(BIN)/python -m streams.devtools.dashboard --write

down:
	$(CLI) services down

clean: down
	rm -rf $(VENV) .services
