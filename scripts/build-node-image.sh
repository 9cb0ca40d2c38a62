#!/usr/bin/env bash
# Build the container image the demo and the Molecule scenarios use as cluster nodes:
# Debian 12 (minbase) with python3, python3-venv, iproute2, procps and systemd as PID 1.
# No registry is needed: the root filesystem comes from Debian's packages (debootstrap)
# and is imported into the engine (Podman, or a real Docker engine when one answers).
#
#   scripts/build-node-image.sh [--force]      # image: ${PYCTDB_NODE_IMAGE:-localhost/pyctdb-node:bookworm}
#
# The rootfs tarball is cached in .cache/ (delete it, or --force, to rebuild from Debian);
# an existing image is kept unless --force is given.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
IMAGE="${PYCTDB_NODE_IMAGE:-localhost/pyctdb-node:bookworm}"
MIRROR="${PYCTDB_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE="$here/.cache"
TARBALL="$CACHE/pyctdb-node-rootfs.tar"
PACKAGES=python3,python3-venv,iproute2,procps,systemd,systemd-sysv,iputils-ping,netcat-openbsd
force=0
[ "${1:-}" = "--force" ] && force=1

# The engine: Podman where setup-host.sh installed it (no Docker engine), else Docker.
if command -v podman >/dev/null 2>&1; then engine=podman; else engine=docker; fi

if [ "$force" = 0 ] && $engine image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "build-node-image: $IMAGE exists ($engine)"
  exit 0
fi

if [ "$force" = 1 ] || [ ! -s "$TARBALL" ]; then
  command -v debootstrap >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
  mkdir -p "$CACHE"
  rootfs="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
  trap 'rm -rf "$rootfs"' EXIT
  echo "build-node-image: debootstrap bookworm ($PACKAGES) ..."
  debootstrap --variant=minbase --include="$PACKAGES" bookworm "$rootfs" "$MIRROR" \
    > "$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
  # A container needs no getty on a console and no udev; keep the journal small and
  # in memory. The agent's own log is /var/log/pyctdb.log.
  chroot "$rootfs" systemctl mask getty@tty1.service console-getty.service \
    systemd-udevd.service systemd-udev-trigger.service systemd-remount-fs.service \
    dev-hugepages.mount sys-fs-fuse-connections.mount >/dev/null 2>&1 || true
  mkdir -p "$rootfs/etc/systemd/journald.conf.d"
  printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\n' \
    > "$rootfs/etc/systemd/journald.conf.d/pyctdb.conf"
  echo "pyctdb-node" > "$rootfs/etc/hostname"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
fi

echo "build-node-image: importing $IMAGE into $engine"
$engine import --change 'CMD ["/sbin/init"]' --change 'STOPSIGNAL SIGRTMIN+3' \
  "$TARBALL" "$IMAGE" >/dev/null
echo "build-node-image: $IMAGE ready"
