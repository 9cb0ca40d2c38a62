"""Debian's own Samba (`net`, from samba-common-bin 4.17, `clustering = yes`) on
pyctdb's CTDB socket: Samba's clustered registry configuration (`net conf`), as on a
CTDB cluster. `net` attaches registry.tdb (persistent) and g_lock.tdb (volatile) through
the socket, opens their TDB files itself, migrates the g_lock record to its node with
REQ_CALL, and commits with TRANS3_COMMIT; every node's `net` sees every change; a node
that was down gets the changes from the recovery; the files are TDB files with CTDB's
header that `tdbdump` reads."""

import os
import shutil
import subprocess

import pytest

from pyctdb.server.db.tdbfile import TdbFile, ltdb_unpack
from pyctdb.testing.localcluster import LocalCluster
from pyctdb.testing.samba import write_smb_conf

pytestmark = [
    pytest.mark.skipif(shutil.which("net") is None,
                       reason="Samba's net (samba-common-bin) is missing"),
    pytest.mark.timeout(300),
]


def smb_conf(c, pnn, base):
    """A minimal clustered smb.conf for node ``pnn``: its CTDB socket, registry
    configuration, and directories of its own."""
    return write_smb_conf(os.path.join(base, f"samba{pnn}"), c.ctdb_socket(pnn))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("sambanet"))
    c = LocalCluster(3, base_dir=os.path.join(base, "c"))
    try:
        c.start()
        c.wait_healthy(60)
        c.smb = {p: smb_conf(c, p, base) for p in range(3)}
        yield c
    finally:
        c.stop_all()


def net(c, pnn, *args, check=True):
    r = subprocess.run(["net", "-s", c.smb[pnn], "conf", *args], capture_output=True,
                       text=True, timeout=60)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr, c.log(pnn)[-3000:])
    return r


def ctdb(c, pnn, *args):
    r = subprocess.run(["ctdb", *args], capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, CTDB_SOCKET=c.ctdb_socket(pnn)))
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


def test_a_change_on_one_node_is_seen_on_every_node(cluster):
    c = cluster
    net(c, 0, "setparm", "global", "workgroup", "PYCTDB")
    net(c, 1, "addshare", "data", "/srv/data", "writeable=y", "guest_ok=n", "shared data")
    for p in range(3):
        out = net(c, p, "list").stdout
        assert "workgroup = PYCTDB" in out and "[data]" in out and "path = /srv/data" in out
    # what net attached, as CTDB's tool shows it: TDB files named NAME.PNN
    for p in range(3):
        dbmap = ctdb(c, p, "getdbmap")
        assert f"name:registry.tdb path:{c.node_dir(p)}/db/persistent/registry.tdb.{p} " \
            "PERSISTENT" in dbmap
        assert f"name:g_lock.tdb path:{c.node_dir(p)}/db/volatile/g_lock.tdb.{p}" in dbmap
    # Samba's sequence number record moved with the writes: the same on every node
    seqnums = {ctdb(c, p, "getdbseqnum", "registry.tdb").strip() for p in range(3)}
    assert len(seqnums) == 1 and seqnums != {"0x0"}, seqnums
    for p in range(3):
        assert "TRANS3_COMMIT of registry.tdb" in c.log(0) + c.log(1)
        assert "Traceback" not in c.log(p)


def test_concurrent_writers_on_every_node_lose_nothing(cluster):
    """Three nets at once, one per node, five changes each: Samba's transaction lock
    (g_lock.tdb, a volatile record that REQ_CALL migrates to the writer's node) keeps
    them apart; every change is there on every node."""
    c = cluster
    procs = []
    for p in range(3):
        script = "; ".join(f"net -s {c.smb[p]} conf setparm share{p} 'comment' c{j} || "
                           f"exit 1" for j in range(1, 6))
        procs.append(subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    for p, pr in enumerate(procs):
        out, err = pr.communicate(timeout=120)
        assert pr.returncode == 0, (p, out, err, c.log(p)[-3000:])
    lists = [net(c, p, "list").stdout for p in range(3)]
    assert lists[0] == lists[1] == lists[2]
    for p in range(3):
        assert f"[share{p}]\n\tcomment = c5" in lists[0]


def test_a_node_that_was_down_gets_the_changes_from_the_recovery(cluster):
    c = cluster
    c.kill(2)
    c.wait_for(lambda: "DISCONNECTED" in c.status(0)["nodes"][2]["state"], 15)
    net(c, 0, "setparm", "global", "server string", "while node 2 was down")
    net(c, 1, "delshare", "data")
    c.start_node(2)
    c.wait_healthy(60)
    out = net(c, 2, "list").stdout
    assert "server string = while node 2 was down" in out and "[data]" not in out
    assert ctdb(c, 2, "getdbseqnum", "registry.tdb") == ctdb(c, 0, "getdbseqnum",
                                                              "registry.tdb")


def test_the_files_are_tdb_files_with_ctdb_header(cluster):
    """tdbdump (tdb-tools) reads a node's registry.tdb; Samba's sequence number record
    is CTDB's 24-byte header, then the number CTDB's tool shows."""
    c = cluster
    if shutil.which("tdbdump") is None:
        pytest.skip("tdb-tools is missing")
    path = os.path.join(c.node_dir(1), "db", "persistent", "registry.tdb.1")
    dump = subprocess.run(["tdbdump", path], capture_output=True, text=True, check=True)
    assert 'key(23) = "__db_sequence_number__\\00"' in dump.stdout
    assert "SMBCONF\\5CGLOBAL" in dump.stdout, dump.stdout[:2000]
    with TdbFile(path, open_flags=os.O_RDONLY) as f:
        rsn, dmaster, _flags, value = ltdb_unpack(f.fetch(b"__db_sequence_number__\0"))
    assert rsn >= 1 and dmaster in (0, 1, 2) and len(value) == 8
    assert int(ctdb(c, 1, "getdbseqnum", "registry.tdb").strip(), 16) == \
        int.from_bytes(value, "little")


def test_ctdb_catdb_traverses_samba_databases(cluster):
    """Debian's `ctdb catdb` (TRAVERSE_START_EXT, the records as messages) lists the
    registry as net wrote it, with Samba's sequence number record."""
    c = cluster
    out = ctdb(c, 2, "catdb", "registry.tdb")
    assert 'key(23) = "__db_sequence_number__\\00"' in out
    assert "SMBCONF\\5CGLOBAL" in out
    n = int(out.strip().splitlines()[-1].split()[1])  # "Dumped N records"
    assert n > 10, out[-500:]
