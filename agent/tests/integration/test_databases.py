"""Clustered databases on real agents: migration, persistent transactions, recovery,
no resurrection, a late joiner, bad input and a damaged LMDB file."""

import os
import subprocess

import lmdb
import pytest

from pyctdb.client.connection import ApiCallError
from pyctdb.client.db import DatabaseError, attach
from pyctdb.testing.localcluster import LocalCluster

pytestmark = pytest.mark.timeout(150)


def ok(c, pnn, *args):
    r = c.cli(pnn, *args)
    assert r.returncode == 0, (args, r.stdout, r.stderr, c.log(pnn)[-3000:])
    return r.stdout


def dmaster_on(c, pnn, db, key):
    out = ok(c, pnn, "catdb", db)
    blocks = out.split("\n\n")
    for b in blocks:
        if f'key({len(key)}) = "{key}"' in b:
            return int(b.split("dmaster: ")[1].split("\n")[0])
    return None


def joined_without(c, observers, gone):
    return all(c.status(p)["joined"] and gone not in c.status(p)["vnnmap"]
               and c.status(p)["recovery_mode"] == "NORMAL" for p in observers)


@pytest.fixture
def c(tmp_path):
    with LocalCluster.healthy_cluster(3, tmp_path) as c:
        yield c


def test_migration_client_library_and_persistent_transactions(c):
    assert "attached" in ok(c, 0, "attach", "vol.tdb")
    ok(c, 1, "attach", "reg.tdb", "persistent")
    for p in range(3):  # attached on every node
        out = ok(c, p, "getdbmap")
        assert "Number of databases:2" in out
        assert "name:reg.tdb" in out and "PERSISTENT" in out and "name:vol.tdb" in out
    x = ok(c, 2, "getdbmap", "-X").splitlines()
    assert x[0] == "|ID|Name|Path|Persistent|Sticky|Unhealthy|Readonly|Replicated|"

    # volatile: the record and the DMASTER role move to whoever takes it; RSN goes up
    ok(c, 0, "writekey", "vol.tdb", "k1", "v1")
    assert dmaster_on(c, 0, "vol.tdb", "k1") == 0
    assert ok(c, 1, "readkey", "vol.tdb", "k1").strip() == "Data: size:2 ptr:[v1]"
    assert dmaster_on(c, 1, "vol.tdb", "k1") == 1
    ok(c, 2, "writekey", "vol.tdb", "k1", "v2")
    assert ok(c, 0, "readkey", "vol.tdb", "k1").strip() == "Data: size:2 ptr:[v2]"
    assert dmaster_on(c, 0, "vol.tdb", "k1") == 0
    rsn = [b for b in ok(c, 0, "catdb", "vol.tdb").split("\n") if b.startswith("rsn:")]
    assert int(rsn[0].split()[1]) >= 5  # created, 3 migrations, 2 stores

    # the client library: read-modify-write under the record lock, on every node
    for p in range(3):
        db = attach("vol.tdb", socket=c.socket(p))
        for _ in range(2):
            with db.fetch_locked(b"counter") as rec:
                rec.store(str(int(rec.value or b"0") + 1).encode())
        db.close()
    db = attach("vol.tdb", socket=c.socket(1))
    assert db.fetch(b"counter") == b"6"
    with db.fetch_locked("gone") as rec:
        rec.store(b"x")
    db.delete("gone")
    assert db.fetch("gone") is None
    assert dict(db.traverse())[b"counter"] == b"6"

    # persistent: a transaction is visible on every node, with the same sequence number
    reg = attach("reg.tdb", persistent=True, socket=c.socket(2))
    with reg.transaction() as t:
        t.store(b"a", b"1")
        t.store(b"b", b"2")
        assert t.fetch(b"a") == b"1"
    with reg.transaction() as t:
        t.delete(b"b")
        t.store(b"c", b"3")
    with pytest.raises(RuntimeError):
        with reg.transaction() as t:
            t.store(b"a", b"cancelled")
            raise RuntimeError("abort")
    for p in range(3):
        assert ok(c, p, "pfetch", "reg.tdb", "a") == "1\n"
        assert ok(c, p, "pfetch", "reg.tdb", "b") == ""
        assert ok(c, p, "pfetch", "reg.tdb", "c") == "3\n"
        assert ok(c, p, "getdbseqnum", "reg.tdb").strip() == "0x2"
    ok(c, 0, "pstore", "reg.tdb", "d", "4")
    ok(c, 1, "pdelete", "reg.tdb", "a")
    assert ok(c, 2, "getdbseqnum", "reg.tdb").strip() == "0x4"
    assert "Dumped 2 records" in ok(c, 2, "catdb", "reg.tdb")

    # bad input: clear errors, nothing changes
    r = c.cli(0, "readkey", "nosuch.tdb", "k")
    assert r.returncode == 1 and "no database 'nosuch.tdb' is attached" in r.stderr
    r = c.cli(0, "writekey", "vol.tdb", "k" * 600, "v")
    assert r.returncode == 1 and "larger than the limit" in r.stderr and "EINVAL" in r.stderr
    with pytest.raises(ApiCallError, match="larger than the limit"):
        c.call(0, "pstore", db_name="reg.tdb", key="YQ==",
               value="eHh4" * (600 * 1024 // 3), timeout=20)
    r = c.cli(0, "pstore", "vol.tdb", "k", "v")
    assert r.returncode == 1 and "volatile" in r.stderr
    r = c.cli(0, "attach", "vol.tdb", "persistent")
    assert r.returncode == 1 and "attached as volatile" in r.stderr
    with pytest.raises(DatabaseError) as ei:
        attach("../etc", socket=c.socket(0))
    assert ei.value.code == "EINVAL"

    # wipedb empties the database on every node
    assert "Database reg.tdb wiped" in ok(c, 1, "wipedb", "reg.tdb")
    for p in range(3):
        assert "Dumped 0 records" in ok(c, p, "catdb", "reg.tdb")


def test_recovery_after_a_node_is_killed_and_a_late_joiner(tmp_path):
    with LocalCluster(4, base_dir=tmp_path) as c:
        c.start([0, 1, 2])
        c.wait_for(lambda: all(c.status(p)["joined"] and c.status(p)["vnnmap"] == [0, 1, 2]
                               for p in range(3)), 30)
        ok(c, 0, "attach", "vol.tdb")
        ok(c, 0, "attach", "reg.tdb", "persistent")
        for i in range(20):
            ok(c, i % 3, "writekey", "vol.tdb", f"k{i}", f"v{i}")
        reg = attach("reg.tdb", persistent=True, socket=c.socket(1))
        with reg.transaction() as t:
            for i in range(50):
                t.store(f"p{i}", f"value {i}")
        # kill the leader: every committed transaction survives; the volatile records
        # the survivors held are still there
        leader = c.status(0)["leader"]
        c.kill(leader)
        rest = [p for p in range(3) if p != leader]
        c.wait_for(lambda: joined_without(c, rest, leader), 30)
        for p in rest:
            assert ok(c, p, "pfetch", "reg.tdb", "p49") == "value 49\n"
            assert ok(c, p, "getdbseqnum", "reg.tdb").strip() == "0x1"
        survivors = [i for i in range(20) if i % 3 != leader]
        for i in survivors:
            assert ok(c, rest[0], "readkey", "vol.tdb", f"k{i}").strip() == \
                f"Data: size:{len(f'v{i}')} ptr:[v{i}]"
        ok(c, rest[1], "pstore", "reg.tdb", "after", "kill")
        # a late joiner (node 3, never seen the databases) and the killed node come
        # back: both get every database in the recovery
        c.start_node(3)
        c.start_node(leader)
        c.wait_healthy(30)
        for p in (3, leader):
            out = ok(c, p, "getdbmap")
            assert "name:vol.tdb" in out and "name:reg.tdb" in out
            assert ok(c, p, "pfetch", "reg.tdb", "after") == "kill\n"
            assert ok(c, p, "pfetch", "reg.tdb", "p7") == "value 7\n"
            assert ok(c, p, "getdbseqnum", "reg.tdb").strip() == "0x2"
        assert ok(c, 3, "readkey", "vol.tdb", f"k{survivors[0]}").startswith("Data: size:")
        assert "recovery: 2 databases" in c.log(c.status(0)["leader"])


def test_no_resurrection_of_a_deleted_record(c):
    # CTDB's recovery.003.no_resurrect: stop A, delete the key on B, recover, continue A
    ok(c, 0, "attach", "rec_test.tdb")
    ok(c, 0, "writekey", "rec_test.tdb", "test1", "value1")
    for p in range(3):  # every node gets a copy
        ok(c, p, "readkey", "rec_test.tdb", "test1")
    ok(c, 0, "stop")
    c.wait_for(lambda: joined_without(c, [1, 2], 0), 20)
    ok(c, 1, "deletekey", "rec_test.tdb", "test1")
    for p in (1, 2):
        assert "Dumped 0 records" in ok(c, p, "catdb", "rec_test.tdb")
    ok(c, 0, "continue")
    c.wait_healthy(20)
    c.wait_for(lambda: c.status(0)["vnnmap"] == [0, 1, 2], 20)
    for p in range(3):
        out = ok(c, p, "catdb", "rec_test.tdb")
        assert "key(" not in out, (p, out)
        assert ok(c, p, "readkey", "rec_test.tdb", "test1").strip() == "Data: size:0 ptr:[]"


def corrupt_record(path, name, key):
    env = lmdb.open(path, max_dbs=16)
    with env.begin(write=True, db=env.open_db(b"db:" + name.encode())) as txn:
        txn.put(key, b"\xde\xad")  # shorter than a record header
    env.close()


def test_a_damaged_database_is_refused_and_not_spread(c):
    ok(c, 0, "attach", "reg.tdb", "persistent")
    ok(c, 0, "pstore", "reg.tdb", "k", "good")
    # a damaged record on node 2: it refuses the database, logs why, and the recovery
    # gives it the healthy copy instead of spreading the damaged one
    c.stop(2)
    corrupt_record(os.path.join(c.node_dir(2), "db", "persistent"), "reg.tdb", b"k")
    c.start_node(2)
    c.wait_healthy(30)
    c.wait_for(lambda: "replaced by recovery" in c.log(2), 20)
    assert "database reg.tdb is damaged on this node" in c.log(2)
    for p in range(3):
        assert ok(c, p, "pfetch", "reg.tdb", "k") == "good\n"
    # a persistent environment that is not LMDB at all: the node keeps running, says
    # so, serves no persistent database, and the others carry on
    c.stop(1)
    with open(os.path.join(c.node_dir(1), "db", "persistent", "data.mdb"), "wb") as f:
        f.write(os.urandom(1 << 16))
    c.start_node(1)
    c.wait_healthy(30)
    r = c.cli(1, "pfetch", "reg.tdb", "k")
    assert r.returncode == 1 and "cannot open persistent database environment" in r.stderr
    assert "problem: cannot open persistent" in ok(c, 1, "getdbmap")
    ok(c, 0, "pstore", "reg.tdb", "k2", "still works")
    for p in (0, 2):
        assert ok(c, p, "pfetch", "reg.tdb", "k") == "good\n"
