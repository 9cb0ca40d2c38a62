"""Persistent transactions cut by a node's death, and `pyctdb recover`, on real agents.

A transaction whose commit round reaches some members but not one that goes silent is
in doubt: the coordinator stops committing to that database, asks the leader for a
recovery, and the requester waits for it and looks for its transaction in the recovered
copy (the highest sequence number wins, so a member that applied it keeps it). The
requester then reports success — the same answer as every node's data — instead of an
error for a transaction that was in fact kept."""

import pytest

from pyctdb.rules import records as L
from pyctdb.testing.localcluster import LocalCluster

pytestmark = pytest.mark.timeout(150)


def ok(c, pnn, *args):
    return c.cli_ok(pnn, *args)


@pytest.fixture
def c(tmp_path):
    # a 6 s keepalive window: a paused member is dropped while the round waits for it
    with LocalCluster.healthy_cluster(3, tmp_path, tunables={
            "KeepaliveInterval": "2", "KeepaliveLimit": "3"}) as c:
        yield c


def test_transaction_cut_by_a_members_death_is_kept_and_reported_done(c):
    db = "trans.tdb"
    ok(c, 0, "attach", db, "persistent")
    ok(c, 0, "pstore", db, "k0", "before")
    st = c.status(0)
    coord = st["vnnmap"][L.db_id(db) % len(st["vnnmap"])]
    silent = next(p for p in (2, 1, 0) if p not in (coord, st["leader"]))
    asker = next(p for p in range(3) if p != silent)
    seq0 = int(ok(c, asker, "getdbseqnum", db).split()[-1], 0)
    c.pause(silent)
    try:
        # the round reaches the other two members; the paused one never answers and
        # is dropped after the keepalive window: the transaction is in doubt
        r = c.cli(asker, "pstore", db, "k1", "during")
        assert r.returncode == 0, (r.stdout, r.stderr, c.log(asker)[-3000:])
    finally:
        c.kill(silent)
    assert "transaction in doubt" in c.log(coord) + c.log(asker)
    assert "waiting for the recovery" in c.log(asker)
    for p in range(3):
        if p != silent:
            assert ok(c, p, "pfetch", db, "k1") == "during\n"
            assert int(ok(c, p, "getdbseqnum", db).split()[-1], 0) == seq0 + 1
    # the database takes transactions again, and the dead member gets it all back
    ok(c, asker, "pstore", db, "k2", "after")
    c.start_node(silent)
    c.wait_healthy(30)
    assert ok(c, silent, "pfetch", db, "k1") == "during\n"
    assert ok(c, silent, "pfetch", db, "k2") == "after\n"
    # the transactions' own record is not a user record
    assert "__pyctdb_txids__" not in ok(c, silent, "catdb", db)
    r = c.cli(0, "pstore", db, "__pyctdb_txids__", "x")
    assert r.returncode != 0 and "reserved" in r.stderr


def test_recover_runs_a_recovery_now(c):
    gen = c.status(1)["generation"]
    out = ok(c, 1, "recover")
    assert out == ""
    st = c.status(2)
    assert st["generation"] != gen and st["recovery_mode"] == "NORMAL"
    leader = st["leader"]
    assert "asked for: pyctdb recover (from node 1)" in c.log(leader) or leader == 1
