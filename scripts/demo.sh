#!/usr/bin/env bash
# A 3-node pyctdb demo cluster in containers on this machine, built by playbooks/site.yml.
#
#   scripts/demo.sh [up]     set up the host, build the node image, start the containers
#                            pyctdb-demo-node1..3 (10.89.6.11-13, network pyctdb-demo,
#                            systemd inside, demo/state/shared at /shared for the cluster
#                            lock; public addresses 10.89.6.101-106 on eth0), write
#                            demo/inventory.yml, run site.yml, print `pyctdb status` and
#                            `pyctdb ip all` from node1. Again on a running demo: only
#                            re-runs site.yml (which then changes nothing).
#   scripts/demo.sh status   `pyctdb status` from every node
#   scripts/demo.sh down     remove the containers, the network, demo/state and the inventory
#
# Run as root from anywhere. Uses a real Docker engine when one answers, Podman otherwise.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
IMAGE="${PYCTDB_NODE_IMAGE:-localhost/pyctdb-node:bookworm}"
NET=pyctdb-demo
SUBNET=10.89.6.0/24
PREFIX=10.89.6
NODES=(pyctdb-demo-node1 pyctdb-demo-node2 pyctdb-demo-node3)
STATE="$here/demo/state"
INVENTORY="$here/demo/inventory.yml"

engine() {
  if command -v podman >/dev/null 2>&1; then echo podman; else echo docker; fi
}

status() {
  local e; e=$(engine)
  for n in "${NODES[@]}"; do
    echo "===== $n"
    $e exec "$n" pyctdb status || true
  done
}

down() {
  local e; e=$(engine)
  for n in "${NODES[@]}"; do $e rm -f "$n" >/dev/null 2>&1 || true; done
  $e network rm "$NET" >/dev/null 2>&1 || true
  rm -rf "$STATE" "$INVENTORY"
  echo "demo: removed ${NODES[*]}, network $NET and demo/state"
}

up() {
  [ "$(id -u)" = 0 ] || { echo "scripts/demo.sh: run as root" >&2; exit 2; }
  scripts/setup-host.sh
  scripts/build-node-image.sh
  local e; e=$(engine)
  mkdir -p "$STATE/shared"
  if ! $e network inspect "$NET" >/dev/null 2>&1; then
    $e network create --subnet "$SUBNET" "$NET" >/dev/null
  fi
  local i=0 extra=()
  if [ "$e" = docker ]; then
    # systemd as PID 1 under a Docker engine wants the host's cgroup tree and tmpfs mounts.
    extra=(--cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /run --tmpfs /run/lock)
  fi
  for n in "${NODES[@]}"; do
    i=$((i + 1))
    if [ -z "$($e ps -aq --filter "name=^${n}\$")" ]; then
      $e run -d --name "$n" --hostname "$n" --network "$NET" --ip "$PREFIX.1$i" \
        --cap-add NET_ADMIN --cap-add NET_RAW -v "$STATE/shared:/shared" \
        "${extra[@]}" "$IMAGE" /sbin/init >/dev/null
    elif [ "$($e inspect -f '{{.State.Running}}' "$n")" != true ]; then
      $e start "$n" >/dev/null
    fi
  done
  # Wait for systemd in each container.
  for n in "${NODES[@]}"; do
    for _ in $(seq 1 60); do
      s=$($e exec "$n" systemctl is-system-running 2>/dev/null || true)
      case "$s" in running|degraded) break;; esac
      sleep 0.5
    done
  done
  {
    echo "# written by scripts/demo.sh"
    echo "pyctdb:"
    echo "  vars:"
    if [ "$e" = podman ]; then
      echo "    ansible_connection: containers.podman.podman"
    else
      echo "    ansible_connection: community.docker.docker_api"
    fi
    echo "    ansible_python_interpreter: /usr/bin/python3"
    echo "    pyctdb_cluster_lock: /shared/pyctdb.lock"
    echo "    pyctdb_public_addresses:"
    for j in 1 2 3 4 5 6; do
      echo "      - {address: $PREFIX.10$j, prefix: 24, interfaces: [eth0]}"
    done
    echo "  hosts:"
    i=0
    for n in "${NODES[@]}"; do
      i=$((i + 1))
      echo "    $n:"
      echo "      pyctdb_node_address: $PREFIX.1$i"
    done
  } > "$INVENTORY"
  "$here/.venv/bin/ansible-playbook" -i "$INVENTORY" playbooks/site.yml
  echo
  echo "===== pyctdb status on ${NODES[0]}"
  $e exec "${NODES[0]}" pyctdb status
  echo
  echo "===== pyctdb ip all on ${NODES[0]}"
  $e exec "${NODES[0]}" pyctdb ip all
}

case "${1:-up}" in
  up) up;;
  status) status;;
  down) down;;
  *) echo "usage: scripts/demo.sh [up|status|down]" >&2; exit 2;;
esac
