"""The backup file of one clustered database (``pyctdb backupdb`` / ``restoredb``).

Format, version 1 (all integers big-endian; documented in docs/databases.md):

    magic      8 bytes  b"PYCTDBBK"
    version    u32      1
    hlen       u32      length of the header
    header     hlen bytes of JSON: {"db_name", "db_id", "persistent", "seqnum",
                                    "records", "time"}
    records    "records" times: klen u32, vlen u32, rsn u64, dmaster u32, flags u32,
               key (klen bytes), value (vlen bytes)
    trailer    8 bytes  b"PYCTDBND", then crc32 u32 of every byte before the trailer

A file is refused, with a message saying why, if anything does not match: magic,
version, header, record count, limits, trailer, checksum. Nothing is restored from it.
"""

from __future__ import annotations

import json
import os
import struct
import time
import zlib
from dataclasses import dataclass

from pyctdb.errors import PyctdbError
from pyctdb.rules import records as recs

MAGIC = b"PYCTDBBK"
END = b"PYCTDBND"
VERSION = 1
_HEAD = struct.Struct(">II")
_REC = struct.Struct(">IIQII")


class BackupError(PyctdbError, ValueError):
    """A backup file that cannot be read or is damaged; the message says why (a
    ValueError too)."""

    code = "EINVAL"


@dataclass
class Backup:
    db_name: str
    db_id: int
    persistent: bool
    seqnum: int
    time: float
    records: list  # [(key, Record)]


def write(path, name, persistent, seqnum, records) -> int:
    """Write ``records`` ([(key, Record)]) to ``path`` (atomically: a temporary file
    renamed). Returns the number of records."""
    header = json.dumps({"db_name": name, "db_id": recs.db_id(name),
                         "persistent": bool(persistent), "seqnum": int(seqnum),
                         "records": len(records), "time": time.time()}).encode()
    tmp = f"{path}.tmp.{os.getpid()}"
    crc = 0
    with open(tmp, "wb") as f:
        def put(b):
            nonlocal crc
            crc = zlib.crc32(b, crc)
            f.write(b)
        put(MAGIC + _HEAD.pack(VERSION, len(header)) + header)
        for k, r in records:
            put(_REC.pack(len(k), len(r.value), r.rsn, r.dmaster, r.flags) + k + r.value)
        f.write(END + struct.pack(">I", crc))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(records)


def read(path) -> Backup:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise BackupError(f"cannot read backup file {path}: {exc.strerror}") from None
    where = f"backup file {path}"
    if len(data) < len(MAGIC) + _HEAD.size or data[:len(MAGIC)] != MAGIC:
        raise BackupError(f"{where} is not a pyctdb backup (bad magic)")
    version, hlen = _HEAD.unpack_from(data, len(MAGIC))
    if version != VERSION:
        raise BackupError(f"{where} has format version {version}; this pyctdb reads "
                          f"version {VERSION}")
    if len(data) < len(END) + 4 or data[-len(END) - 4:-4] != END:
        raise BackupError(f"{where} is truncated (no end marker)")
    body = data[:-len(END) - 4]
    (crc,) = struct.unpack(">I", data[-4:])
    if zlib.crc32(body) != crc:
        raise BackupError(f"{where} is damaged (checksum mismatch)")
    pos = len(MAGIC) + _HEAD.size
    try:
        h = json.loads(body[pos:pos + hlen])
        name, persistent, seqnum, count = (h["db_name"], bool(h["persistent"]),
                                           int(h["seqnum"]), int(h["records"]))
        recs.check_name(name)
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{where} has a bad header: {exc}") from None
    pos += hlen
    records = []
    try:
        for _ in range(count):
            klen, vlen, rsn, dmaster, flags = _REC.unpack_from(body, pos)
            pos += _REC.size
            k, v = body[pos:pos + klen], body[pos + klen:pos + klen + vlen]
            if len(k) != klen or len(v) != vlen:
                raise BackupError("record runs past the end")
            pos += klen + vlen
            recs.check_key(k)
            recs.check_value(v)
            if flags & ~recs.KNOWN_FLAGS:
                raise BackupError(f"record has unknown flags 0x{flags:08x}")
            records.append((k, recs.Record(rsn, dmaster, flags, v)))
    except (struct.error, ValueError) as exc:
        raise BackupError(f"{where} is damaged: record {len(records) + 1} of {count}: "
                          f"{exc}") from None
    if pos != len(body):
        raise BackupError(f"{where} is damaged: {len(body) - pos} bytes after the "
                          f"{count} records")
    return Backup(name, int(h.get("db_id", recs.db_id(name))), persistent, seqnum,
                  float(h.get("time", 0)), records)
