"""The client library's fast path against an agent's store in this process (no agents:
the agent's side is a volatile Store and its Gate, docs/client.md): the gate a
fetch-lock obeys is the one in ``agent.wait``, written in the agent's write
transactions; a dropped record releases the writer lock."""

import asyncio
import threading

import pytest

from pyctdb.client.connection import AgentUnavailable
from pyctdb.client import db as C
from pyctdb.server.db import gate as G
from pyctdb.rules import records as L
from pyctdb.server.db.store import Store

NAME = "t.tdb"


@pytest.fixture
def node(tmp_path):
    """(store, gate, db): node 0's volatile store with ``NAME`` holding ``k`` (mastered
    here) and ``far`` (mastered by node 1), its gate open, and a client of it whose
    requests to the agent fail (there is none: a fetch-lock that is not local raises
    AgentUnavailable)."""
    path = str(tmp_path / "volatile")
    st = Store(path, persistent=False)
    st.open(wipe=True)
    gate = G.Gate(st)
    gate.want_open = True

    async def setup():
        await st.create(NAME, L.db_id(NAME))
        await st.apply(NAME, [(b"k", L.Record(1, 0, 0, b"1")),
                              (b"far", L.Record(1, 1, 0, b"x"))])
        await st.run(gate._write)
    asyncio.run(setup())
    db = C.Database(NAME, socket=str(tmp_path / "no-agent.sock"), timeout=1)
    db.persistent, db.pnn = False, 0
    db._local = C._Local(path, NAME, 0, env=st.env)
    yield st, gate, db
    C._ENVS.pop(path, None)
    db._local = None
    st.close()


def stored(st, key):
    return st.get(NAME, key)


def test_the_gate_in_agent_wait_is_the_one_a_fetch_lock_obeys(node):
    st, gate, db = node
    w = db._local.wait
    assert G.GATE.unpack_from(w, G.GATE_AT)[0] > 0  # written with the LMDB record
    with db.fetch_locked(b"k") as rec:
        assert isinstance(rec, C.LocalRecord) and rec.value == b"1" and rec.exists
        rec.store(b"2")
    assert (rec.value, rec.rsn) == (b"2", 2) and stored(st, b"k").value == b"2"

    # closed in agent.wait only (LMDB's gate record still open): no local write
    with st.env.begin(write=True):  # (as the agent: under the writer lock)
        st.wait_flag.set_gate(0.0, 0)
    with pytest.raises(AgentUnavailable):  # (it asks the agent to migrate the record)
        db.fetch_locked(b"k")
    assert stored(st, b"k").value == b"2"

    # the agent's renewal opens it, its closing closes it (committed when close returns)
    asyncio.run(st.run(gate._write))
    with db.fetch_locked(b"k") as rec:
        rec.store(b"3")
    asyncio.run(gate.close())
    assert G.GATE.unpack_from(w, G.GATE_AT)[0] == 0
    with pytest.raises(AgentUnavailable):
        db.fetch_locked(b"k")
    assert stored(st, b"k").value == b"3"


def test_a_lease_in_agent_wait_keeps_clients_off_the_record(node):
    st, gate, db = node

    async def hold():
        await gate.hold(NAME, b"k")
    asyncio.run(hold())
    assert G.GATE.unpack_from(db._local.wait, G.GATE_AT)[1] == 1
    with pytest.raises(AgentUnavailable):  # leased through the API
        db.fetch_locked(b"k")
    asyncio.run(st.apply(NAME, [(b"other", L.Record(1, 0, 0, b""))]))
    with db.fetch_locked(b"other") as rec:  # others are not
        assert isinstance(rec, C.LocalRecord)
        rec.delete()
    assert stored(st, b"other").flags & L.REC_DELETED
    asyncio.run(gate.unhold(NAME, b"k"))
    with db.fetch_locked(b"k") as rec:
        assert isinstance(rec, C.LocalRecord)


def test_records_deleted_too_large_and_released(node):
    st, gate, db = node
    with db.fetch_locked(b"k") as rec:
        rec.delete()
    assert (rec.value, rec.exists, rec.rsn) == (None, False, 2)
    with db.fetch_locked(b"k") as rec:  # a deleted record: no value
        assert rec.value is None and not rec.exists and rec.rsn == 2
        with pytest.raises(C.DatabaseError, match="EINVAL"):
            rec.store(b"x" * (L.MAX_VALUE + 1))
        rec.store("é")  # (still held after the refusal; str as UTF-8)
    with pytest.raises(C.DatabaseError, match="already stored"):
        rec.store(b"again")
    assert stored(st, b"k").value == "é".encode()
    with pytest.raises(ValueError):  # an exception in the block: released, unchanged
        with db.fetch_locked(b"k") as rec:
            raise ValueError
    assert db._local.e.holder == 0 and stored(st, b"k").rsn == 3


def test_a_dropped_record_releases_the_lock_and_no_edeadlk_after_it(node):
    st, gate, db = node
    rec = db.fetch_locked(b"k")
    assert db._local.e.holder == threading.get_ident()
    with pytest.raises(C.DatabaseError, match="EDEADLK"):  # held: the agent would wait
        db.fetch(b"far")
    del rec  # (never released: py-lmdb aborts the transaction it frees)
    got = []
    t = threading.Thread(target=lambda: got.append(db.fetch_locked(b"k").release()))
    t.start()
    t.join(5)
    assert got == [None]  # another thread took it
    # holder still names this thread, but it holds nothing: the request goes out
    db._local.e.holder = threading.get_ident()
    with pytest.raises(AgentUnavailable):
        db.fetch(b"far")
    assert db._local.e.holder == 0


def test_a_client_opens_at_most_client_max_dbs_databases(tmp_path):
    """The client's handle on the environment has CLIENT_MAX_DBS sub-database slots (not
    the agent's 4096: each write transaction's begin copies a table that long); a database
    beyond them has no fast path (attach records why, as for any error opening it)."""
    import lmdb

    from pyctdb.protocol.fastpath import open_env
    path = str(tmp_path / "volatile")
    n = C.CLIENT_MAX_DBS + 2
    env = open_env(path, persistent=False)
    with env.begin(write=True) as txn:
        for i in range(n):
            env.open_db(b"db:d%d" % i, txn=txn)
    env.close()
    G.WaitFlag(path)
    try:
        opened = 0
        with pytest.raises(lmdb.DbsFullError):
            for i in range(n):
                C._Local(path, f"d{i}", 0)
                opened += 1
        assert opened == C.CLIENT_MAX_DBS - 1  # (one slot: the gate's)
    finally:
        C._ENVS.pop(path).env.close()
