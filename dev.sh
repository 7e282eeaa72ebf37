#!/usr/bin/env bash
# Set everything up, then run the demo or the tests.
#
#   ./dev.sh demo    virtualenv + package + rabbitmq-server, then `proj demo` and `proj lab all`
#   ./dev.sh test    the same set-up, then the linters and the whole test suite
#   ./dev.sh setup   only the set-up
#
# Works on a fresh Debian or Ubuntu machine with Python 3.11: installs what is missing with
# apt-get (as root, or through sudo) and pip (into ./.venv). Nothing is started as a service.
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

ensure_rabbitmq() {
  if [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || [ -n "${PROJ_RABBITMQ_BIN:-}" ]; then
    return
  fi
  say "installing rabbitmq-server with apt-get"
  apt_install rabbitmq-server
  # Debian's package may start a system node on 5672; proj's own nodes use their own ports and
  # data dirs, so the two never meet.
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
  say "installing proj and its test tools into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
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

case "${1:-}" in
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
  test)
    setup
    ensure_test_tools
    shift
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  *)
    echo "usage: ./dev.sh demo | test [pytest args] | setup" >&2
    exit 2
    ;;
esac
