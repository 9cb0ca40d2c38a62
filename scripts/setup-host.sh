#!/usr/bin/env bash
# Install everything pyctdb's demo and tests need on a fresh Debian 12 machine.
# Idempotent: re-running it only installs what is missing.
# - Debian packages: podman (only when no Docker engine answers), runc, debootstrap, iproute2,
#   ctdb (Samba's CTDB: the tests compare pyctdb's IP allocation with the real one),
#   etcd-server and etcd-client (the cluster lock on etcd: a 3-member etcd cluster in the
#   tests), python3-etcd (CTDB's ctdb_etcd_lock imports it) and python3-etcd3,
#   samba-common-bin (Samba's `net`: its clustered registry runs on pyctdb's CTDB socket
#   in the tests), samba, smbclient and samba-testsuite (clustered smbd on pyctdb in
#   the tests, smbtorture against it; the
#   package's own smbd/nmbd services are stopped and disabled), winbind (clustered
#   winbindd on pyctdb in the tests; its service likewise), libtdb1, tdb-tools and
#   python3-tdb (the TDB files Samba shares)
# - Python packages into a virtualenv at ${PYCTDB_VENV:-.venv}
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${PYCTDB_VENV:-$here/.venv}"
export DEBIAN_FRONTEND=noninteractive

need_apt=()
for pkg in debootstrap iproute2 rsync ctdb etcd-server etcd-client python3-etcd python3-etcd3 \
           samba-common-bin samba smbclient samba-testsuite winbind libtdb1 tdb-tools python3-tdb; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
docker_engine=0
if command -v docker >/dev/null 2>&1 && timeout 5 docker info >/dev/null 2>&1; then
  # A real Docker engine (or an API socket already set up) answers: use it.
  docker_engine=1
fi
if [ "$docker_engine" = 0 ]; then
  for pkg in podman runc; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
  done
fi
if [ "${#need_apt[@]}" -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ "$docker_engine" = 0 ]; then
  "$here/scripts/podman-api.sh" start
fi
# Samba's package starts its own smbd and nmbd where systemd runs: the tests start
# clustered smbds of their own (on pyctdb), so the package's are stopped and disabled.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now smbd nmbd winbind samba-ad-dc >/dev/null 2>&1 || true
fi

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip wheel >/dev/null
"$VENV/bin/pip" install -q -r "$here/requirements-dev.txt"
"$VENV/bin/pip" install -q -e "$here/agent"
echo "setup-host: ready (venv $VENV)"
