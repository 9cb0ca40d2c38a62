"""Binary record chunks (pyctdb.db.chunk): the recovery's pull/push format, its strict
decoding, and a node refusing a damaged push without storing any of it."""

import asyncio
import base64
import logging
import random
import struct
import types
import zlib

import pytest

from pyctdb.protocol import chunk as C
from pyctdb.rules import records as L


def recs(n, value=b"v" * 20):
    return [(b"key-%06d" % i, L.Record(i + 1, i % 3, 0, value).pack()) for i in range(n)]


def wire(items):
    return C.to_wire(C.encode(items), local=False)


def reseal(body: bytes) -> bytes:
    """``body`` (a chunk without its checksum) with a valid checksum."""
    return body + struct.pack("!I", zlib.crc32(body))


def test_round_trip_and_split():
    items = recs(1000) + [(b"dead", L.Record(7, 1, L.REC_DELETED, b"").pack())]
    assert C.decode(C.encode(items)) == items
    assert C.decode_wire(wire(items)) == items
    assert C.decode_wire(C.to_wire(C.encode(items), local=True)) == items  # no base64
    assert C.decode(C.encode([])) == []
    parts = C.split(items, 4096)
    assert [x for p in parts for x in p] == items
    assert all(sum(len(k) + len(d) + 6 for k, d in p) <= 4096 for p in parts)
    assert C.split([], 10) == [[]]
    big = [(b"k", L.Record(1, 0, 0, b"x" * 5000).pack())]  # larger than the limit: alone
    assert C.split(big + big, 100) == [big, big]


def damaged():
    good = C.encode(recs(3))
    body = good[:-4]
    head = struct.pack("!4sHHI", b"PCRC", 1, 0, 3)
    rec = body[12:]
    yield "shorter than its header", good[:10]
    yield "bad chunk magic", b"XXXX" + good[4:]
    yield "unsupported chunk version 2", reseal(struct.pack("!4sHHI", b"PCRC", 2, 0, 3) + rec)
    yield "reserved field", reseal(struct.pack("!4sHHI", b"PCRC", 1, 9, 3) + rec)
    yield "checksum mismatch", body[:20] + bytes([body[20] ^ 1]) + body[21:] + good[-4:]
    yield "truncated at record 2", reseal(body[:-10])
    yield "truncated at record 3", reseal(struct.pack("!4sHHI", b"PCRC", 1, 0, 4) + rec)
    yield "bytes after the last", reseal(body + b"xx")
    yield "key length 0", reseal(head + struct.pack("!HI", 0, 16) + bytes(16) + rec)
    yield "key length 600", reseal(head + struct.pack("!HI", 600, 16) + b"k" * 600
                                   + bytes(16) + rec)
    yield "data length 3", reseal(head + struct.pack("!HI", 1, 3) + b"k" + b"abc" + rec)
    yield "unknown flags", reseal(head + struct.pack("!HI", 1, 16) + b"k"
                                  + L.HEADER.pack(1, 0, 0x80) + rec)
    yield "deleted record has a value", reseal(
        head + struct.pack("!HI", 1, 17) + b"k" + L.HEADER.pack(1, 0, L.REC_DELETED) + b"x"
        + rec)


@pytest.mark.parametrize("why,blob", list(damaged()), ids=[w for w, _ in damaged()])
def test_damaged_chunks_are_refused_with_the_reason(why, blob):
    with pytest.raises(C.ChunkError, match=why):
        C.decode(blob)


def test_base64_and_type_errors():
    with pytest.raises(C.ChunkError, match="not valid base64"):
        C.decode_wire("@@@@")
    with pytest.raises(C.ChunkError, match="base64 string"):
        C.decode_wire(["x"])


def test_random_garbage_only_ever_raises_chunkerror():
    rng = random.Random(4)
    good = C.encode(recs(20))
    for _ in range(2000):
        b = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        if rng.random() < 0.5:  # keep the checksum valid: the structure checks must hold
            b = bytearray(reseal(bytes(b[:-4])))
        try:
            out = C.decode(bytes(b))
        except C.ChunkError:
            continue
        for k, d in out:  # whatever passed is storable as a record
            L.check_key(k)
            L.unpack(d)


def test_stored_merge_follows_better_on_random_copies():
    rng = random.Random(7)
    for _ in range(300):
        copies = []
        for pnn in rng.sample(range(5), rng.randint(1, 4)):
            copies.append((pnn, [(k, L.Record(rng.randint(0, 3), rng.randint(0, 4),
                                              rng.choice([0, L.REC_DELETED]), b""))
                                 for k in rng.sample([b"a", b"b", b"c"], rng.randint(0, 3))]))
        want = {}
        for pnn, rs in copies:  # the reference: pairwise with L.better
            for k, r in rs:
                if k not in want or L.better(r, pnn, want[k][1], want[k][0]):
                    want[k] = (pnn, r)
        got = L.merge_volatile(copies, 9)
        assert {k: (r.rsn, r.flags & L.REC_DELETED) for k, r in got.items()} == \
            {k: (r.rsn, r.flags) for k, (_p, r) in want.items()}
        assert all(r.dmaster == 9 and r.flags & L.REC_MIGRATED_WITH_DATA
                   for r in got.values())


# -- a node refusing a damaged recovery push -------------------------------------------------
def make_databases(tmp_path):
    from pyctdb.server.db.databases import Databases
    cluster = types.SimpleNamespace(pnn=1, control_handlers={}, recovery_hooks=[],
                                    recovered_hooks=[], cycle_hooks=[], tunables={},
                                    controls=types.SimpleNamespace(control_now={}))
    config = types.SimpleNamespace(volatile_db_dir=str(tmp_path / "v"),
                                   persistent_db_dir=str(tmp_path / "p"), tdb_mutexes=True)
    dbs = Databases(cluster, config)
    dbs.open()
    return dbs


def test_a_damaged_push_chunk_is_rejected_and_nothing_is_stored(tmp_path, caplog):
    dbs = make_databases(tmp_path)
    name = "r.tdb"
    push = dbs.cluster.control_handlers["db_push"]

    def args(chunk, first=False, last=False):
        return {"db": name, "db_id": L.db_id(name), "persistent": False, "chunk": chunk,
                "first": first, "last": last, "seqnum": None}

    async def go():
        old = recs(5, b"old")
        await push(0, args(wire(old), first=True, last=True))
        st = dbs.stores[False]
        assert [k for k, _ in st.items(name)] == [k for k, _ in old]
        new = recs(50, b"new")
        bad = bytearray(C.encode(new[10:20]))
        bad[40] ^= 0xFF
        await push(0, args(wire(new[:10]), first=True))
        with caplog.at_level(logging.ERROR, logger="pyctdb"):
            with pytest.raises(RuntimeError, match="rejected: chunk checksum mismatch"):
                await push(0, args(base64.b64encode(bytes(bad)).decode()))
        assert "damaged records of r.tdb from node 0 rejected" in caplog.text
        # the rest of that push is refused as well: no partial copy is ever stored
        with pytest.raises(RuntimeError, match="without its first one"):
            await push(0, args(wire(new[20:]), last=True))
        assert [r.value for _, r in st.items(name)] == [b"old"] * 5
        # the next recovery's push (from its first chunk) goes through
        await push(0, args(wire(new[:25]), first=True))
        assert await push(0, args(wire(new[25:]), last=True)) == {"records": 50}
        assert [r.value for _, r in st.items(name)] == [b"new"] * 50
    try:
        asyncio.run(go())
    finally:
        dbs.close()


def test_pull_answers_a_chunk_that_decodes_to_the_stored_records(tmp_path):
    dbs = make_databases(tmp_path)
    pull = dbs.cluster.control_handlers["db_pull"]

    async def go():
        st = dbs.stores[True]
        await dbs.ensure("p.tdb", True)
        items = [(k, L.unpack(d)) for k, d in recs(30)]
        await st.apply("p.tdb", items, seqnum=3)
        res = await pull(0, {"db": "p.tdb", "after": None, "chunk": True})
        assert res["seqnum"] == 3 and not res["more"]
        assert [(k, L.unpack(d)) for k, d in C.decode_wire(res["chunk"])] == items
        res = await pull(0, {"db": "p.tdb", "after": None, "chunk": True,
                             "dmaster_only": True})  # node 1's live records only
        assert [k for k, _ in C.decode_wire(res["chunk"])] == \
            [k for k, r in items if r.dmaster == 1]
        legacy = await pull(0, {"db": "p.tdb", "after": None})
        assert len(legacy["records"]) == 30 and "chunk" not in legacy
    try:
        asyncio.run(go())
    finally:
        dbs.close()
