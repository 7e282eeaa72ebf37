#!/usr/bin/env bash
# Set everything up, then run the demo or the tests.
#
#   ./dev.sh demo    virtualenv + package + RabbitMQ, then `proj demo` and `proj lab all`
#   ./dev.sh test    the same set-up, then the linters, the whole test suite on RabbitMQ 4.3 and the
#                    compatibility set (COMPAT_TESTS below) on Debian 12's RabbitMQ 3.10
#   ./dev.sh setup   only the set-up
#   ./dev.sh images  a Docker engine and the local images docker-compose.local.yml runs (docker/build-images.sh)
#   ./dev.sh upgrade-check
#                    the newest celery, kombu, amqp, billiard and vine PyPI has, in a throwaway virtualenv:
#                    which reaches into their internals (proj/compat.py) still hold, and the foundation tests
#
# Works on a fresh Debian or Ubuntu machine with Python 3.11: installs what is missing with
# apt-get (as root, or through sudo) and pip (into ./.venv). Nothing is started as a service.
#
# RabbitMQ: proj's private nodes run 4.3 (PROJ_RABBITMQ=4.3, the default), Debian forky's
# rabbitmq-server in a root filesystem that mmdebstrap builds once from Debian's mirror and that
# proj runs under bubblewrap (proj/rabbit/node.py); it is kept in PROJ_RABBITMQ_ROOTFS, outside the
# repository. First time: about 25 s and 245 MB (plus mmdebstrap and bubblewrap from apt). Debian
# 12's own rabbitmq-server (3.10) is installed too: PROJ_RABBITMQ=3.10 selects it.
set -euo pipefail
cd "$(dirname "$0")"

VENV=${PROJ_VENV:-.venv}
PYTHON=${PYTHON:-python3}

say() { printf ' [*] %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    as_root apt-get update -qq
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

RABBITMQ_ROOTFS=${PROJ_RABBITMQ_ROOTFS:-${XDG_CACHE_HOME:-$HOME/.cache}/proj/rabbitmq-4.3-rootfs}
export PROJ_RABBITMQ_ROOTFS=$RABBITMQ_ROOTFS
# What the README's test command also runs on 3.10: the foundation (acknowledgment, durability,
# dispatch, the worker, the producer) and the interoperability and dead-letter tests.
COMPAT_TESTS=(tests/test_acknowledgment.py tests/test_durability.py tests/test_dispatch.py
  tests/test_worker.py tests/test_producer.py tests/test_dead_letters.py)

ensure_rabbitmq() {
  if [ -n "${PROJ_RABBITMQ_BIN:-}" ]; then
    return
  fi
  if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
    say "installing rabbitmq-server (Debian 12: 3.10) with apt-get"
    apt_install rabbitmq-server
    # Debian's package may start a system node on 5672; proj's own nodes use their own ports and
    # data dirs, so the two never meet.
  fi
  if [ "${PROJ_RABBITMQ:-4.3}" != 3.10 ]; then
    ensure_rabbitmq_43
  fi
}

# debian_mirror and FORKY_APT_OPTION: shared with docker/build-images.sh.
# shellcheck source=docker/debian.sh
. docker/debian.sh

# RabbitMQ 4.3: Debian forky's rabbitmq-server and its Erlang in a minimal root filesystem, built once.
# Built in a directory of its own and renamed into place when complete, so an interrupted build is
# never used. Forky's Release file on the mirror may be past its Valid-Until date: not checked.
ensure_rabbitmq_43() {
  local missing=()
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  command -v bwrap >/dev/null || missing+=(bubblewrap)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} with apt-get"
    apt_install "${missing[@]}"
  fi
  if [ -x "$RABBITMQ_ROOTFS/usr/lib/rabbitmq/bin/rabbitmq-server" ]; then
    return
  fi
  local mirror building="$RABBITMQ_ROOTFS.building.$$" start=$SECONDS old
  mirror=$(debian_mirror)
  mkdir -p "$(dirname "$RABBITMQ_ROOTFS")"
  for old in "$RABBITMQ_ROOTFS".building.*; do  # an earlier build that was interrupted
    [ -e "$old" ] && ! kill -0 "${old##*.}" 2>/dev/null && as_root rm -rf "$old"
  done
  say "building RabbitMQ 4.3 (Debian forky) into $RABBITMQ_ROOTFS from $mirror (once: about 25 s, 245 MB)"
  if ! as_root mmdebstrap --quiet --variant=minbase --aptopt="$FORKY_APT_OPTION" \
    --include=rabbitmq-server forky "$building" "$mirror"; then
    as_root rm -rf "$building"
    echo "dev.sh: could not build RabbitMQ 4.3 (see above); PROJ_RABBITMQ=3.10 runs Debian 12's instead" >&2
    return 1
  fi
  mv -T "$building" "$RABBITMQ_ROOTFS"
  say "RabbitMQ 4.3 built in $((SECONDS - start)) s: $(du -sh "$RABBITMQ_ROOTFS" | cut -f1) in $RABBITMQ_ROOTFS"
}

ensure_venv() {
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "dev.sh: $PYTHON is $("$PYTHON" --version 2>&1); proj needs Python 3.11 or newer (set PYTHON=...)" >&2
    exit 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
      say "installing python3-venv with apt-get"
      rm -rf "$VENV"
      apt_install python3-venv
      "$PYTHON" -m venv "$VENV"
    fi
  fi
  say "installing proj, its tooling and its test tools into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test,tools]'
}

# What only the tests need: a real browser for Flower's pages (Playwright drives Debian's
# chromium; Playwright's own browser download is not used) and a real compose implementation
# to check docker-compose.yml without a Docker engine.
ensure_test_tools() {
  local missing=()
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} with apt-get"
    apt_install "${missing[@]}"
  fi
}

setup() {
  ensure_rabbitmq
  ensure_venv
}

# -- containers: Debian's Docker engine, started by hand; images built with no registry -------------

DOCKERD_PID=${PROJ_DOCKERD_PID:-/run/proj-dockerd.pid}
DOCKERD_LOG=${PROJ_DOCKERD_LOG:-/var/log/proj-dockerd.log}
dockerd_started=""

ensure_docker_tools() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} with apt-get"
    apt_install "${missing[@]}"
  fi
}

# A Docker engine: the one that answers, else dockerd started here (no init system runs it).
ensure_dockerd() {
  if docker info >/dev/null 2>&1; then
    return
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "dev.sh: no Docker engine answers, and starting one needs root" >&2
    return 1
  fi
  local start=$SECONDS i
  # Its own session (Ctrl+C in this terminal does not reach it); dockerd writes its PID file itself.
  setsid dockerd --pidfile "$DOCKERD_PID" >>"$DOCKERD_LOG" 2>&1 </dev/null &
  for i in $(seq 300); do
    docker info >/dev/null 2>&1 && break
    sleep 0.1
  done
  if ! docker info >/dev/null 2>&1; then
    echo "dev.sh: dockerd did not answer within 30 s; see $DOCKERD_LOG" >&2
    return 1
  fi
  dockerd_started=$(cat "$DOCKERD_PID")
  say "started dockerd (PID $dockerd_started) in $((SECONDS - start)) s, log in $DOCKERD_LOG; stop it: kill \$(cat $DOCKERD_PID)"
}

stop_dockerd_we_started() {
  if [ -n "$dockerd_started" ] && kill -0 "$dockerd_started" 2>/dev/null; then
    say "stopping the dockerd this script started (PID $dockerd_started)"
    kill "$dockerd_started"
    local i
    for i in $(seq 300); do kill -0 "$dockerd_started" 2>/dev/null || break; sleep 0.2; done
    rm -f "$DOCKERD_PID"
  fi
}

images() {
  ensure_docker_tools && ensure_dockerd && docker/build-images.sh
}

# -- what the newest releases of the libraries proj reaches into would do ------------------------------

#: The libraries whose private names proj/compat.py checks, pinned in pyproject.toml to the tested minors.
UPGRADED="celery kombu amqp billiard vine"
#: The tests that say whether the tutorial's behaviours still hold: the broker-free tier, then these.
FOUNDATION_TESTS="tests/test_compat.py tests/test_worker.py tests/test_acknowledgment.py tests/test_dispatch.py tests/test_publish.py tests/test_fastpath.py"

upgrade_check() {
  local dir venv status=0
  dir=$(mktemp -d -t proj-upgrade-check.XXXXXX)
  venv="$dir/venv"
  trap 'rm -rf "$dir"' RETURN
  say "a throwaway virtualenv in $venv with the newest $UPGRADED"
  "$PYTHON" -m venv "$venv"
  # Everything proj needs, its pins on these libraries lifted; then proj itself without its pins.
  "$venv/bin/python" - "$UPGRADED" >"$dir/requirements.txt" <<'PY'
import re, sys, tomllib
lifted = set(sys.argv[1].split())
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = project["dependencies"] + project["optional-dependencies"]["test"] + project["optional-dependencies"]["tools"]
for req in reqs:
    name = re.match(r"[A-Za-z0-9_.-]+", req).group(0)
    print(name if name.lower() in lifted else req)
PY
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade -r "$dir/requirements.txt"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e .
  local lib tested
  for lib in $UPGRADED; do
    tested=$("$VENV/bin/python" -c "from importlib.metadata import version; print(version('$lib'))" 2>/dev/null || echo "?")
    say "$lib: tested $tested, newest $("$venv/bin/python" -c "from importlib.metadata import version; print(version('$lib'))")"
  done
  say "the reaches into their internals (proj/compat.py):"
  "$venv/bin/python" -m proj.selfcheck || status=1
  say "the foundation tests on the newest releases"
  "$venv/bin/python" -m pytest -q -p no:cacheprovider -m "not broker" || status=1
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pytest -q -p no:cacheprovider $FOUNDATION_TESTS || status=1
  if [ "$status" = 0 ]; then
    say "upgrade check: every feature on, the foundation tests pass: the pins may move to these releases"
  else
    say "upgrade check: see above for the features turned off (OFF) and the tests that failed"
  fi
  return "$status"
}

case "${1:-}" in
  upgrade-check)
    ensure_rabbitmq
    ensure_venv
    upgrade_check
    ;;
  setup)
    setup
    ;;
  demo)
    setup
    shift
    "$VENV/bin/proj" demo "$@"
    echo
    say "now every tutorial experiment, with charts: proj lab all"
    exec "$VENV/bin/proj" lab all
    ;;
  images)
    images
    ;;
  test)
    setup
    ensure_test_tools
    shift
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    # The container tests (tests/test_compose.py) need the images; where they cannot be built they
    # skip with the reason (under CI=true they fail). A dockerd started here is stopped at the end.
    trap stop_dockerd_we_started EXIT
    images || say "no container images (see above): tests/test_compose.py will say why"
    status=0
    "$VENV/bin/python" -m pytest "$@" || status=$?
    if [ $# -eq 0 ] && [ -z "${PROJ_RABBITMQ_BIN:-}" ] && [ "${PROJ_RABBITMQ:-4.3}" != 3.10 ]; then
      say "compatibility run on Debian 12's RabbitMQ 3.10: ${COMPAT_TESTS[*]}"
      PROJ_RABBITMQ=3.10 "$VENV/bin/python" -m pytest "${COMPAT_TESTS[@]}" || status=$?
    fi
    exit "$status"
    ;;
  *)
    echo "usage: ./dev.sh demo | test [pytest args] | setup | images | upgrade-check" >&2
    exit 2
    ;;
esac
