# jetsock: `make run` serves on an embedded NATS; `make test` installs and runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test browser-deps lint schema settings-doc clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	exec $(BIN)/jetsock serve --dev

test: $(STAMP) browser-deps
	$(BIN)/ruff check core edge schemas clients/python tests bench
	$(BIN)/mypy
	node --test tests/js/
	$(BIN)/python -m pytest -q

# Debian's Chromium for the browser tests (Playwright's own download does not
# work offline), and node for the JS client's unit tests: installed when root.
browser-deps:
	@if ! command -v chromium >/dev/null || ! command -v node >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium nodejs >/dev/null; \
	  else \
	    echo "chromium and node are needed for the browser and JS tests: apt-get install chromium nodejs" >&2; exit 1; \
	  fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check core edge schemas clients/python tests bench
	$(BIN)/ruff format --check core edge schemas clients/python tests bench
	$(BIN)/mypy

schema: $(STAMP)
	$(BIN)/python -m schemas.jsonschema > schemas/jetsock.schema.json

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache

settings-doc: $(STAMP)
	$(BIN)/python -m core.settings --write schemas/PROTOCOL.md
