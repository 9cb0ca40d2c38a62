#!/usr/bin/env bash
# Configure Podman for this kind of machine and serve its Docker-compatible API on
# /run/podman/podman.sock, so the docker SDK, community.docker and Molecule's docker
# driver work unchanged. Usage: podman-api.sh start|stop|env
set -euo pipefail
SOCK=/run/podman/podman.sock
case "${1:-start}" in
  env) echo "export DOCKER_HOST=unix://$SOCK"; exit 0;;
  stop) pkill -f "podman system service" || true; exit 0;;
esac
mkdir -p /etc/containers /run/podman
conf=/etc/containers/containers.conf
if ! grep -q 'pyctdb' "$conf" 2>/dev/null; then
  cat > "$conf" <<'CONF'
# written by pyctdb scripts/podman-api.sh (crun and default ulimits fail on these hosts)
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
fi
# A service whose working directory was removed (it was started from a checkout that is
# gone) answers, but cannot start a container ("conmon: Failed to get working
# directory"): it is restarted.
for pid in $(pgrep -f "podman system service" || true); do
  if readlink "/proc/$pid/cwd" 2>/dev/null | grep -q ' (deleted)$'; then
    echo "podman-api: restarting the service (its working directory was removed)" >&2
    kill "$pid" 2>/dev/null || true
    sleep 1
  fi
done
if [ -S "$SOCK" ] && DOCKER_HOST=unix://$SOCK timeout 5 docker version >/dev/null 2>&1; then
  exit 0
fi
rm -f "$SOCK"
# (from /: the service, and the conmon of every container, keep this directory)
(cd / && nohup podman system service --time=0 "unix://$SOCK" >/var/log/podman-api.log 2>&1 &)
for _ in $(seq 1 50); do
  [ -S "$SOCK" ] && break
  sleep 0.2
done
[ -S "$SOCK" ] || { echo "podman API did not start; see /var/log/podman-api.log" >&2; exit 1; }
