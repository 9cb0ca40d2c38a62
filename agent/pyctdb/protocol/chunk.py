"""Binary record chunks: how a recovery pulls and pushes records (docs/protocol.md).

A chunk carries many records in one blob (base64 in the control's JSON), instead of one
JSON array per record: decoding and encoding is then a struct per record, and the
receiver stores the record data as it came (it is LMDB's stored form). Layout, integers
big-endian::

    magic "PCRC" (4) | version u16 (1) | reserved u16 (0) | count u32
    count times:  key length u16 | data length u32 | key | data
    CRC-32 (u32) of every byte before it

``data`` is the record as stored (:mod:`pyctdb.rules.records`): the 16-byte header
(RSN u64, DMASTER u32, flags u32) followed by the value. :func:`decode` checks
everything — magic, version, lengths against the limits, known flags, a deleted record
without a value, the record count, no bytes left over, the checksum — and raises
:class:`ChunkError` saying what is wrong: a damaged chunk is refused whole, never stored
in part.
"""

from __future__ import annotations

import binascii
import struct
import zlib

from pyctdb.errors import PyctdbError
from pyctdb.rules import records

MAGIC = b"PCRC"
VERSION = 1
_HEAD = struct.Struct("!4sHHI")
_REC = struct.Struct("!HI")
_CRC = struct.Struct("!I")
_MAX_DATA = records.HEADER_SIZE + records.MAX_VALUE


class ChunkError(PyctdbError, ValueError):
    """A chunk that cannot be accepted; the message says why (a ValueError too)."""

    code = "EIO"


def encode(items) -> bytes:
    """One chunk of ``items``: [(key, data)], data = the stored record."""
    pack = _REC.pack
    body = [pack(len(k), len(d)) + k + d for k, d in items]
    blob = _HEAD.pack(MAGIC, VERSION, 0, len(body)) + b"".join(body)
    return blob + _CRC.pack(zlib.crc32(blob))


def to_wire(blob: bytes, local: bool):
    """A chunk as a control carries it (see :func:`decode_wire`)."""
    return blob if local else binascii.b2a_base64(blob, newline=False).decode("ascii")


def split(items, limit):
    """``items`` ([(key, data)]) in slices of at most ``limit`` bytes each (a record
    larger than that alone; at least one slice, maybe empty): a list of lists."""
    out, cur, size = [], [], 0
    for item in items:
        n = len(item[0]) + len(item[1]) + 6
        if cur and size + n > limit:
            out.append(cur)
            cur, size = [], 0
        cur.append(item)
        size += n
    out.append(cur)
    return out


def decode(blob) -> list:
    """The records of chunk ``blob``: [(key, data)]. ChunkError if it is damaged."""
    blob = bytes(blob)
    n = len(blob)
    if n < _HEAD.size + _CRC.size:
        raise ChunkError(f"chunk of {n} bytes is shorter than its header and checksum")
    magic, version, reserved, count = _HEAD.unpack_from(blob)
    if magic != MAGIC:
        raise ChunkError(f"bad chunk magic {magic!r} (expected {MAGIC!r})")
    if version != VERSION:
        raise ChunkError(f"unsupported chunk version {version} (this node reads {VERSION})")
    if reserved:
        raise ChunkError(f"chunk reserved field is {reserved:#x}, must be 0")
    end = n - _CRC.size
    (crc,) = _CRC.unpack_from(blob, end)
    if zlib.crc32(memoryview(blob)[:end]) != crc:
        raise ChunkError("chunk checksum mismatch (damaged in transit)")
    out = []
    append = out.append
    unpack_rec, unpack_hdr = _REC.unpack_from, records.HEADER.unpack_from
    known, deleted, hsize, max_key = records.KNOWN_FLAGS, records.REC_DELETED, records.HEADER_SIZE, records.MAX_KEY
    pos = _HEAD.size
    for i in range(count):
        if pos + 6 > end:
            raise ChunkError(f"chunk truncated at record {i} of {count}")
        klen, dlen = unpack_rec(blob, pos)
        pos += 6
        if not 0 < klen <= max_key:
            raise ChunkError(f"record {i}: key length {klen} out of range")
        if not hsize <= dlen <= _MAX_DATA:
            raise ChunkError(f"record {i}: data length {dlen} out of range")
        dpos = pos + klen
        if dpos + dlen > end:
            raise ChunkError(f"chunk truncated at record {i} of {count}")
        flags = unpack_hdr(blob, dpos)[2]
        if flags & ~known:
            raise ChunkError(f"record {i}: unknown flags 0x{flags:08x}")
        if flags & deleted and dlen > hsize:
            raise ChunkError(f"record {i}: deleted record has a value")
        append((blob[pos:dpos], blob[dpos:dpos + dlen]))
        pos = dpos + dlen
    if pos != end:
        raise ChunkError(f"{end - pos} bytes after the last of {count} records")
    return out


def decode_wire(value) -> list:
    """The records of a chunk as a control carries it: base64 text, or the bytes
    themselves when the node called its own handler (no frame, no base64)."""
    if isinstance(value, bytes):
        return decode(value)
    if not isinstance(value, str):
        raise ChunkError("chunk must be a base64 string")
    try:
        blob = binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise ChunkError(f"chunk is not valid base64: {exc}") from None
    return decode(blob)
