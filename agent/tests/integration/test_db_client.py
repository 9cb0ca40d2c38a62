"""The client library's fast path on real agents and real LMDB (docs/client.md): a
fetch-lock of a record this node masters is one LMDB write transaction in the client,
without the agent; otherwise the agent migrates the record. The LMDB writer lock is the
record lock (it excludes other processes, dies with its holder), clients never write
while the node is frozen, API fetch-locks exclude fast-path clients and end with their
connection, and increments from two nodes are never lost."""

import base64
import os
import subprocess
import sys
import threading
import time

import pytest

from pyctdb.client.connection import AgentUnavailable, Client
from pyctdb.client.db import DatabaseError, LocalRecord, LockedRecord, attach
from pyctdb.server.db import gate as G
from pyctdb.rules import records as L
from pyctdb.testing.localcluster import AGENT_DIR, LocalCluster

pytestmark = pytest.mark.timeout(180)

DB = "fast.tdb"


@pytest.fixture
def c(tmp_path):
    with LocalCluster.healthy_cluster(3, tmp_path, tunables={"VacuumInterval": 0}) as c:
        assert c.cli(0, "attach", DB).returncode == 0
        yield c


def stored(db, key):
    """The record ``key`` as stored in ``db``'s node's LMDB (read directly)."""
    loc = db._local
    with loc.env.begin() as txn:
        raw = txn.get(key, db=loc.db)
    return None if raw is None else L.unpack(raw)


def gate_open(db):
    loc = db._local
    with loc.env.begin() as txn:
        g = txn.get(G.GATE_KEY, db=loc.gate)
    return g is not None and G.GATE.unpack(g)[0] > time.monotonic()


def catdb(c, pnn, key):
    """(dmaster, value) of ``key`` from catdb on node ``pnn``."""
    out = c.cli(pnn, "catdb", DB, check=True).stdout
    for block in out.split("\n\n"):
        if f'key({len(key)}) = "{key}"' in block:
            dm = int(block.split("dmaster: ")[1].split("\n")[0])
            return dm, block.split('data(')[1].split('= "')[1].rstrip('"\n')
    return None


def incr(rec):
    rec.store(str(int(rec.value or b"0") + 1).encode())


CHILD = r"""
import os, sys, time
sys.path.insert(0, {agent!r})
from pyctdb.client.db import attach
db = attach({db!r}, socket=sys.argv[1])
mode, key = sys.argv[2], sys.argv[3].encode()
if mode == "hold":          # take the record, say so, then wait for a line or die
    rec = db.fetch_locked(key)
    print(type(rec).__name__, flush=True)
    line = sys.stdin.readline().strip()
    rec.store(line.encode())
    print("stored", flush=True)
elif mode == "read":        # inside a read transaction (of the fast path's env) until killed
    txn = db._local.env.begin()
    txn.get(key, db=db._local.db)
    print(os.getpid(), flush=True)
    sys.stdin.readline()
elif mode == "incr":        # n increments of the record, from the line "go" on
    print("ready", flush=True)
    assert sys.stdin.readline().strip() == "go"
    local = 0
    for _ in range(int(sys.argv[4])):
        with db.fetch_locked(key) as rec:
            local += type(rec).__name__ == "LocalRecord"
            rec.store(str(int(rec.value or b"0") + 1).encode())
        time.sleep(0.002)  # both run for a while: the record moves back and forth
    print(local, flush=True)
elif mode == "loop":        # fetch-lock + store in a tight loop until stdin closes
    import threading
    stop = []
    threading.Thread(target=lambda: (sys.stdin.read(), stop.append(1)), daemon=True).start()
    print("ready", flush=True)
    n = 0
    while not stop:
        with db.fetch_locked(key) as rec:
            rec.store(str(int(rec.value or b"0") + 1).encode())
        n += 1
    print(n, flush=True)
"""


def child(c, pnn, *args):
    code = CHILD.format(agent=AGENT_DIR, db=DB)
    return subprocess.Popen([sys.executable, "-c", code, c.socket(pnn), *map(str, args)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_fast_path_needs_no_agent_and_migration_is_the_fallback(c):
    db = attach(DB, socket=c.socket(0), timeout=3)
    assert db.local, db.local_error
    # a record mastered by node 1: the agent migrates it here, then the fast path
    assert c.cli(1, "writekey", DB, "k", "5").returncode == 0
    assert stored(db, b"k") is None or stored(db, b"k").dmaster != 0
    with db.fetch_locked(b"k") as rec:
        assert isinstance(rec, LocalRecord) and rec.value == b"5"
        incr(rec)
    assert stored(db, b"k").dmaster == 0 and stored(db, b"k").value == b"6"
    rsn = stored(db, b"k").rsn
    assert catdb(c, 2, "k") == (0, "6")
    # this node is the DMASTER: no request to the agent at all — with the agent stopped
    # (SIGSTOP; well within the gate's TTL), increments and reads still go on
    c.pause(0)
    try:
        t0 = time.monotonic()
        for _ in range(200):
            with db.fetch_locked(b"k") as rec:
                assert isinstance(rec, LocalRecord)
                incr(rec)
        assert db.fetch(b"k") == b"206"
        db.store(b"k", b"207")
        assert time.monotonic() - t0 < 1.5
    finally:
        c.resume(0)
    r = stored(db, b"k")
    assert (r.value, r.rsn, r.dmaster) == (b"207", rsn + 201, 0)
    assert catdb(c, 1, "k") == (0, "207")
    # a read of a record another node masters migrates it here (as readkey)
    assert c.cli(2, "writekey", DB, "k", "x").returncode == 0
    assert db.fetch(b"k") == b"x" and stored(db, b"k").dmaster == 0
    with db.fetch_locked(b"new") as rec:  # a record nobody has
        assert rec.value is None and not rec.exists
        rec.delete()
    assert db.fetch(b"new") is None
    # the agent's own requests read the client's writes
    assert c.cli(0, "readkey", DB, "k").stdout.strip() == "Data: size:1 ptr:[x]"
    # nested fetch-locks on this node would deadlock: refused
    with db.fetch_locked(b"k"):
        with pytest.raises(Exception) as exc:
            db.fetch_locked(b"other")
        assert "EDEADLK" in str(exc.value)
        with pytest.raises(Exception) as exc:
            db.store(b"other", b"1")
        assert "EDEADLK" in str(exc.value)
    # a database attached with local=False goes through the agent
    api = attach(DB, socket=c.socket(0), local=False)
    with api.fetch_locked(b"k") as rec:
        assert isinstance(rec, LockedRecord) and rec.value == b"x"
        rec.store(b"y")
    assert db.fetch(b"k") == b"y"
    db.close()
    api.close()


def test_the_lock_excludes_other_processes_and_dies_with_its_holder(c):
    db = attach(DB, socket=c.socket(0))
    db.store(b"k", b"0")
    p = child(c, 0, "hold", "k")
    try:
        assert p.stdout.readline().strip() == "LocalRecord"
        # while another process holds it, this one waits ...
        got = {}

        def take():
            with db.fetch_locked(b"k") as rec:
                got["value"], got["at"] = rec.value, time.monotonic()
                incr_value = int(rec.value) + 1
                rec.store(str(incr_value).encode())
        t = threading.Thread(target=take)
        t.start()
        time.sleep(1.0)
        assert t.is_alive() and not got
        # ... and the agent's event loop does not: it answers, and serves the other
        # (persistent) environment, while its volatile writes wait
        t0 = time.monotonic()
        assert c.status(0)["pnn"] == 0
        assert c.cli(0, "pstore", "p.tdb", "a", "b").returncode != 0  # not attached
        assert c.cli(0, "attach", "p.tdb", "persistent").returncode == 0
        assert c.cli(0, "pstore", "p.tdb", "a", "b").returncode == 0
        assert time.monotonic() - t0 < 5
        released = time.monotonic()
        p.stdin.write("41\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "stored"
        t.join(10)
        assert got["value"] == b"41" and got["at"] >= released
        assert db.fetch(b"k") == b"42"
    finally:
        p.kill()
        p.wait()

    # a holder killed in its block: the kernel releases the lock, nothing is written
    p = child(c, 0, "hold", "k")
    assert p.stdout.readline().strip() == "LocalRecord"
    p.kill()
    p.wait()
    t0 = time.monotonic()
    with db.fetch_locked(b"k") as rec:
        assert rec.value == b"42"
        incr(rec)
    assert time.monotonic() - t0 < 2
    # the agent writes too (a migration away and back)
    assert c.cli(1, "writekey", DB, "k", "100").returncode == 0
    assert db.fetch(b"k") == b"100"

    # a reader killed inside its transaction: the agent frees its slot (else LMDB could
    # not reuse the pages it might read, and the file would grow)
    p = child(c, 0, "read", "k")
    pid = p.stdout.readline().strip()
    assert f" {pid} " in db._local.env.readers()
    p.kill()
    p.wait()
    c.wait_for(lambda: f" {pid} " not in db._local.env.readers(), 20,
               what="the dead reader's slot freed")
    db.close()


def test_no_client_write_while_the_node_is_frozen(c):
    leader = c.status(0)["leader"]
    other = next(p for p in (0, 1, 2) if p != leader)
    third = next(p for p in (0, 1, 2) if p not in (leader, other))
    on_leader = attach(DB, socket=c.socket(leader))
    on_other = attach(DB, socket=c.socket(other))
    on_leader.store(b"h", b"0")
    on_other.store(b"k", b"0")
    assert stored(on_other, b"k").dmaster == other and gate_open(on_other)

    # a client of the leader's node holds a record: the leader's own freeze waits for it
    # while the other member is frozen already
    held = on_leader.fetch_locked(b"h")
    assert isinstance(held, LocalRecord)
    assert c.cli(third, "stop").returncode == 0
    c.wait_for(lambda: not gate_open(on_other), 10, what="the other member frozen")
    assert on_leader._local.e.holder  # (still held)

    done = {}

    def writer():
        with on_other.fetch_locked(b"k") as rec:
            rec.store(b"during")
        done["at"] = time.monotonic()
    t = threading.Thread(target=writer)
    t.start()
    time.sleep(1.5)
    r = stored(on_other, b"k")
    assert (r.value, r.dmaster) == (b"0", other) and not done  # nothing written
    released = time.monotonic()
    held.store(b"held")  # committed before the leader's node froze: it survives
    t.join(30)
    assert done["at"] >= released
    c.wait_for(lambda: all(c.status(p)["recovery_mode"] == "NORMAL" for p in (leader, other)),
               30, what="the recovery")
    assert on_other.fetch(b"k") == b"during"
    assert on_leader.fetch(b"h") == b"held"
    assert c.cli(third, "continue").returncode == 0
    on_leader.close()
    on_other.close()


def test_api_locks_exclude_fast_path_clients_and_end_with_their_connection(c):
    db = attach(DB, socket=c.socket(0))
    db.store(b"k", b"1")
    api = Client(c.socket(0))
    res = api.call("fetch_lock", db_name=DB, key="aw==", lease=60)  # b"k"
    got = {}

    def take():
        with db.fetch_locked(b"k") as rec:
            got["value"] = rec.value
            rec.store(rec.value + b"+fast")
    t = threading.Thread(target=take)
    t.start()
    time.sleep(1.0)
    assert t.is_alive() and stored(db, b"k").value == b"1"
    api.call("fetch_unlock", handle=res["handle"], store=True, value="YXBp")  # b"api"
    t.join(15)
    assert got["value"] == b"api" and db.fetch(b"k") == b"api+fast"

    # a lease of a key of the largest size; meanwhile other records go on locally
    long = b"L" * L.MAX_KEY
    db.store(long, b"v")
    res = api.call("fetch_lock", db_name=DB, key=base64.b64encode(long).decode())
    with db.fetch_locked(b"other") as rec:
        assert isinstance(rec, LocalRecord)
        rec.store(b"o")
    api.call("fetch_unlock", handle=res["handle"])
    with pytest.raises(DatabaseError) as exc:
        db.fetch_locked(b"")
    assert exc.value.code == "EINVAL"

    # a fetch-lock taken through the API ends when its connection closes, not after its
    # lease (60 s)
    api.call("fetch_lock", db_name=DB, key="aw==", lease=60)
    api.close()
    t0 = time.monotonic()
    with db.fetch_locked(b"k") as rec:
        assert rec.value == b"api+fast"
    assert time.monotonic() - t0 < 5
    assert "its client closed the connection" in c.log(0)
    db.close()


def test_no_lost_updates_from_two_nodes(c):
    n = 300
    procs = [child(c, p, "incr", "n", n) for p in (0, 1)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:  # at once: the record moves back and forth between the nodes
        p.stdin.write("go\n")
        p.stdin.flush()
    local = [int(p.communicate(timeout=150)[0].strip()) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    db = attach(DB, socket=c.socket(2))
    assert db.fetch(b"n") == str(2 * n).encode()
    assert sum(local) > 0  # some increments found the record here
    assert catdb(c, 0, "n")[1] == str(2 * n)
    db.close()


def test_clients_of_a_dead_agent_stop_writing_and_a_restart_empties_in_place(c):
    db = attach(DB, socket=c.socket(1))
    db.store(b"k", b"0")
    data = os.path.join(c.node_dir(1), "db", "volatile", "data.mdb")
    ino = os.stat(data).st_ino
    c.kill(1)
    # the gate is not renewed any more: local writes stop within its TTL (3 s)
    t0 = time.monotonic()
    with pytest.raises((DatabaseError, AgentUnavailable)):
        while time.monotonic() - t0 < 10:
            with db.fetch_locked(b"k") as rec:
                rec.store(b"after")
    assert time.monotonic() - t0 < G.TTL + 1.5
    # a new agent empties the environment the client still has open (not new files)
    c.start_node(1)
    c.wait_healthy(30)
    assert os.stat(data).st_ino == ino
    assert stored(db, b"k") is None
    assert db.fetch(b"k") is None  # (the record went with the node, as in CTDB)
    with db.fetch_locked(b"k") as rec:
        assert isinstance(rec, LocalRecord) and rec.value is None
        rec.store(b"new")
    assert catdb(c, 0, "k") == (1, "new")
    db.close()


def wait_flag(c, pnn):
    """Node ``pnn``'s ``agent.wait`` (gate.WaitFlag), as its clients map it."""
    import mmap
    with open(os.path.join(c.node_dir(pnn), "db", "volatile", G.WAIT_FILE), "rb") as f:
        return mmap.mmap(f.fileno(), G.WAIT_SIZE, access=mmap.ACCESS_READ)


def test_the_agent_says_when_it_waits_for_the_writer_lock(c):
    db = attach(DB, socket=c.socket(0))
    db.store(b"k", b"0")
    w = wait_flag(c, 0)
    assert w[0] == 0
    with db.fetch_locked(b"k") as rec:
        assert isinstance(rec, LocalRecord)
        # the next gate renewal (every second) waits for this record's lock: flagged
        c.wait_for(lambda: w[0] == 1, G.RENEW + 2, what="the agent's wait flagged")
        rec.store(b"1")
    c.wait_for(lambda: w[0] == 0, 5, what="the flag lowered once the agent has the lock")
    db.close()


def test_looping_clients_do_not_starve_migrations_or_a_freeze(c):
    """Clients of node 0 take one record in a tight loop; node 1 takes it now and then
    (each time a migration, whose handover on node 0 is a write of node 0's agent), and
    a recovery freezes node 0 meanwhile: both go through promptly."""
    leader = c.status(0)["leader"]
    a = next(p for p in (0, 1, 2) if p != leader)  # the loops' node
    b = next(p for p in (0, 1, 2) if p not in (a, leader))
    db_a = attach(DB, socket=c.socket(a))
    db_a.store(b"hot", b"0")
    loops = [child(c, a, "loop", "hot") for _ in range(2)]
    try:
        for p in loops:
            assert p.stdout.readline().strip() == "ready"
        db_b = attach(DB, socket=c.socket(b))
        n, moved, last = 60, 0, None
        t0 = time.monotonic()
        for _ in range(n):
            with db_b.fetch_locked(b"hot") as rec:
                v = int(rec.value)
                moved += v != last  # the loops had it meanwhile: it migrated here
                last = v + 1
                rec.store(str(v + 1).encode())
            time.sleep(0.005)
        rate = n / (time.monotonic() - t0)
        assert moved >= n // 2, moved
        assert rate > 10, rate  # (~100/s on a loaded 2-core VM; a starved agent: a few)
        # a recovery (its freeze waits for node a's writer lock) while the loops go on
        before = c.status(leader)["generation"]
        t0 = time.monotonic()
        assert c.cli(leader, "recover").returncode == 0
        c.wait_for(lambda: c.status(leader)["generation"] != before
                   and c.status(leader)["recovery_mode"] == "NORMAL", 20, what="recovery")
        assert time.monotonic() - t0 < 8
        db_b.close()
    finally:
        for p in loops:
            p.stdin.close()
        counts = [int(p.stdout.read().strip() or 0) for p in loops]
        for p in loops:
            p.wait(30)
    assert all(p.returncode == 0 for p in loops) and all(counts), counts
    assert db_a.fetch(b"hot") == str(sum(counts) + n).encode()
    db_a.close()
