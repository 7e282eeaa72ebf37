#!/usr/bin/env bash
# The local images docker-compose.local.yml runs, built with no image registry at all:
#
#   proj-local/debian:forky      Debian forky minbase from this machine's Debian mirror (mmdebstrap, docker import)
#   proj-local/debian:bookworm   the same of Debian bookworm
#   proj-local/rabbitmq:4.3      docker/rabbitmq/Dockerfile on forky: rabbitmq-server 4.3.6 (Erlang 29), management plugin
#   proj-local/python:local      docker/python/Dockerfile on bookworm: Debian's python3 (3.11), a virtualenv at /opt/venv
#   proj-local/app:local         the project's ./Dockerfile with --build-arg BASE=proj-local/python:local
#   proj-local/celery-worker:local  docker/celery-worker/Dockerfile: the app plus psutil, for pytest-celery
#
# The RabbitMQ image's tag names its release: the tags are shared by every checkout that builds on one engine,
# and a checkout from before 4.3 builds its 3.10 image as proj-local/rabbitmq:local.
#
# Each image is labelled with a hash of its inputs (proj.inputs: its files, and its base's hash);
# an image whose label matches is kept, so a second run builds nothing. pip inside the app build trusts
# this machine's CA bundle through a BuildKit secret: mounted for that one RUN, in no image layer.
#
# Needs a running Docker engine (./dev.sh images installs and starts one) and root (mmdebstrap).
# PROJ_DEBIAN_MIRROR overrides the mirror read from /etc/apt/sources.list* (docker/debian.sh, which
# dev.sh's RabbitMQ 4.3 root filesystem shares).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=docker/debian.sh
. docker/debian.sh

PREFIX=proj-local
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

# "deb URI SUITE main" lines for a base of SUITE: this machine's Debian mirror (and, for a stable suite,
# its updates and security mirror; forky, Debian testing, has neither).
apt_lines() {
  local suite=$1 mirror security
  mirror=$(debian_mirror)
  echo "deb $mirror $suite main"
  if [ "$suite" = forky ]; then return; fi
  echo "deb $mirror $suite-updates main"
  security=$(debian_security_mirror)
  if [ -n "$security" ]; then echo "deb $security $suite-security main"; fi
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

# -- Debian bases -----------------------------------------------------------------------------------
tarball="" # the base being built, removed on exit
# A policy-rc.d that forbids starting services during package installs, as in Docker's Debian images.
HOOK='printf "#!/bin/sh\nexit 101\n" > "$1/usr/sbin/policy-rc.d" && chmod 755 "$1/usr/sbin/policy-rc.d"'

# debian_base SUITE: builds $PREFIX/debian:SUITE unless current; sets base_hash to its inputs' hash.
debian_base() {
  local suite=$1 image=$PREFIX/debian:$1 start=$SECONDS lines_text recipe options=()
  local -a lines
  lines_text=$(apt_lines "$suite")
  mapfile -t lines <<<"$lines_text"
  recipe="mmdebstrap --variant=minbase $suite"
  if [ "$suite" = forky ]; then
    options=(--aptopt="$FORKY_APT_OPTION")
    recipe+=" ${options[*]}"
  fi
  base_hash=$(inputs_hash "$recipe" "$HOOK" "${lines[@]}")
  current "$image" "$base_hash" && return
  command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: apt-get install mmdebstrap (./dev.sh images does)"
  say "building $image from ${lines[0]#deb }"
  tarball=$(mktemp /var/tmp/proj-base.XXXXXX.tar)
  trap 'rm -f "$tarball"' EXIT
  mmdebstrap --quiet --variant=minbase "${options[@]}" --format=tar --customize-hook="$HOOK" \
    "$suite" "$tarball" "${lines[@]}" ||
    die "mmdebstrap could not build Debian $suite from ${lines[0]#deb } (is the mirror reachable?)"
  docker import -c "LABEL proj.inputs=$base_hash" -c 'CMD ["bash"]' "$tarball" "$image" >/dev/null
  rm -f "$tarball"
  took "$image" "$start" "$base_hash"
}

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

# RabbitMQ 4.3 from Debian forky; Python 3.11 from bookworm (forky's is newer than the app's tested 3.11).
debian_base forky
build "$PREFIX/rabbitmq:4.3" "$(inputs_hash "$base_hash" docker/rabbitmq)" \
  --build-arg "BASE=$PREFIX/debian:forky" docker/rabbitmq

debian_base bookworm
python_hash=$(inputs_hash "$base_hash" docker/python)
build "$PREFIX/python:local" "$python_hash" --build-arg "BASE=$PREFIX/debian:bookworm" docker/python

# What goes into the app image: .dockerignore decides, the Dockerfile copies these.
secret=()
if [ -s "$CA_BUNDLE" ]; then secret=(--secret "id=ca-bundle,src=$CA_BUNDLE"); fi
build "$PREFIX/app:local" \
  "$(inputs_hash "$python_hash" Dockerfile .dockerignore pyproject.toml README.md proj flowerconfig.py)" \
  --build-arg "BASE=$PREFIX/python:local" "${secret[@]}" -f Dockerfile .

# pytest-celery's worker for tests/test_celery_setup.py: the app image plus psutil.
build "$PREFIX/celery-worker:local" "$(inputs_hash "$(built_hash "$PREFIX/app:local")" docker/celery-worker)" \
  --build-arg "BASE=$PREFIX/app:local" "${secret[@]}" docker/celery-worker
