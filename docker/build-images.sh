#!/usr/bin/env bash
# The local images docker-compose.local.yml runs, built with no image registry at all:
#
#   proj-local/debian:bookworm   Debian bookworm minbase from this machine's Debian mirror (mmdebstrap, docker import)
#   proj-local/rabbitmq:local    docker/rabbitmq/Dockerfile: Debian's rabbitmq-server 3.10.8, management plugin
#   proj-local/python:local      docker/python/Dockerfile: Debian's python3, a virtualenv at /opt/venv
#   proj-local/app:local         the project's ./Dockerfile with --build-arg BASE=proj-local/python:local
#   proj-local/celery-worker:local  docker/celery-worker/Dockerfile: the app plus psutil, for pytest-celery
#
# Each image is labelled with a hash of its inputs (proj.inputs: its files, and its base's hash);
# an image whose label matches is kept, so a second run builds nothing. pip inside the app build trusts
# this machine's CA bundle through a BuildKit secret: mounted for that one RUN, in no image layer.
#
# Needs a running Docker engine (./dev.sh images installs and starts one) and root (mmdebstrap).
# PROJ_DEBIAN_MIRROR overrides the mirror read from /etc/apt/sources.list*.
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=proj-local
SUITE=bookworm
CA_BUNDLE=${PROJ_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
export DOCKER_BUILDKIT=1

say() { printf ' [*] %s\n' "$*"; }
die() {
  printf 'build-images: %s\n' "$*" >&2
  exit 1
}

# The docker CLI that can pass a build secret: `docker` when it has BuildKit (buildx, or a 20.10
# client), else Debian's own client next to the engine (a newer static `docker` without buildx
# only has the legacy builder).
build_cli() {
  local cli
  for cli in docker /usr/bin/docker; do
    if command -v "$cli" >/dev/null && "$cli" build --help 2>/dev/null | grep -q -- '--secret'; then
      echo "$cli"
      return
    fi
  done
  die "no docker CLI with BuildKit (docker build --secret): install docker.io or docker-buildx"
}

# "deb URI SUITE main" lines for the base: this machine's Debian mirror (and its security mirror).
apt_lines() {
  local mirror=${PROJ_DEBIAN_MIRROR:-} security=""
  local uris
  uris=$(
    cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs:[[:space:]]*//p'
    cat /etc/apt/sources.list 2>/dev/null | sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\).*/\2/p'
  ) || true
  if [ -z "$mirror" ]; then
    mirror=$(tr ' ' '\n' <<<"$uris" | grep -E '/debian/?$' | head -n1 || true)
  fi
  security=$(tr ' ' '\n' <<<"$uris" | grep -E '/debian-security/?$' | head -n1 || true)
  [ -n "$mirror" ] || die "no Debian mirror in /etc/apt/sources.list*: set PROJ_DEBIAN_MIRROR=http://..."
  echo "deb $mirror $SUITE main"
  echo "deb $mirror $SUITE-updates main"
  if [ -n "$security" ]; then echo "deb $security $SUITE-security main"; fi
}

# A short hash of strings and of the files under the paths among them.
inputs_hash() {
  local arg
  for arg in "$@"; do
    if [ -e "$arg" ]; then
      find "$arg" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum
    else
      printf '%s\n' "$arg"
    fi
  done | sha256sum | cut -c1-16
}

built_hash() {
  docker image inspect -f '{{ index .Config.Labels "proj.inputs" }}' "$1" 2>/dev/null || true
}

# current IMAGE HASH: true (and says so) when IMAGE is already built from these inputs.
current() {
  if [ "$(built_hash "$1")" = "$2" ]; then
    say "$1 is up to date (inputs $2)"
    return 0
  fi
  return 1
}

took() { say "$1 built in $((SECONDS - $2)) s (inputs $3)"; }

docker info >/dev/null 2>&1 || die "no Docker engine answers: run ./dev.sh images (it starts one)"
BUILD=$(build_cli)

# -- Debian base ------------------------------------------------------------------------------------
APT_LINES_TEXT=$(apt_lines)
mapfile -t APT_LINES <<<"$APT_LINES_TEXT"
# A policy-rc.d that forbids starting services during package installs, as in Docker's Debian images.
HOOK='printf "#!/bin/sh\nexit 101\n" > "$1/usr/sbin/policy-rc.d" && chmod 755 "$1/usr/sbin/policy-rc.d"'
BASE=$PREFIX/debian:$SUITE
base_hash=$(inputs_hash "mmdebstrap --variant=minbase $SUITE" "$HOOK" "${APT_LINES[@]}")
if ! current "$BASE" "$base_hash"; then
  command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: apt-get install mmdebstrap (./dev.sh images does)"
  start=$SECONDS
  say "building $BASE from ${APT_LINES[0]#deb }"
  tarball=$(mktemp /var/tmp/proj-base.XXXXXX.tar)
  trap 'rm -f "$tarball"' EXIT
  mmdebstrap --quiet --variant=minbase --format=tar --customize-hook="$HOOK" "$SUITE" "$tarball" "${APT_LINES[@]}" ||
    die "mmdebstrap could not build Debian $SUITE from ${APT_LINES[0]#deb } (is the mirror reachable?)"
  docker import -c "LABEL proj.inputs=$base_hash" -c 'CMD ["bash"]' "$tarball" "$BASE" >/dev/null
  rm -f "$tarball"
  took "$BASE" "$start" "$base_hash"
fi

# -- images built from Dockerfiles ------------------------------------------------------------------
# build IMAGE HASH DOCKER-BUILD-ARGS...
build() {
  local image=$1 hash=$2 start=$SECONDS
  shift 2
  current "$image" "$hash" && return
  say "building $image"
  "$BUILD" build -q --label "proj.inputs=$hash" -t "$image" "$@" >/dev/null || die "docker build of $image failed"
  took "$image" "$start" "$hash"
}

build "$PREFIX/rabbitmq:local" "$(inputs_hash "$base_hash" docker/rabbitmq)" \
  --build-arg "BASE=$BASE" docker/rabbitmq

python_hash=$(inputs_hash "$base_hash" docker/python)
build "$PREFIX/python:local" "$python_hash" --build-arg "BASE=$BASE" docker/python

# What goes into the app image: .dockerignore decides, the Dockerfile copies these.
secret=()
if [ -s "$CA_BUNDLE" ]; then secret=(--secret "id=ca-bundle,src=$CA_BUNDLE"); fi
build "$PREFIX/app:local" \
  "$(inputs_hash "$python_hash" Dockerfile .dockerignore pyproject.toml README.md proj flowerconfig.py)" \
  --build-arg "BASE=$PREFIX/python:local" "${secret[@]}" -f Dockerfile .

# pytest-celery's worker for tests/test_celery_setup.py: the app image plus psutil.
build "$PREFIX/celery-worker:local" "$(inputs_hash "$(built_hash "$PREFIX/app:local")" docker/celery-worker)" \
  --build-arg "BASE=$PREFIX/app:local" "${secret[@]}" docker/celery-worker
