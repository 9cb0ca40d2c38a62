"""Records on the wire between nodes (db_pull / db_push / db_give, docs/protocol.md) and
the cooperative steps that encode and decode large databases without holding the event
loop."""

from __future__ import annotations

import asyncio
import base64
import logging

from pyctdb.errors import RecordMoved
from pyctdb.protocol import chunk as chunk_codec
from pyctdb.rules import records

log = logging.getLogger(__name__)

PULL_BYTES = 1 << 20      # per db_pull / db_push frame (frames are limited to 4 MiB)
CHUNK_BYTES = 2 << 20     # records per binary chunk (db_pull/db_push): 2.7 MiB of base64


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def unb64(s) -> bytes:
    if not isinstance(s, str):
        raise ValueError("expected a base64 string")
    return base64.b64decode(s.encode(), validate=True)


def rec_to_wire(key, rec):
    return [b64(key), rec.rsn, rec.dmaster, rec.flags, b64(rec.value)]


def rec_from_wire(w):
    key, rsn, dmaster, flags, value = w
    return unb64(key), records.Record(int(rsn), int(dmaster), int(flags), unb64(value))


def wire_chunks(items, limit=PULL_BYTES):
    """[(key, Record)] in frames of about ``limit`` bytes: (first, last, [wire record]);
    at least one (empty) frame."""
    i, first = 0, True
    while True:
        chunk, size = [], 0
        while i < len(items) and (not chunk or size < limit):
            k, r = items[i]
            chunk.append(rec_to_wire(k, r))
            size += len(k) + len(r.value) + 64
            i += 1
        yield first, i >= len(items), chunk
        if i >= len(items):
            return
        first = False


# A large database (a recovery, a restore) is decoded, merged and encoded in pieces of
# about this many records, with a turn of the event loop between two pieces: keepalives
# and controls keep flowing while a 100k-record database moves (one piece is a few ms;
# the whole of it is seconds of CPU, more than KeepaliveInterval x KeepaliveLimit).
STEP_RECORDS = 2000


async def cooperative(gen):
    """Run generator ``gen`` to its end, giving the event loop a turn at each of its
    yields; returns its return value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
        await asyncio.sleep(0)


async def wire_frames(items, limit=PULL_BYTES):
    """:func:`wire_chunks` of ``items`` as a list, encoded once for every receiver, with
    a turn of the event loop after each frame."""
    out = []
    for c in wire_chunks(items, limit):
        out.append(c)
        await asyncio.sleep(0)
    return out


async def chunk_frames(items, limit=CHUNK_BYTES):
    """[(key, stored record)] as binary chunks (:mod:`.chunk`), encoded once for every
    receiver: [(first, last, chunk, its base64)], with a turn of the event loop after
    each."""
    parts = chunk_codec.split(items, limit)
    out = []
    for i, part in enumerate(parts):
        blob = chunk_codec.encode(part)
        out.append((i == 0, i == len(parts) - 1, blob, chunk_codec.to_wire(blob, False)))
        await asyncio.sleep(0)
    return out


async def from_wire(wires, out):
    """Append the records of ``wires`` to ``out``, in pieces (see STEP_RECORDS)."""
    for i in range(0, len(wires), STEP_RECORDS):
        if i:
            await asyncio.sleep(0)
        out.extend(rec_from_wire(w) for w in wires[i:i + STEP_RECORDS])
    return out


def handover(to, pnn, must_hold=False):
    """For :meth:`Store.modify`: the record given to node ``to`` (RSN + 1). Read in the
    write transaction: a client of this node may have stored it since it was read on
    the loop. ``must_hold``: refuse unless node ``pnn`` (this one) is its DMASTER."""
    def fn(rec):
        if must_hold and (rec is None or rec.dmaster != pnn):
            raise RecordMoved(f"node {pnn} is not the dmaster")
        if rec is None:
            rec = records.Record(0, pnn, records.REC_DELETED, b"")
        return rec.replace(rsn=rec.rsn + 1, dmaster=to,
                           flags=rec.flags | records.REC_MIGRATED_WITH_DATA)
    return fn


async def stored_records(msg, name, src):
    """The records of a db_pull reply or db_push request, [(key, stored record)]: its
    binary ``chunk``, or the JSON ``records`` of an agent from before the chunks. A
    damaged chunk is logged and raises RuntimeError: nothing of it may be stored."""
    try:
        if "chunk" in msg:
            return chunk_codec.decode_wire(msg["chunk"])
        return [(k, r.pack()) for k, r in await from_wire(msg["records"], [])]
    except (chunk_codec.ChunkError, ValueError, TypeError, KeyError) as exc:
        log.error("recovery: damaged records of %s from node %d rejected (%s): the "
                  "recovery fails, no copy is changed", name, src, exc)
        raise RuntimeError(str(exc)) from None
