# Sourced by dev.sh and docker/build-images.sh: where Debian comes from, written once.
#
# debian_mirror: the first Debian mirror apt uses (deb822 or one-line sources), else deb.debian.org;
# PROJ_DEBIAN_MIRROR overrides it.
# FORKY_APT_OPTION: Debian forky (testing, where rabbitmq-server 4.3 and Erlang 29 are) is read from the
# same mirror, but its Release file there may be past its Valid-Until date: apt and mmdebstrap are told
# not to check it (mmdebstrap also writes the option into the root filesystem, so apt inside it agrees).

FORKY_APT_OPTION='Acquire::Check-Valid-Until "false"'

debian_mirror() {
  local found
  if [ -n "${PROJ_DEBIAN_MIRROR:-}" ]; then
    echo "$PROJ_DEBIAN_MIRROR"
    return
  fi
  found=$(grep -hsE '^[[:space:]]*(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
    /etc/apt/sources.list.d/*.sources | grep -oE 'https?://[^ ]+/debian/?([[:space:]]|$)' | head -1 | tr -d '[:space:]')
  echo "${found:-http://deb.debian.org/debian}"
}

# The Debian security mirror apt uses, if any (empty otherwise).
debian_security_mirror() {
  local found
  found=$(grep -hsE '^[[:space:]]*(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
    /etc/apt/sources.list.d/*.sources | grep -oE 'https?://[^ ]+/debian-security/?([[:space:]]|$)' | head -1 |
    tr -d '[:space:]')
  if [ -n "$found" ]; then echo "$found"; fi
}
