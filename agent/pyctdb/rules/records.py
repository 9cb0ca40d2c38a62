"""Pure rules of the clustered databases: no I/O, no network; unit-tested.

- the record header every stored value carries (RSN, DMASTER, flags; big-endian),
- CTDB's hash (Bob Jenkins' lookup3 ``hashlittle``, as ``tdb_jenkins_hash``) for the
  database id of a name and the location master (LMASTER) of a key,
- the recovery merge: volatile databases record by record (highest RSN wins),
  persistent databases wholesale (the copy with the highest sequence number wins).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from pyctdb.errors import PyctdbError

HEADER = struct.Struct(">QII")  # rsn u64, dmaster u32, flags u32
HEADER_SIZE = HEADER.size  # 16

#: record flags (ours: DELETED; the others have CTDB's values)
REC_DELETED = 0x00000001
REC_MIGRATED_WITH_DATA = 0x00010000
KNOWN_FLAGS = REC_DELETED | REC_MIGRATED_WITH_DATA

#: a DMASTER that is nobody (CTDB's CTDB_UNKNOWN_PNN)
UNKNOWN_PNN = 0xFFFFFFFF

MAX_KEY = 511  # bytes: LMDB's key size limit
MAX_VALUE = 512 * 1024  # bytes (base64 in an API request line of at most 1 MiB)
MAX_NAME = 255
_NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]+$")


class CorruptRecord(PyctdbError, ValueError):
    """A stored record whose header cannot be valid (a ValueError too, as before)."""

    code = "EIO"


@dataclass(frozen=True)
class Record:
    rsn: int
    dmaster: int
    flags: int
    value: bytes

    @property
    def deleted(self) -> bool:
        return bool(self.flags & REC_DELETED)

    def pack(self) -> bytes:
        return HEADER.pack(self.rsn, self.dmaster, self.flags) + self.value

    def replace(self, **kw) -> "Record":
        d = dict(rsn=self.rsn, dmaster=self.dmaster, flags=self.flags, value=self.value)
        d.update(kw)
        return Record(**d)


def unpack(raw: bytes) -> Record:
    """The record stored as ``raw``; CorruptRecord if it cannot be one of ours."""
    if len(raw) < HEADER_SIZE:
        raise CorruptRecord(f"record of {len(raw)} bytes is shorter than its header")
    rsn, dmaster, flags = HEADER.unpack_from(raw)
    if flags & ~KNOWN_FLAGS:
        raise CorruptRecord(f"record has unknown flags 0x{flags:08x}")
    value = bytes(raw[HEADER_SIZE:])
    if flags & REC_DELETED and value:
        raise CorruptRecord("deleted record has a value")
    return Record(rsn, dmaster, flags, value)


# -- CTDB's hash ---------------------------------------------------------------------------
def _rot(x, k):
    return ((x << k) | (x >> (32 - k))) & 0xFFFFFFFF


def jenkins_hash(data: bytes, initval: int = 0) -> int:
    """lookup3's ``hashlittle`` (byte-wise, as on any byte order): tdb_jenkins_hash."""
    M = 0xFFFFFFFF
    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & M
    i = 0
    while n > 12:
        a = (a + int.from_bytes(data[i:i + 4], "little")) & M
        b = (b + int.from_bytes(data[i + 4:i + 8], "little")) & M
        c = (c + int.from_bytes(data[i + 8:i + 12], "little")) & M
        # mix
        a = (a - c) & M; a ^= _rot(c, 4); c = (c + b) & M
        b = (b - a) & M; b ^= _rot(a, 6); a = (a + c) & M
        c = (c - b) & M; c ^= _rot(b, 8); b = (b + a) & M
        a = (a - c) & M; a ^= _rot(c, 16); c = (c + b) & M
        b = (b - a) & M; b ^= _rot(a, 19); a = (a + c) & M
        c = (c - b) & M; c ^= _rot(b, 4); b = (b + a) & M
        i += 12
        n -= 12
    if n == 0:
        return c
    tail = data[i:] + bytes(12 - n)
    a = (a + int.from_bytes(tail[0:4], "little")) & M
    b = (b + int.from_bytes(tail[4:8], "little")) & M
    c = (c + int.from_bytes(tail[8:12], "little")) & M
    # final
    c ^= b; c = (c - _rot(b, 14)) & M
    a ^= c; a = (a - _rot(c, 11)) & M
    b ^= a; b = (b - _rot(a, 25)) & M
    c ^= b; c = (c - _rot(b, 16)) & M
    a ^= c; a = (a - _rot(c, 4)) & M
    b ^= a; b = (b - _rot(a, 14)) & M
    c ^= b; c = (c - _rot(b, 24)) & M
    return c


def db_id(name: str) -> int:
    """A database's id, as CTDB: the hash of its name with the terminating NUL."""
    return jenkins_hash(name.encode() + b"\0")


def lmaster(key: bytes, vnnmap) -> int:
    """The location master of ``key``: its hash over the vnn map (CTDB's ctdb_lmaster)."""
    if not vnnmap:
        raise ValueError("empty vnn map: no node can be lmaster")
    return vnnmap[jenkins_hash(key) % len(vnnmap)]


def check_name(name) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError("database name must be a non-empty string")
    if len(name) > MAX_NAME or not _NAME_RE.match(name):
        raise ValueError(f"invalid database name {name!r}: use at most {MAX_NAME} of "
                         "A-Z a-z 0-9 _ . + -")
    if name.startswith("__"):
        raise ValueError(f"database names starting with '__' are reserved: {name!r}")
    return name


def check_key(key: bytes) -> bytes:
    if not key:
        raise ValueError("key must not be empty")
    if len(key) > MAX_KEY:
        raise ValueError(f"key of {len(key)} bytes is larger than the limit "
                         f"({MAX_KEY} bytes)")
    return key


def check_value(value: bytes) -> bytes:
    if len(value) > MAX_VALUE:
        raise ValueError(f"value of {len(value)} bytes is larger than the limit "
                         f"({MAX_VALUE} bytes)")
    return value


# -- the recovery merge --------------------------------------------------------------------
def better(new: Record, new_from: int, old: Record, old_from: int) -> bool:
    """Whether the copy ``new`` (pulled from node ``new_from``) replaces ``old``.

    Highest RSN wins. On equal RSN the copy held by its own DMASTER (the authoritative
    one: ``dmaster == the node it came from``) wins; if neither or both are, the copy
    from the lower PNN, so the result does not depend on the order of the pulls.
    (CTDB keeps, on equal RSN, the copy whose DMASTER is the recovery master.)"""
    if new.rsn != old.rsn:
        return new.rsn > old.rsn
    new_auth = new.dmaster == new_from
    old_auth = old.dmaster == old_from
    if new_auth != old_auth:
        return new_auth
    return new_from < old_from


def merge_volatile(copies, new_dmaster: int) -> dict:
    """Merge the copies of a volatile database pulled from the members.

    ``copies``: iterable of ``(pnn, records)``, ``records`` a ``{key: Record}`` or a list
    of ``(key, Record)``. Returns ``{key: Record}`` with, per key, the winning copy (see
    :func:`better`), its DMASTER set to ``new_dmaster`` (the leader: every node gets the
    merged database, the leader is the data master of every record until it migrates)
    and MIGRATED_WITH_DATA set. Deleted records are kept (as deleted), so an older copy
    on a node that was away cannot bring the key back."""
    out = {}
    for _ in merge_volatile_steps(copies, new_dmaster, out):
        pass
    return out


def merge_volatile_steps(copies, new_dmaster: int, out: dict, step: int = 5000):
    """:func:`merge_volatile` as a generator filling ``out``: it yields after about every
    ``step`` records, so that a caller on the event loop can give the loop a turn
    between pieces (a merge of 100k-record copies takes a second of CPU)."""
    stored = {}
    yield from merge_stored_steps(
        [(pnn, [(k, r.pack()) for k, r in (recs.items() if isinstance(recs, dict) else recs)])
         for pnn, recs in copies], new_dmaster, stored, step)
    out.update((k, unpack(d)) for k, d in stored.items())


def merge_stored_steps(copies, new_dmaster: int, out: dict, step: int = 5000):
    """The merge of :func:`merge_volatile_steps` on records as stored (header + value;
    what a recovery pulls): ``copies`` is ``[(pnn, [(key, data)])]``, ``out`` gets
    ``{key: data}``. :func:`better` is decided on the headers' bytes: a big-endian RSN
    compares as its bytes do, and two identical copies give the same result whichever
    wins."""
    best = {}
    n = 0
    for pnn, records in copies:
        me = pnn.to_bytes(4, "big")
        for key, data in records:
            cur = best.get(key)
            n += 1
            if cur is None:
                best[key] = (pnn, me, data)
            elif cur[2] != data:
                old = cur[2]
                if data[:8] != old[:8]:
                    win = data[:8] > old[:8]
                else:
                    new_auth, old_auth = data[8:12] == me, old[8:12] == cur[1]
                    win = new_auth if new_auth != old_auth else pnn < cur[0]
                if win:
                    best[key] = (pnn, me, data)
            if n % step == 0:
                yield
    pack, unpack_from = HEADER.pack, HEADER.unpack_from
    for key, (_pnn, _me, data) in best.items():
        rsn, _dm, flags = unpack_from(data)
        out[key] = pack(rsn, new_dmaster, flags | REC_MIGRATED_WITH_DATA) + data[HEADER_SIZE:]
        n += 1
        if n % step == 0:
            yield


def pick_persistent(seqnums) -> int | None:
    """The node whose copy of a persistent database wins: the highest database sequence
    number; on a tie the lowest PNN. ``seqnums``: {pnn: seqnum}. None if empty."""
    if not seqnums:
        return None
    return min(seqnums, key=lambda p: (-seqnums[p], p))
