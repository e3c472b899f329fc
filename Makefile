# jetsock: `make run` serves on an embedded NATS; `make test` installs and runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint schema settings-doc clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	exec $(BIN)/jetsock serve --dev

test: $(STAMP)
	$(BIN)/ruff check core edge schemas tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check core edge schemas tests bench
	$(BIN)/ruff format --check core edge schemas tests bench
	$(BIN)/mypy

schema: $(STAMP)
	$(BIN)/python -m schemas.jsonschema > schemas/jetsock.schema.json

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache

settings-doc: $(STAMP)
	$(BIN)/python -m core.settings --write schemas/PROTOCOL.md
