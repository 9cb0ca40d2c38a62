"""LMDB storage (pyctdb.db.store): sub-databases, the db map, damage detection."""

import asyncio

import lmdb

from pyctdb.rules import records as L
from pyctdb.server.db.store import Store, StoreError


def run(coro):
    return asyncio.run(coro)


def test_create_apply_replace_and_reopen(tmp_path):
    st = Store(str(tmp_path / "p"), persistent=True)
    st.open()

    async def go():
        await st.create("a.tdb", L.db_id("a.tdb"))
        await st.apply("a.tdb", [(b"k1", L.Record(1, 0, 0, b"v1")),
                                 (b"k2", L.Record(1, 0, 0, b"v2"))], seqnum=4)
        assert st.get("a.tdb", b"k1").value == b"v1"
        assert st.meta["a.tdb"]["seqnum"] == 4
        page, more = st.page("a.tdb", None, limit_bytes=1)
        assert [k for k, _ in page] == [b"k1"] and more
        page, more = st.page("a.tdb", b"k1")
        assert [k for k, _ in page] == [b"k2"] and not more
        await st.apply("a.tdb", [(b"k3", L.Record(1, 0, 0, b"v3"))], replace=True)
        assert [k for k, _ in st.items("a.tdb")] == [b"k3"]
    run(go())
    st.close()
    st2 = Store(str(tmp_path / "p"), persistent=True)
    st2.open()
    assert st2.meta["a.tdb"] == {"db_id": L.db_id("a.tdb"), "persistent": True, "seqnum": 4}
    assert st2.get("a.tdb", b"k3").value == b"v3"
    st2.close()


def test_volatile_store_is_wiped_at_open(tmp_path):
    st = Store(str(tmp_path / "v"), persistent=False)
    st.open(wipe=True)
    run(st.create("v.tdb", 1))
    st.close()
    st = Store(str(tmp_path / "v"), persistent=False)
    st.open(wipe=True)
    assert st.meta == {}
    st.close()


def test_a_damaged_record_marks_only_its_database_unusable(tmp_path):
    st = Store(str(tmp_path / "p"), persistent=True)
    st.open()
    run(st.create("good.tdb", 1))
    run(st.create("bad.tdb", 2))
    run(st.apply("bad.tdb", [(b"k", L.Record(1, 0, 0, b"v"))]))
    st.close()
    env = lmdb.open(str(tmp_path / "p"), max_dbs=10)
    with env.begin(write=True, db=env.open_db(b"db:bad.tdb")) as txn:
        txn.put(b"k", b"\x01\x02")  # shorter than a header
    env.close()
    st = Store(str(tmp_path / "p"), persistent=True)
    st.open()
    assert "bad.tdb" in st.damaged and "good.tdb" not in st.damaged
    try:
        st.get("bad.tdb", b"k")
        raise AssertionError("served a damaged database")
    except StoreError as exc:
        assert "damaged" in str(exc)
    assert st.get("good.tdb", b"x") is None
    # a recovery's push replaces it and it is served again
    run(st.apply("bad.tdb", [(b"k", L.Record(2, 0, 0, b"ok"))], replace=True))
    assert st.get("bad.tdb", b"k").value == b"ok"
    st.close()


def test_a_garbage_environment_is_refused_without_crashing(tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    (d / "data.mdb").write_bytes(b"this is not an lmdb file" * 1000)
    st = Store(str(d), persistent=True)
    st.open()
    assert st.env is None and "cannot open persistent" in st.error
    try:
        st.usable("x")
        raise AssertionError
    except StoreError:
        pass
    st.close()


def test_a_client_defers_to_a_waiting_agent_but_never_for_long(tmp_path):
    import mmap
    import time

    from pyctdb.protocol import fastpath
    from pyctdb.server.db import gate as G
    flag = G.WaitFlag(str(tmp_path))
    with open(tmp_path / G.WAIT_FILE, "rb") as f:  # as a client maps it
        w = mmap.mmap(f.fileno(), G.WAIT_SIZE, access=mmap.ACCESS_READ)
    assert w[0] == 0
    flag.raise_()
    assert w[0] == 1
    yields = []

    def agent_gets_it():  # the agent has the lock after a few yields: lowered
        yields.append(1)
        if len(yields) == 3:
            flag.lower()
    fastpath.defer(w, _yield=agent_gets_it)
    assert len(yields) == 3 and w[0] == 0
    # an agent that never gets it (or hangs): at most DEFER_MAX each time
    flag.raise_()
    t0 = time.monotonic()
    fastpath.defer(w)
    assert fastpath.DEFER_MAX <= time.monotonic() - t0 < 1
    # an agent that died waiting: a stale flag is ignored at once
    flag.mm[8:16] = G.WAIT_SINCE.pack(time.monotonic() - G.TTL - 1)
    fastpath.defer(w, _yield=lambda: yields.append(2), _sleep=lambda s: yields.append(3))
    assert yields == [1, 1, 1]
    # and the next agent lowers it
    G.WaitFlag(str(tmp_path))
    assert w[0] == 0
