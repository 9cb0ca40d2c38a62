"""A transaction's answer tells the truth (docs/databases.md, "Transaction answers"), on
real agents: no error for a transaction that was kept.

The agents' test hook ``PYCTDB_TEST_COMMIT_DELAY="PHASE:SECONDS"`` holds a commit in its
last phase (``answer``: the coordinator, once every member applied the round, before it
answers), so that a node can be paused or killed right there."""

import base64
import threading
import time

import pytest

from pyctdb.client.db import DatabaseError, attach
from pyctdb.rules import records as L
from pyctdb.testing.localcluster import LocalCluster

pytestmark = pytest.mark.timeout(180)

DB = "answers.tdb"
B64_K1, B64_PAUSED = base64.b64encode(b"k1").decode(), base64.b64encode(b"paused").decode()


@pytest.fixture
def c(tmp_path, monkeypatch):
    # every agent's coordinator holds its answer 4 s once a round is applied everywhere
    monkeypatch.setenv("PYCTDB_TEST_COMMIT_DELAY", "answer:4")
    with LocalCluster.healthy_cluster(3, tmp_path) as c:
        c.cli_ok(0, "attach", DB, "persistent")
        yield c


def coordinator(c):
    vm = c.status(0)["vnnmap"]
    return vm[L.db_id(DB) % len(vm)]


def commit_in_thread(c, pnn, key, value):
    """A one-write transaction through the client library of node ``pnn`` (its answer in
    ``out["seqnum"]`` or ``out["error"]``), in a thread."""
    out = {}

    def run():
        db = attach(DB, persistent=True, socket=c.socket(pnn), timeout=90)
        t0 = time.monotonic()
        try:
            with db.transaction() as t:
                t.store(key, value)
            out["seqnum"] = t.seqnum
        except DatabaseError as exc:
            out["error"] = exc
        out["seconds"] = time.monotonic() - t0
    th = threading.Thread(target=run)
    th.start()
    return th, out


def wait_delayed(c, pnn, phase, n=1):
    c.wait_for(lambda: c.log(pnn).count(f"commit phase {phase} delayed") >= n, 15,
               what=f"node {pnn}'s commit held in phase {phase}")


def seqnum(c, pnn):
    return int(c.cli_ok(pnn, "getdbseqnum", DB).split()[-1], 0)


def test_a_requester_paused_past_its_deadline_reports_its_kept_transaction(c):
    # The round is applied on every member, the coordinator holds its answer; the
    # requester is paused meanwhile, dropped by the others, and resumes after its 15 s
    # deadline: its link to the coordinator is gone ("node N disconnected"). The
    # transaction is kept on every node: the answer is success, never EAGAIN/EIO.
    coord = coordinator(c)
    # (not the leader: a paused leader's return is a matter of the cluster lock)
    asker = next(p for p in range(3) if p not in (coord, c.status(coord)["leader"]))
    seq0 = seqnum(c, asker)
    t0 = time.monotonic()
    th, out = commit_in_thread(c, asker, b"k1", b"paused")
    wait_delayed(c, coord, "answer")
    c.pause(asker)
    try:
        c.wait_for(lambda: c.status(coord)["nodes"][asker]["flags"] & 1, 10,
                   what=f"node {asker} dropped")
        time.sleep(max(0.0, t0 + 15.5 - time.monotonic()))
    finally:
        c.resume(asker)
    th.join(60)
    assert "error" not in out, (out, c.log(asker)[-3000:])
    assert out["seqnum"] == seq0 + 1
    for p in range(3):  # (a node serves once it has rejoined)
        c.wait_for(lambda: c.call(p, "pfetch", db_name=DB, key=B64_K1)["value"] == B64_PAUSED,
                   30, what=f"k1 on node {p}")
        assert seqnum(c, p) == seq0 + 1
    assert "in doubt" not in c.log(asker)


def test_a_coordinator_killed_after_every_member_applied_reports_success(c):
    coord = coordinator(c)
    asker = next(p for p in range(3) if p != coord)
    seq0 = seqnum(c, asker)
    th, out = commit_in_thread(c, asker, b"k2", b"kept")
    wait_delayed(c, coord, "answer")
    c.kill(coord)
    th.join(60)
    assert "error" not in out, (out, c.log(asker)[-3000:])
    assert out["seqnum"] == seq0 + 1
    others = [p for p in range(3) if p != coord]
    for p in others:
        assert c.cli_ok(p, "pfetch", DB, "k2") == "kept\n"
    # the database takes transactions again, and a retry is never applied twice
    c.cli_ok(asker, "pstore", DB, "k3", "after")
    assert all(seqnum(c, p) == seq0 + 2 for p in others)
