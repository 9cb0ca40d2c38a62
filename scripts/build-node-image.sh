#!/usr/bin/env bash
# Build the container image the demo and the Molecule scenarios use as cluster nodes:
# Debian 12 (minbase) with python3, python3-venv, iproute2, procps and systemd as PID 1.
# No registry is needed: the root filesystem comes from Debian's packages (debootstrap)
# and is imported into the engine (Podman, or a real Docker engine when one answers).
#
#   scripts/build-node-image.sh [--force]      # image: ${PYCTDB_NODE_IMAGE:-localhost/pyctdb-node:bookworm}
#   scripts/build-node-image.sh --samba [--force]   # localhost/pyctdb-node-samba:bookworm:
#       the same with Samba (samba, smbclient, tdb-tools; Samba's own services disabled:
#       pyctdb's event script starts smbd), for the Molecule scenario `samba`
#
# The rootfs tarball is cached in .cache/ (delete it, or --force, to rebuild from Debian);
# an existing image is kept unless --force is given.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
samba=0
force=0
for arg in "$@"; do
  case "$arg" in
    --samba) samba=1 ;;
    --force) force=1 ;;
    *) echo "usage: $0 [--samba] [--force]" >&2; exit 2 ;;
  esac
done
MIRROR="${PYCTDB_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE="$here/.cache"
PACKAGES=python3,python3-venv,iproute2,procps,systemd,systemd-sysv,iputils-ping,netcat-openbsd
if [ "$samba" = 1 ]; then
  IMAGE="${PYCTDB_SAMBA_IMAGE:-localhost/pyctdb-node-samba:bookworm}"
  TARBALL="$CACHE/pyctdb-node-samba-rootfs.tar"
  SAMBA_PACKAGES="samba smbclient tdb-tools"
else
  IMAGE="${PYCTDB_NODE_IMAGE:-localhost/pyctdb-node:bookworm}"
  TARBALL="$CACHE/pyctdb-node-rootfs.tar"
fi

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
  if [ "$samba" = 1 ]; then
    echo "build-node-image: apt-get install $SAMBA_PACKAGES ..."
    printf '#!/bin/sh\nexit 101\n' > "$rootfs/usr/sbin/policy-rc.d"  # (start nothing now)
    chmod 755 "$rootfs/usr/sbin/policy-rc.d"
    cp /etc/resolv.conf "$rootfs/etc/resolv.conf" 2>/dev/null || true
    echo "deb $MIRROR bookworm main" > "$rootfs/etc/apt/sources.list"
    { chroot "$rootfs" apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive chroot "$rootfs" apt-get install -y -qq \
        --no-install-recommends $SAMBA_PACKAGES; } > "$CACHE/samba-install.log" 2>&1 ||
      { tail -20 "$CACHE/samba-install.log" >&2; exit 1; }
    rm -f "$rootfs/usr/sbin/policy-rc.d"
    # pyctdb starts smbd (its event script), as CTDB does: not systemd at boot
    chroot "$rootfs" systemctl disable smbd.service nmbd.service samba-ad-dc.service \
      >/dev/null 2>&1 || true
  fi
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
fi

echo "build-node-image: importing $IMAGE into $engine"
$engine import --change 'CMD ["/sbin/init"]' --change 'STOPSIGNAL SIGRTMIN+3' \
  "$TARBALL" "$IMAGE" >/dev/null
echo "build-node-image: $IMAGE ready"
