#!/usr/bin/env bash
# Run every test of pyctdb on this machine, as root, from a fresh Debian 12:
#
#   scripts/test.sh [PYTEST ARGS...]       e.g. scripts/test.sh -m "not molecule"
#
# 1. scripts/setup-host.sh: Debian packages (Podman where no Docker engine answers),
#    Podman's Docker-compatible API, the virtualenv .venv with the Python dependencies.
# 2. scripts/build-node-image.sh: the container image of the Molecule scenarios;
#    bench/ctdbtests/build.sh: CTDB's client test programs (fetch_ring, message_ring,
#    fetch_loop, transaction_loop; ~25 s once, then cached in /var/cache/pyctdb-ctdbtests)
#    for agent/tests/integration/test_ctdb_testprograms.py.
# 3. pytest over agent/tests (unit, local agents on 127.0.0.x, network namespaces) and
#    tests/ (the collection: modules, role, Molecule's `molecule test` on containers).
#    Molecule scenarios always destroy what they created.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh: run as root (packages, network namespaces, containers)" >&2
  exit 2
fi
scripts/setup-host.sh
if ! docker info >/dev/null 2>&1; then
  eval "$(scripts/podman-api.sh env)"
  export DOCKER_HOST
fi
scripts/build-node-image.sh
bench/ctdbtests/build.sh || echo "scripts/test.sh: CTDB's test programs not built:" \
  "test_ctdb_testprograms.py will skip" >&2
export PATH="$here/.venv/bin:$PATH"
exec "$here/.venv/bin/python" -m pytest "$@"
