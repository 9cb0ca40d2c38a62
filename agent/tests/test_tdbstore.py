"""The TDB backend (server/db/tdbstore.py): CTDB's files and header as Samba reads them
(checked with Debian's own python3-tdb where it is installed, else libtdb), tombstones
as empty records, Samba's sequence number record, the dbmap kept across restarts, and a
chain held by another process: the store waits for it without blocking the loop."""

import asyncio
import ast
import os
import pathlib
import struct
import subprocess
import sys
import threading
import time

import pytest

from pyctdb.rules.records import REC_DELETED, REC_MIGRATED_WITH_DATA, Record
from pyctdb.server.db import backend
from pyctdb.server.db import tdbstore
from pyctdb.server.db.tdbfile import TdbFile, ltdb_pack, ltdb_unpack
from pyctdb.server.db.tdbstore import SEQNUM_KEY, ChainBusy, TdbStore

AGENT = pathlib.Path(__file__).resolve().parent.parent


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def vol(tmp_path):
    st = TdbStore(str(tmp_path), False, 2)
    st.open(wipe=True)
    yield st
    st.close()


def test_is_a_storage_backend():
    assert issubclass(TdbStore, backend.StorageBackend) and not TdbStore.__abstractmethods__


def test_records_are_ctdb_records_in_name_dot_pnn(vol, tmp_path):
    async def go():
        await vol.create("locking.tdb", 0x1234)
        await vol.store("locking.tdb", b"k", Record(5, 2, REC_MIGRATED_WITH_DATA, b"v"))
        await vol.store("locking.tdb", b"gone", Record(7, 1, REC_DELETED, b""))
        return (await vol.read("locking.tdb", b"k"), await vol.read("locking.tdb", b"gone"),
                await vol.read("locking.tdb", b"none"), await vol.read_count("locking.tdb"))
    k, gone, none, n = run(go())
    assert k == Record(5, 2, REC_MIGRATED_WITH_DATA, b"v")
    assert gone == Record(7, 1, REC_DELETED, b"") and none is None and n == 2
    path = tmp_path / "locking.tdb.2"
    assert vol.location("locking.tdb") == str(path)
    vol.close()
    with TdbFile(str(path)) as f:  # what smbd reads: the ltdb header, then the value
        assert ltdb_unpack(f.fetch(b"k")) == (5, 2, REC_MIGRATED_WITH_DATA, b"v")
        assert ltdb_unpack(f.fetch(b"gone")) == (7, 1, 0, b"")  # deleted: header alone


WRITER = """
import sys
sys.path.insert(0, %r)
from pyctdb.server.db.tdbfile import TdbFile, ctdb_tdb_flags, ltdb_pack
f = TdbFile(%r, ctdb_tdb_flags(False))
f.store(b"k", ltdb_pack(3, 2, int(sys.argv[1]), b"x"))
"""


def test_flags_smbd_may_set_are_not_taken_for_ours(vol):
    """smbd's own write (another process, the file open in both, as in a cluster):
    CTDB's flags pyctdb does not use (AUTOMATIC, read-only delegations) are not read."""
    run(vol.create("db", 1))
    flags = 0x01040000 | REC_MIGRATED_WITH_DATA
    subprocess.run([sys.executable, "-c", WRITER % (str(AGENT), vol.file_path("db")),
                    str(flags)], check=True)
    assert run(vol.read("db", b"k")) == Record(3, 2, REC_MIGRATED_WITH_DATA, b"x")


def test_volatile_files_are_wiped_at_start_persistent_ones_kept(tmp_path):
    async def fill(st, name):
        await st.create(name, 9)
        await st.apply(name, [(b"a", Record(1, 0, 0, b"1"))], seqnum=4)
    v, p = TdbStore(str(tmp_path / "v"), False, 0), TdbStore(str(tmp_path / "p"), True, 0)
    for st, name in ((v, "brlock.tdb"), (p, "secrets.tdb")):
        st.open(wipe=not st.persistent)
        run(fill(st, name))
        st.close()
    v, p = TdbStore(str(tmp_path / "v"), False, 0), TdbStore(str(tmp_path / "p"), True, 0)
    v.open(wipe=True)
    p.open()
    try:
        assert v.meta == {} and not (tmp_path / "v" / "brlock.tdb.0").exists()
        assert p.meta["secrets.tdb"]["seqnum"] == 4 and p.meta["secrets.tdb"]["tdb"]
        assert run(p.read("secrets.tdb", b"a")).value == b"1"
    finally:
        v.close()
        p.close()


def test_persistent_sequence_number_is_samba_record(tmp_path):
    """apply(seqnum=N) writes CTDB's __db_sequence_number__ record (what Samba reads);
    a transaction that writes the record itself (TRANS3_COMMIT) sets the dbmap's."""
    st = TdbStore(str(tmp_path), True, 1)
    st.open()
    try:
        run(st.create("registry.tdb", 7))
        run(st.apply("registry.tdb", [(b"x", Record(1, 1, 0, b"y"))], seqnum=3))
        rec = run(st.read("registry.tdb", SEQNUM_KEY))
        assert struct.unpack("<Q", rec.value)[0] == 3 and st.meta["registry.tdb"]["seqnum"] == 3
        run(st.apply("registry.tdb", [(SEQNUM_KEY, Record(9, 0, 0, struct.pack("<Q", 11))),
                                      (b"x", Record(2, 0, REC_DELETED, b""))]))
        assert st.meta["registry.tdb"]["seqnum"] == 11
        assert run(st.read("registry.tdb", b"x")) is None  # persistent: no tombstones
    finally:
        st.close()


def test_replace_raw_and_pages_in_key_order(vol):
    async def go():
        await vol.create("d", 1)
        await vol.store("d", b"old", Record(1, 2, 0, b"o"))
        await vol.replace_raw("d", [(b"b", Record(2, 0, 0, b"B").pack()),
                                    (b"a", Record(1, 1, 0, b"A").pack())])
        first = await vol.read_page("d", None, limit_bytes=1)
        rest = await vol.read_page("d", first[0][-1][0], raw=True)
        return first, rest
    (recs, more), (raw, more2) = run(go())
    assert [k for k, _r in recs] == [b"a"] and more
    assert raw == [(b"b", Record(2, 0, 0, b"B").pack())] and not more2


def test_sync_reads_are_refused():
    st = TdbStore("/nonexistent", False, 0)
    for call in (lambda: st.get("d", b"k"), lambda: st.items("d"), lambda: st.count("d"),
                 lambda: st.page("d")):
        with pytest.raises(backend.StoreError):
            call()


HOLDER = """
import sys, time
sys.path.insert(0, %r)
from pyctdb.server.db.tdbfile import TdbFile, ctdb_tdb_flags
f = TdbFile(%r, ctdb_tdb_flags(False))
f.chainlock(b"k")
print("locked", flush=True)
time.sleep(float(sys.argv[1]))
f.chainunlock(b"k")
"""


def _hold(path, seconds):
    """Another process (as smbd would) holds record k's chain for ``seconds``."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER % (str(AGENT), path), str(seconds)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_chain_held_by_another_process_is_waited_for_off_the_loop(vol, monkeypatch):
    run(vol.create("g_lock.tdb", 3))
    holder = _hold(vol.file_path("g_lock.tdb"), 0.5)
    ticks = []

    async def go():
        async def ticker():
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)
        t = asyncio.ensure_future(ticker())
        t0 = time.monotonic()
        await vol.store("g_lock.tdb", b"k", Record(1, 2, 0, b"after"))
        took = time.monotonic() - t0
        # a read of another chain is not held up behind it
        t.cancel()
        return took
    took = run(go())
    holder.wait(5)
    assert took >= 0.3, took                      # it waited for the holder
    assert max(b - a for a, b in zip(ticks, ticks[1:])) < 0.2  # the loop kept running
    assert run(vol.read("g_lock.tdb", b"k")).value == b"after"
    # held for longer than the wait: EBUSY, nothing written
    monkeypatch.setattr(tdbstore, "LOCK_WAIT", 0.2)
    holder = _hold(vol.file_path("g_lock.tdb"), 1.5)
    try:
        with pytest.raises(ChainBusy) as ei:
            run(vol.store("g_lock.tdb", b"k", Record(2, 2, 0, b"no")))
        assert ei.value.code == "EBUSY" and "held by another process" in ei.value.message
    finally:
        holder.wait(5)
    assert run(vol.read("g_lock.tdb", b"k")).value == b"after"


def test_samba_python_binding_reads_our_file(vol):
    """Debian's python3-tdb (Samba's own binding, in the system's Python) opens the
    file the store writes, with the flags DB_OPEN_FLAGS gives smbd, and finds the ltdb
    header and the value."""
    if subprocess.run(["/usr/bin/python3", "-c", "import tdb"],
                      capture_output=True).returncode != 0:
        pytest.skip("python3-tdb is not installed")
    run(vol.create("x.tdb", 1))
    run(vol.store("x.tdb", b"k", Record(4, 2, 0, b"val")))
    out = subprocess.run(["/usr/bin/python3", "-c", (
        "import tdb, os; db = tdb.Tdb(%r, 0, %d, os.O_RDWR); v = db.get(b'k'); "
        "print(v[:8].hex(), v[8:12].hex(), v[24:].decode())")
        % (vol.file_path("x.tdb"), vol.tdb_flags("x.tdb"))],
        capture_output=True, text=True, check=True).stdout.split()
    assert out == [(4).to_bytes(8, "little").hex(), (2).to_bytes(4, "little").hex(), "val"]


def test_components_read_only_through_the_waiting_reads():
    """The database components may meet a TDB database: they never use the synchronous
    reads of a backend (get/items/page/count), only read*/read_page/read_items/read_count."""
    bad = []
    for name in ("databases.py", "migration.py", "transactions.py", "recovery.py",
                 "vacuum.py", "maintenance.py"):
        tree = ast.parse((AGENT / "pyctdb" / "server" / "db" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("get", "items", "page", "count") \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "st":
                bad.append(f"{name}:{node.lineno} st.{node.func.attr}")
    assert not bad, bad


TRY_LOCK = """
import sys
sys.path.insert(0, %r)
from pyctdb.server.db.tdbfile import TdbFile, ctdb_tdb_flags
f = TdbFile(%r, ctdb_tdb_flags(False))
print("locked" if f.chainlock(b"k", block=False) else "busy")
"""


def _try_lock(path):
    """What smbd would get now for record k's chain (another process): locked or busy."""
    return subprocess.run([sys.executable, "-c", TRY_LOCK % (str(AGENT), path)],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_a_freeze_holds_smbd_off_the_volatile_files_until_the_thaw(vol):
    """As CTDB's freeze: while a recovery runs, another process (smbd) cannot take a
    record of a volatile TDB file; the node's own writes (the recovery's push, in place
    without a transaction) go on; the thaw lets smbd in again."""
    async def go():
        await vol.create("locking.tdb", 5)
        await vol.store("locking.tdb", b"k", Record(1, 2, 0, b"before"))
        await vol.freeze()
        busy = _try_lock(vol.file_path("locking.tdb"))
        await vol.replace_raw("locking.tdb", [(b"k", Record(3, 2, 0, b"pushed").pack())])
        await vol.store("locking.tdb", b"j", Record(1, 2, 0, b"x"))
        got = await vol.read("locking.tdb", b"k")
        vol.thaw()
        await vol.barrier()
        return busy, got, _try_lock(vol.file_path("locking.tdb"))
    busy, got, after = run(go())
    assert busy == "busy" and got.value == b"pushed" and after == "locked"


def test_enable_seqnum_keeps_libtdb_sequence_number_on_the_open_file(vol):
    """ENABLE_SEQNUM: DB_OPEN_FLAGS answers TDB_SEQNUM from then on, and the file the
    agent holds open counts its writes (smbd's handle sees the same number)."""
    from pyctdb.server.db.tdbfile import TDB_SEQNUM

    async def go():
        await vol.create("share_info.tdb", 4)
        await vol.store("share_info.tdb", b"a", Record(1, 2, 0, b"1"))
        before = vol._run_sync(lambda: vol._file("share_info.tdb").seqnum)
        await vol.enable_seqnum("share_info.tdb")
        await vol.store("share_info.tdb", b"b", Record(1, 2, 0, b"2"))
        after = vol._run_sync(lambda: vol._file("share_info.tdb").seqnum)
        return before, after
    before, after = run(go())
    assert before == 0 and after > 0
    assert vol.tdb_flags("share_info.tdb") & TDB_SEQNUM
    assert run(vol.read("share_info.tdb", b"a")).value == b"1"  # (nothing lost)


def test_a_busy_chain_is_tried_again_quickly_at_first_then_less_often(vol, monkeypatch):
    """A chain another process holds is tried again every 0.2-0.5 ms for the first
    50 ms (CTDB's g_lock waiter lets go of the record's chain for 1 ms between its
    tries: slower tries miss the gaps), then less and less often, up to 20 ms apart."""
    pauses = []
    real_sleep = asyncio.sleep

    async def sleep(d):
        pauses.append(d)
        await real_sleep(0)
    monkeypatch.setattr(tdbstore.asyncio, "sleep", sleep)
    tries = []

    def busy():
        tries.append(1)
        if len(tries) < 200:
            raise tdbstore._Busy("held")
        return "got it"
    assert run(vol._call(busy)) == "got it"
    waited, fast, slow = 0.0, [], []
    for d in pauses:
        (fast if waited < 0.05 else slow).append(d)
        waited += d
    assert fast and max(fast) <= 0.0005 and fast[0] == 0.0002
    assert slow and slow[-1] == 0.02 and sorted(slow) == slow


def test_a_read_or_volatile_write_is_done_on_the_loop_when_the_worker_is_idle(vol):
    """A read, and a store or modify of a volatile database, are done on the loop when
    the worker has nothing queued (no round trip to it: a migration makes three); when
    it has, they wait their turn behind what was queued before them."""
    async def go():
        await vol.create("g_lock.tdb", 0x1234)
        jobs = vol._finished
        await vol.store("g_lock.tdb", b"k", Record(1, 2, 0, b"v"))
        got = await vol.modify("g_lock.tdb", b"k", lambda r: r.replace(rsn=r.rsn + 1))
        assert got.rsn == 2
        assert (await vol.read("g_lock.tdb", b"k")).value == b"v"
        assert vol._finished == jobs  # none of the three went through the worker
        # a job queued and not finished: a read goes to the worker, behind it
        gate = threading.Event()
        fut = vol._submit(gate.wait, 5)
        t = asyncio.ensure_future(vol.read("g_lock.tdb", b"k"))
        await asyncio.sleep(0.05)
        assert not t.done()
        gate.set()
        assert (await t).value == b"v" and fut.result()
        assert vol._finished == jobs + 2
    run(go())
