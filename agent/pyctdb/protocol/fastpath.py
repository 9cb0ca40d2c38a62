"""The client fast path's shared layout (docs/client.md): what the agent and the client
library agree on when a client writes the node's volatile LMDB environment itself.

- :func:`open_env`: the options both open the LMDB environments with;
- the gate (``GATE`` in ``__gate__``/``gate`` and at ``GATE_AT`` in ``agent.wait``):
  whether clients may write, and how many API leases are held (:func:`lease_key`);
- ``agent.wait``'s flag (``WAIT_FILE``, ``WAIT_SIZE``, ``WAIT_SINCE``) and the
  client's side of it, :func:`defer`.

The agent's side is :mod:`pyctdb.server.db.gate`; see there for the whole contract.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time

import lmdb

GATE_DB = b"__gate__"
GATE_KEY = b"gate"
GATE = struct.Struct("=dI")   # open_until, leases (native: the client reads it as f64, u32)
GATE_UNTIL = struct.Struct("=d")  # open_until alone (the agent moves it on: gate.extend)
TTL = 3.0
WAIT_FILE = "agent.wait"  # the agent waits for the writer lock (WaitFlag)
WAIT_SINCE = struct.Struct("=d")  # at offset 8: since when
GATE_AT = 16  # the gate's offset in agent.wait (8-aligned)
WAIT_SIZE = 32
DEFER_MAX = 0.005  # the longest a client defers to a waiting agent, each fetch-lock


def lease_key(name: str, key: bytes) -> bytes:
    """The gate's key marking record ``key`` of ``name`` leased (a digest: a name and a
    key together may be longer than LMDB's key limit)."""
    return b"lease:" + hashlib.blake2b(name.encode() + b"\0" + key, digest_size=20).digest()


MAP_SIZE = 1 << 30  # 1 GiB of address space (the file grows as needed)
MAX_DBS = 4096
MAX_READERS = 1024  # the agent and its clients (each reading thread takes a slot)


def open_env(path, persistent, create=True, max_dbs=MAX_DBS):
    """The LMDB environment at ``path`` with the options the agent and its clients share
    (the client library opens the volatile one: docs/client.md). Volatile: a writable
    memory map (writemap; about 2.5 times the write transactions per second) and no
    fsync; persistent: fsync'd at every commit. ``max_dbs``: how many sub-databases this
    process may open (a limit of this handle only, not of the files; LMDB copies a table
    that long at each write transaction's begin: 4096 cost a client's fetch-lock ~1 us)."""
    return lmdb.open(path, max_dbs=max_dbs, map_size=MAP_SIZE, max_readers=MAX_READERS,
                     sync=persistent, metasync=persistent, writemap=not persistent,
                     subdir=True, lock=True, create=create)


def defer(w, _yield=os.sched_yield, _sleep=time.sleep, _now=time.monotonic):
    """The client's side: the agent waits for the writer lock (``w[0]``, ``w`` the mapped
    ``agent.wait``): let it have the lock first — return when it has it (the flag is
    lowered), after ``DEFER_MAX`` seconds, or at once if the flag is stale."""
    now = _now()
    if now - WAIT_SINCE.unpack_from(w, 8)[0] > TTL:
        return
    end = now + DEFER_MAX
    n = 0
    while w[0]:
        if n < 8:
            _yield()   # its thread is woken already (this one released the lock)
        else:
            _sleep(50e-6)
            if _now() > end:
                return
        n += 1
