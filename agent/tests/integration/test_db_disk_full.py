"""A database directory that is full or read-only (docs/databases.md, "A full or read-only
disk"), for real: a small tmpfs is mounted on one agent's persistent database directory,
filled up and freed, then remounted read-only and read-write. The node reports it (one
ERROR line naming the directory and the errno), goes UNHEALTHY, answers clean errors,
corrupts nothing, and is healthy again with every record once the disk works.

Needs root (mount); the mounts are always removed."""

import os
import subprocess

import pytest

from pyctdb.testing.localcluster import LocalCluster

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")]

DB = "disk.tdb"
SICK = 2
UNHEALTHY = 0x02


def sh(*argv):
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture
def c(tmp_path):
    with LocalCluster(3, tmp_path, tunables={"MonitorInterval": "1"}) as c:
        d = os.path.join(c.node_dir(SICK), "db", "persistent")
        os.makedirs(d)
        sh("mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "pyctdb-test", d)
        try:
            c.disk = d
            c.start()
            c.wait_healthy(30)
            yield c
        finally:
            c.stop_all()
            subprocess.run(["umount", "-l", d], capture_output=True)


def flags(c, pnn, of):
    return c.status(pnn)["nodes"][of]["flags"]


def fill(path):
    """Fill the filesystem of ``path`` (a file of zeros until ENOSPC)."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(bytes(64 * 1024))
                f.flush()
        except OSError:
            pass


def pfetch(c, pnn, key):
    return c.cli(pnn, "pfetch", DB, key)


def recovered(c, keys):
    """Node SICK is healthy again and serves every key with its value."""
    c.wait_for(lambda: not flags(c, 0, SICK) & UNHEALTHY, 30, what=f"node {SICK} healthy")
    c.wait_for(lambda: all(pfetch(c, SICK, k).stdout == v + "\n" for k, v in keys.items()),
               30, what=f"every record on node {SICK}")


def test_a_full_then_read_only_database_directory(c):
    c.cli_ok(0, "attach", DB, "persistent")
    c.cli_ok(0, "pstore", DB, "k0", "before")
    assert pfetch(c, SICK, "k0").stdout == "before\n"

    # full: the node goes UNHEALTHY with one clear line; the cluster goes on
    filler = os.path.join(c.disk, "filler")
    fill(filler)
    c.wait_for(lambda: flags(c, 0, SICK) & UNHEALTHY, 15, what=f"node {SICK} UNHEALTHY")
    log = c.log(SICK)
    assert f"persistent database directory {c.disk}: ENOSPC" in log
    assert "UNHEALTHY until the directory works again" in log
    c.cli_ok(0, "pstore", DB, "k1", "while-full")       # committed on the others
    r = c.cli(SICK, "attach", "other.tdb", "persistent")  # a write here: a clean error
    assert r.returncode != 0 and "ENOSPC" in r.stderr + r.stdout, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    r = pfetch(c, SICK, "k1")  # its copy missed a write: not served, never stale
    assert r.returncode != 0 or r.stdout == "while-full\n", (r.stdout, r.stderr)

    # freed: healthy again, the records written before and meanwhile all there
    os.unlink(filler)
    recovered(c, {"k0": "before", "k1": "while-full"})
    assert f"persistent database directory {c.disk} works again" in c.log(SICK)

    # read-only: the same, with EROFS. (The kernel refuses to remount a filesystem
    # read-only while files on it are open for writing, as LMDB's are: the agent is
    # restarted on the read-only directory.)
    c.stop(SICK)
    sh("mount", "-o", "remount,ro", c.disk)
    try:
        c.start_node(SICK)
        c.wait_for(lambda: flags(c, 0, SICK) & UNHEALTHY, 30, what=f"node {SICK} UNHEALTHY")
        assert f"persistent database directory {c.disk}: EROFS" in c.log(SICK)
        c.cli_ok(1, "pstore", DB, "k2", "while-ro")
        r = pfetch(c, SICK, "k0")  # its environment is not open: an error, not a guess
        assert r.returncode != 0 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    finally:
        sh("mount", "-o", "remount,rw", c.disk)
    recovered(c, {"k0": "before", "k1": "while-full", "k2": "while-ro"})
    for p in range(3):
        assert c.cli_ok(p, "getdbseqnum", DB) == c.cli_ok(0, "getdbseqnum", DB)
        assert "Traceback" not in c.log(p)


def ctdb(c, pnn, *args):
    """Debian's ctdb tool on node pnn's CTDB socket."""
    return subprocess.run(["ctdb", *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, CTDB_SOCKET=c.ctdb_socket(pnn)))


@pytest.mark.skipif(subprocess.run(["which", "ctdb"], capture_output=True).returncode != 0,
                    reason="Debian's ctdb tool is missing")
def test_a_tdb_write_refused_for_a_full_disk(c):
    """A TDB database (attached through CTDB's socket, as Samba's are): a transaction
    committed through node 0 while node SICK's directory is full is committed on the
    others; SICK's copy refuses it as a disk failure (libtdb's error, the directory's
    probe says ENOSPC) and is not served until a recovery replaces it once the disk
    works again."""
    tdb = "samba-like.tdb"
    for args in (("attach", tdb, "persistent"),):
        r = ctdb(c, 0, *args)
        assert r.returncode == 0, (r.stdout, r.stderr)
    r = ctdb(c, 0, "pstore", tdb, "k0", "before")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert ctdb(c, SICK, "pfetch", tdb, "k0").stdout == "before\n"

    filler = os.path.join(c.disk, "filler")
    fill(filler)
    big = "x" * 100_000  # (SICK's file must grow for it)
    r = ctdb(c, 0, "pstore", tdb, "big", big)
    assert r.returncode == 0, (r.stdout, r.stderr)  # committed on the others
    c.wait_for(lambda: "missed writes on this node" in c.log(SICK), 15,
               what=f"node {SICK}'s copy of {tdb} marked as missing a write")
    log = c.log(SICK)
    assert f"database {tdb} missed writes on this node: persistent database directory " \
           f"{c.disk}: ENOSPC" in log and "the TDB write failed" in log, log[-3000:]
    assert "Traceback" not in log
    assert flags(c, 0, SICK) & UNHEALTHY
    r = ctdb(c, SICK, "pfetch", tdb, "big")  # never served stale
    assert r.returncode != 0 or r.stdout == big + "\n"

    os.unlink(filler)
    c.wait_for(lambda: not flags(c, 0, SICK) & UNHEALTHY, 30, what=f"node {SICK} healthy")
    c.wait_for(lambda: ctdb(c, SICK, "pfetch", tdb, "big").stdout == big + "\n", 30,
               what=f"node {SICK} has the record written while its disk was full")
    assert ctdb(c, SICK, "pfetch", tdb, "k0").stdout == "before\n"
