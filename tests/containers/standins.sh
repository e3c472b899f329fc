#!/usr/bin/env bash
# The base images compose.yaml and the Dockerfile name, for a Docker engine that
# reaches no registry:
#
#   tests/containers/standins.sh PATH-TO-nats-server
#
# For each of python:3.11-slim-bookworm, nats:2.15-alpine and haproxy:2.8:
# an image of that name already there is used as it is (a real one is never
# replaced; a stand-in of an older recipe is rebuilt); a missing one is pulled
# when a registry answers, and otherwise built here as a STAND-IN from Debian
# packages, labelled org.jetsock.standin=<recipe hash>. The stand-ins share
# one debootstrap'd bookworm rootfs, cached as a tarball in
# $JETSOCK_STANDIN_CACHE (default /var/cache/jetsock-standins), so only the
# first run downloads packages. They mimic what compose.yaml and the Dockerfile
# use of the official images, no more:
#
#   python:3.11-slim-bookworm  Debian's python3 (3.11) and python3-venv, `python`
#                              on PATH, groupadd/useradd; CMD python3
#   nats:2.15-alpine           the given nats-server binary on PATH, wget for the
#                              healthcheck; the official entrypoint's rule (a
#                              first argument starting with - means nats-server)
#   haproxy:2.8                Debian's haproxy (2.6), run as user haproxy with
#                              the official entrypoint's rule (`haproxy ...` runs
#                              as `haproxy -W -db ...`) and its CMD, -f
#                              /usr/local/etc/haproxy/haproxy.cfg; STOPSIGNAL SIGUSR1
#
# The host's local CA certificates (/usr/local/share/ca-certificates, where a
# TLS-intercepting proxy's CA is installed) are trusted in the python stand-in
# too, so `pip install` in the Dockerfile reaches PyPI the way the host does.
set -euo pipefail

NATS_SERVER=${1:?usage: standins.sh PATH-TO-nats-server}
CACHE=${JETSOCK_STANDIN_CACHE:-/var/cache/jetsock-standins}
MIRROR=${JETSOCK_STANDIN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
PACKAGES=python3,python3-venv,haproxy,wget,ca-certificates
LABEL=org.jetsock.standin
PYTHON_IMAGE=python:3.11-slim-bookworm
NATS_IMAGE=nats:2.15-alpine
HAPROXY_IMAGE=haproxy:2.8
LOCAL_CAS=/usr/local/share/ca-certificates

log() { printf 'standins: %s\n' "$*" >&2; }

# The recipe: this script, the rootfs's package list, the nats-server binary and
# the local CAs. A stand-in built from another recipe is rebuilt.
ROOTFS_ID=$(printf '%s %s %s' "$SUITE" "$PACKAGES" "$MIRROR" | sha256sum | cut -c1-12)
RECIPE=$(
  {
    cat "$0"
    echo "$ROOTFS_ID"
    sha256sum "$NATS_SERVER" | cut -d' ' -f1
    cat "$LOCAL_CAS"/*.crt 2>/dev/null || true
  } | sha256sum | cut -c1-12
)
BASE=jetsock-standin/$SUITE:$ROOTFS_ID
TARBALL=$CACHE/$SUITE-$ROOTFS_ID.tar

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# "missing", "standin-current", "standin-old" or "real" for an image name.
state() {
  local label
  if ! label=$(docker image inspect --format "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null); then
    echo missing
  elif [ "$label" = "$RECIPE" ]; then
    echo standin-current
  elif [ -n "$label" ] && [ "$label" != "<no value>" ]; then
    echo standin-old
  else
    echo real
  fi
}

rootfs() {
  if [ -f "$TARBALL" ]; then
    log "rootfs: cached $TARBALL"
    return
  fi
  if ! command -v debootstrap >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
      log "building the stand-ins needs debootstrap: apt-get install debootstrap"
      exit 1
    fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  mkdir -p "$CACHE"
  local root=$WORK/rootfs
  log "rootfs: debootstrap $SUITE ($PACKAGES) from $MIRROR, about a minute"
  if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
    tail -n 30 "$WORK/debootstrap.log" >&2
    exit 1
  fi
  # Only what an image needs: no downloaded .debs, no package lists.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  # Written beside the final name and renamed: an interrupted run leaves no half tarball.
  tar -C "$root" --numeric-owner -cf "$TARBALL.part" .
  mv "$TARBALL.part" "$TARBALL"
  rm -rf "$root"
}

base() {
  if docker image inspect "$BASE" >/dev/null 2>&1; then
    return
  fi
  rootfs
  log "importing $TARBALL as $BASE"
  docker import --change "LABEL $LABEL=base" --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$TARBALL" "$BASE" >/dev/null
}

# build NAME: a Dockerfile in $WORK/NAME-context, tagged NAME.
build() {
  local name=$1 context=$2
  log "building STAND-IN $name"
  # The legacy builder: present in every Docker CLI that talks to a 20.10 engine,
  # with or without buildx. Its deprecation notice goes to the log with the rest.
  if ! DOCKER_BUILDKIT=0 docker build --quiet --label "$LABEL=$RECIPE" -t "$name" "$context" >"$WORK/build.log" 2>&1; then
    cat "$WORK/build.log" >&2
    exit 1
  fi
}

python_standin() {
  local ctx=$WORK/python
  mkdir -p "$ctx/cas"
  cp "$LOCAL_CAS"/*.crt "$ctx/cas/" 2>/dev/null || true
  cat >"$ctx/Dockerfile" <<EOF
FROM $BASE
COPY cas/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null && ln -s /usr/bin/python3 /usr/local/bin/python
ENV LANG=C.UTF-8
CMD ["python3"]
EOF
  build "$PYTHON_IMAGE" "$ctx"
}

nats_standin() {
  local ctx=$WORK/nats
  mkdir -p "$ctx"
  cp "$NATS_SERVER" "$ctx/nats-server"
  cat >"$ctx/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
set -e
# As the official image's entrypoint: options alone are options of nats-server.
if [ "${1#-}" != "$1" ]; then
  set -- nats-server "$@"
fi
exec "$@"
EOF
  cat >"$ctx/Dockerfile" <<EOF
FROM $BASE
COPY nats-server /usr/local/bin/nats-server
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN chmod 755 /usr/local/bin/nats-server /usr/local/bin/docker-entrypoint.sh && mkdir -p /etc/nats
EXPOSE 4222 6222 8222
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["nats-server", "--config", "/etc/nats/nats-server.conf"]
EOF
  build "$NATS_IMAGE" "$ctx"
}

haproxy_standin() {
  local ctx=$WORK/haproxy
  mkdir -p "$ctx"
  cat >"$ctx/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
set -e
# As the official image's entrypoint: options alone are options of haproxy, and
# haproxy runs in master-worker mode in the foreground.
if [ "${1#-}" != "$1" ]; then
  set -- haproxy "$@"
fi
if [ "$1" = haproxy ]; then
  shift
  set -- haproxy -W -db "$@"
fi
exec "$@"
EOF
  cat >"$ctx/Dockerfile" <<EOF
FROM $BASE
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN chmod 755 /usr/local/bin/docker-entrypoint.sh && mkdir -p /usr/local/etc/haproxy \
    && ln -s /usr/sbin/haproxy /usr/local/sbin/haproxy
# The official image stops haproxy with SIGUSR1 (soft stop) and runs it as haproxy.
STOPSIGNAL SIGUSR1
USER haproxy
WORKDIR /var/lib/haproxy
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
EOF
  build "$HAPROXY_IMAGE" "$ctx"
}

standins=()
for name in "$PYTHON_IMAGE" "$NATS_IMAGE" "$HAPROXY_IMAGE"; do
  case $(state "$name") in
  real)
    log "using $name as found (not a stand-in)"
    continue
    ;;
  standin-current)
    standins+=("$name")
    continue
    ;;
  missing)
    # A registry, where there is one, gives the real image.
    if timeout 120 docker pull --quiet "$name" >/dev/null 2>&1; then
      log "pulled $name"
      continue
    fi
    ;;
  esac
  base
  case $name in
  "$PYTHON_IMAGE") python_standin ;;
  "$NATS_IMAGE") nats_standin ;;
  "$HAPROXY_IMAGE") haproxy_standin ;;
  esac
  standins+=("$name")
done

if [ ${#standins[@]} -gt 0 ]; then
  list=$(printf '%s, ' "${standins[@]}")
  echo "STAND-IN base images (built locally from Debian packages, not the official images): ${list%, }"
fi
