#!/bin/sh
# Build CTDB's own client test programs (fetch_ring, message_ring, fetch_loop,
# transaction_loop) from Samba 4.17's source, with CTDB's standalone waf build.
#
#   bench/ctdbtests/build.sh [DIR]      (default DIR: /var/cache/pyctdb-ctdbtests)
#
# The programs end up as DIR/bin/<program> (links into DIR/src/ctdb/bin/, whose private
# libraries they load through their rpath: do not move DIR/src). Idempotent: when every
# program is there already, it says so and does nothing.
#
# Source: Samba 4.17.12. With a deb-src line for bookworm in apt's lists, Debian's
# source package (`apt-get source samba`); otherwise the git mirror of Samba
# (SAMBA_GIT, default /work/.mirror/samba-team+samba/repo), tag samba-4.17.12, of which
# only the directories CTDB's standalone build needs are taken (its wscript's
# DIST_DIRS, and third_party/cmocka that lib/tevent's wscript reads); with neither, it
# adds a private deb-src list (/etc/apt/sources.list.d/pyctdb-deb-src.sources) and uses
# Debian's source package. On this project's machines there is no deb-src line and the
# mirror is there: the mirror is used.
#
# Built against Debian's talloc, tevent, tdb and popt (--bundled-libraries takes only
# socket_wrapper, which Debian does not ship), and only the four programs and what they
# link (waf build --targets=...): configure about 20 s, build about 5 s on 2 cores.
# Needs root for apt-get (skipped when the packages are installed).
set -eu

DEST=${1:-/var/cache/pyctdb-ctdbtests}
TAG=${SAMBA_TAG:-samba-4.17.12}
SAMBA_GIT=${SAMBA_GIT:-/work/.mirror/samba-team+samba/repo}
PROGS="fetch_ring message_ring fetch_loop transaction_loop"
DEPS="gcc make pkg-config python3 bison flex libtalloc-dev libtevent-dev libtdb-dev
      libpopt-dev libtirpc-dev libgnutls28-dev"

built() {
    for p in $PROGS; do
        [ -x "$DEST/bin/$p" ] || return 1
    done
}

if built; then
    echo "ctdbtests: already built in $DEST/bin ($PROGS)"
    exit 0
fi

start=$(date +%s)

missing=""
for d in $DEPS; do
    dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q "ok installed" \
        || missing="$missing $d"
done
if [ -n "$missing" ]; then
    echo "ctdbtests: apt-get install$missing"
    DEBIAN_FRONTEND=noninteractive apt-get install -y $missing >/dev/null
fi

SRC=$DEST/src
if [ ! -f "$SRC/ctdb/wscript" ]; then
    rm -rf "$DEST/src.tmp"
    mkdir -p "$DEST/src.tmp"
    if apt-cache showsrc samba 2>/dev/null | grep -q '^Package: samba'; then
        echo "ctdbtests: source from Debian's samba source package (apt-get source)"
        (cd "$DEST/src.tmp" && apt-get source -qq samba >/dev/null)
        dir=$(find "$DEST/src.tmp" -mindepth 1 -maxdepth 1 -type d -name 'samba-*' | head -n1)
        mv "$dir" "$SRC"
        rm -rf "$DEST/src.tmp"
    elif [ -d "$SAMBA_GIT" ]; then
        echo "ctdbtests: source from the git mirror $SAMBA_GIT, tag $TAG"
        # only what ctdb/wscript's DIST_DIRS names (the mirror lacks some blobs
        # elsewhere, e.g. under source4/selftest, so the whole tree cannot be archived)
        git -C "$SAMBA_GIT" archive "$TAG" VERSION buildtools ctdb lib/replace \
            lib/talloc lib/tevent lib/tdb lib/util lib/tdb_wrap lib/async_req \
            lib/pthreadpool lib/messaging libcli/util third_party/socket_wrapper \
            third_party/popt third_party/waf third_party/cmocka \
            | tar -x -C "$DEST/src.tmp"
        mv "$DEST/src.tmp" "$SRC"
    else
        # neither: a private deb-src list for bookworm (as Debian's deb lines), then
        # Debian's source package
        echo "ctdbtests: no git mirror at $SAMBA_GIT: adding deb-src for bookworm"
        cat >/etc/apt/sources.list.d/pyctdb-deb-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
        apt-get update -qq
        (cd "$DEST/src.tmp" && apt-get source -qq samba >/dev/null)
        dir=$(find "$DEST/src.tmp" -mindepth 1 -maxdepth 1 -type d -name 'samba-*' | head -n1)
        mv "$dir" "$SRC"
        rm -rf "$DEST/src.tmp"
    fi
fi

cd "$SRC/ctdb"
export PYTHONHASHSEED=1
if [ ! -f bin/c4che/_cache.py ]; then
    echo "ctdbtests: configure"
    ./configure --bundled-libraries=socket_wrapper >"$DEST/configure.log" 2>&1 || {
        tail -n 20 "$DEST/configure.log" >&2; exit 1; }
fi
targets=$(echo $PROGS | tr ' ' ',')
echo "ctdbtests: waf build --targets=$targets"
../buildtools/bin/waf build --targets="$targets" >"$DEST/build.log" 2>&1 || {
    tail -n 20 "$DEST/build.log" >&2; exit 1; }

mkdir -p "$DEST/bin"
for p in $PROGS; do
    ln -sfn "$SRC/ctdb/bin/default/ctdb/$p" "$DEST/bin/$p"
done
built
echo "ctdbtests: built $PROGS in $DEST/bin in $(( $(date +%s) - start )) s"
