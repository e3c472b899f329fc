#!/usr/bin/env bash
# make test-containers: the image and the compose cluster in Docker.
#
#   tests/containers/run.sh VENV-BIN
#
# 1. A Docker engine: the one that answers, or Debian's docker.io installed (as
#    root) and dockerd started in the background, stopped again at the end.
#    This is the one place that decides to skip: where no engine can run, it
#    prints "SKIPPED: ... because ..." and exits 0. Past this point every
#    failure fails.
# 2. The base images (standins.sh): real ones when present or pullable,
#    otherwise local stand-ins, said so in the output.
# 3. tests/containers/test_compose.py: builds the Dockerfile, runs compose.yaml
#    under a project name of its own, faults it through HAProxy, and always
#    takes the project down again (containers and volumes).
set -euo pipefail

BIN=${1:?usage: run.sh VENV-BIN}
cd "$(dirname "$0")/../.."
HERE=tests/containers
DOCKERD_LOG=${JETSOCK_DOCKERD_LOG:-/var/log/jetsock-dockerd.log}

skip() {
  echo "SKIPPED: make test-containers (the Docker image and the compose cluster) because $*"
  exit 0
}

engine_answers() { docker info >/dev/null 2>&1; }

# Until `docker info` answers (0), dockerd exits (1) or 60 s have passed (2).
wait_for_engine() {
  local pid=$1
  for _ in $(seq 60); do
    engine_answers && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 1
  done
  return 2
}

started_dockerd=
stop_dockerd() {
  if [ -n "$started_dockerd" ] && kill -0 "$started_dockerd" 2>/dev/null; then
    echo "stopping the dockerd started for this run (pid $started_dockerd)"
    kill -TERM "$started_dockerd"
    for _ in $(seq 30); do kill -0 "$started_dockerd" 2>/dev/null || return 0; sleep 1; done
  fi
}

if ! engine_answers; then
  root=$([ "$(id -u)" = 0 ] && echo yes || echo no)
  if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
    [ "$root" = yes ] || skip "there is no Docker engine here and installing one (apt-get install docker.io) needs root"
    command -v apt-get >/dev/null || skip "there is no Docker engine here and no apt-get to install docker.io with"
    echo "installing Debian's docker.io"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null; }; then
      skip "apt-get install docker.io failed"
    fi
  fi
  # The package may have started the engine itself (where systemd runs).
  if ! engine_answers; then
    if [ "$root" != yes ]; then
      if [ -S /var/run/docker.sock ]; then
        skip "the Docker engine's socket (/var/run/docker.sock) does not answer this user (not in the docker group?)"
      fi
      skip "no Docker engine runs and starting dockerd needs root"
    fi
    # A pid file left by a dockerd that died without cleaning up stops the next one.
    if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
      rm -f /var/run/docker.pid
    fi
    echo "starting dockerd in the background (log: $DOCKERD_LOG)"
    nohup dockerd >"$DOCKERD_LOG" 2>&1 &
    started_dockerd=$!
    trap stop_dockerd EXIT
    waited=0
    wait_for_engine "$started_dockerd" || waited=$?
    if [ "$waited" != 0 ]; then
      tail -n 15 "$DOCKERD_LOG" || true
      stop_dockerd
      if [ "$waited" = 1 ]; then
        skip "dockerd exited at start on this machine (the last lines of its log are above)"
      fi
      skip "dockerd did not answer within 60 s on this machine (the last lines of its log are above)"
    fi
  fi
fi
echo "Docker engine $(docker version --format '{{.Server.Version}}'), storage $(docker info --format '{{.Driver}}')"

COMPOSE=$("$BIN/python" -c "import compose, pathlib; print(pathlib.Path(compose.__file__).with_name('docker-compose'))")
echo "Compose: $("$COMPOSE" version)"

"$HERE/standins.sh" "$BIN/nats-server"

# The folder is left out of the default `pytest` run (pyproject.toml's norecursedirs);
# named here, it runs.
JETSOCK_COMPOSE=$COMPOSE "$BIN/python" -m pytest -q -s -p no:cacheprovider "$HERE"
