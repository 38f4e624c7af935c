#!/usr/bin/env bash
# Installs the system packages FastIM needs, when missing.
#   scripts/install-deps.sh          build prerequisites (protoc)
#   scripts/install-deps.sh --test   also the servers the tests start privately:
#                                    etcd, Redis, PostgreSQL
# Debian/Ubuntu: uses apt-get as root (or through sudo). Safe to run repeatedly; the
# packages' own services are not used by the tests (they start their own instances).
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
if [ "${1:-}" = "--test" ]; then
    command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
    command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
    ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
fi

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi

echo "install-deps: installing ${need[*]}" >&2
if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "install-deps: need root (or sudo) to install: ${need[*]}" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: no apt-get here; install these yourself: ${need[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "install-deps: done" >&2
