"""The gate of a node's volatile LMDB environment: whether clients of this node may write
its records directly (the client library's fetch-lock fast path, docs/client.md).

CTDB's client takes a record's tdb chain lock itself, checks that the record's header
names this node as DMASTER and only asks the daemon to migrate the record otherwise.
pyctdb's client does the same with LMDB: it opens the node's volatile environment, and a
fetch-lock is one LMDB write transaction (the environment's writer lock is the record
lock: process-shared, and released by the kernel if the client dies). Inside it, the
client reads the gate and writes only if the gate is open, the record's DMASTER is this
node, and no API lease holds the record.

The gate is ``GATE``: ``open_until`` (CLOCK_MONOTONIC seconds, system wide; 0: closed)
and ``leases`` (how many API fetch-locks are held on this node; when not 0 the client also
looks for ``lease_key(db, key)`` in ``__gate__``). The agent renews it every ``RENEW``
seconds while it serves database requests (active, joined, not frozen), and closes it
when it stops serving; a freeze waits until the closing is committed. As LMDB write
transactions are serialised, a client's transaction either commits before the freeze or
sees the gate closed — so no client writes during a recovery.

Fencing (docs/architecture.md, "Address fencing"): the gate's time never passes
:attr:`Gate.limit` — the moment the peers would drop this node as silent, or its lease's
end — so a node that is paused or cut off has closed its gate before another node can
take its records; a killed agent's guard closes it at once (it writes the time 0 in
``agent.wait``). Between renewals the event loop moves the open gate's time on with every
keepalive (:meth:`Gate.extend`, no writer lock needed: a client may hold a record longer
than the bound), and a client checks the gate again right before its commit: a record
held while its node was fenced is not stored (EAGAIN).

The gate is kept twice, written in the same write transaction: in the memory-mapped file
``agent.wait`` (bytes ``GATE_AT``.., below), which a fetch-lock reads (two loads from the
map instead of an LMDB lookup: it is the client's hot path), and as the record ``gate``
of ``__gate__``, which a read (``fetch``, a read transaction: the record is part of its
snapshot) and clients from before the map read. The map is no LMDB page, so its
ordering is the writer lock's: the agent writes it only while it holds the lock (in
:meth:`Gate._write`, inside the write transaction, in the store's worker) and a client
reads it only once it holds the lock (after beginning its write transaction); the
mutex orders the two. A client that cannot map it (an agent from before, or without the
file) has no fast path. A new agent zeroes the file (the gate closed); one that cannot
make it (logged) leaves clients that still map an old one that old gate until it
expires (``TTL`` after the old agent's last renewal).

Every gate write runs in the store's worker thread (it waits there for the writer lock
while a client holds a record; the event loop never does), and the set of leases is only
touched there.

The writer lock is a pthread mutex, and not a fair one: a client in a tight fetch-lock
loop takes it again right after its commit, before the woken agent thread runs, and the
agent's writes (migrations, the gate, a freeze) starve. So the agent says when it waits:
:class:`WaitFlag`, the file ``agent.wait`` in the environment's directory (32 bytes,
memory-mapped by the agent and its clients): byte 0 is 1 while the store's worker waits
for the writer lock (set before it begins a write transaction, cleared once it has it),
bytes 8-16 the CLOCK_MONOTONIC time it began waiting (f64, native), bytes 16-28 the
gate (``GATE``, above; 28-32 unused). The flag bytes are written without the lock (a
client reads them before it begins), the gate bytes only with it. A client about to
begin a fetch-lock that sees the flag defers (``defer``: yields its CPU, then sleeps
50 us at a time) until it is cleared, for at most ``DEFER_MAX`` seconds each time, and
not at all when the flag is older than ``TTL``: an agent that died or hangs while
waiting leaves it set, but its gate is closed by then (a waiting worker renews
nothing).
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
import time

from pyctdb.server import tasks
from pyctdb.protocol.fastpath import (GATE, GATE_AT, GATE_DB, GATE_KEY, GATE_UNTIL, TTL,
                                      WAIT_FILE, WAIT_SINCE, WAIT_SIZE, lease_key)

log = logging.getLogger(__name__)

RENEW = 1.0
HELD_WARN = 5.0   # a renewal waiting this long for the writer lock is logged
READER_CHECK = 10.0  # how often reader slots left by dead clients are freed


class WaitFlag:
    """The agent's side of ``agent.wait``: raised by the store's worker while it waits for
    the volatile writer lock, so that clients let it have the lock next."""

    def __init__(self, path):
        fd = os.open(os.path.join(path, WAIT_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, WAIT_SIZE)
            self.mm = mmap.mmap(fd, WAIT_SIZE)
        finally:
            os.close(fd)
        self.mm[:] = bytes(WAIT_SIZE)  # (left by an agent that died: lowered, gate closed)

    def raise_(self):
        self.mm[8:16] = WAIT_SINCE.pack(time.monotonic())  # (seen stale or not at
        self.mm[0] = 1                                      # worst: DEFER_MAX bounds it)

    def lower(self):
        self.mm[0] = 0

    def set_gate(self, until, leases):
        """(In the worker, holding the writer lock: :meth:`Gate._write`.)"""
        GATE.pack_into(self.mm, GATE_AT, until, leases)

    def set_until(self, until):
        """Only the gate's time (an aligned 8-byte store: a client reads it whole)."""
        GATE_UNTIL.pack_into(self.mm, GATE_AT, until)

    def close(self):
        self.mm[0] = 0
        self.mm.close()


class Gate:
    """The agent's side of the gate of one (volatile) LMDB :class:`~.store.Store`: opens,
    renews and closes it, and marks the records leased through the API. LMDB-specific
    (it writes in the store's own write transactions, ``Store.run``), not part of the
    storage backend seam (backend.py): a TDB backend's clients take the chain lock and
    read the record header themselves, as CTDB's do."""

    def __init__(self, store):
        self.store = store
        #: orders :meth:`extend` (event loop) with the gate's writes (worker)
        self._mm_lock = threading.Lock()
        self._open = False  # the last write under the writer lock opened the gate
        #: until when this node may let its clients write at most (CLOCK_MONOTONIC; None:
        #: no bound): its lease and its guard's deadline (server/fencing.py), so that its
        #: clients stop writing before another node can take their records
        self.limit = lambda: None
        #: seconds between renewals (a third of the bound's usual distance, at most RENEW)
        self.renew = lambda: RENEW
        self.want_open = False
        self._leases = set()       # lease keys (touched in the worker thread only)
        self._last = 0.0           # when the last renewal was queued
        self._inflight = False
        self._warned = False
        self._checked = time.monotonic()

    def _write(self, txn, extra=None):
        """In the worker: write the gate record (and apply ``extra(txn)`` first)."""
        h = self.store.handle_in(txn, GATE_DB)
        if extra is not None:
            extra(txn, h)
        now = time.monotonic()
        until = now + TTL if self.want_open else 0.0
        bound = self.limit()
        if bound is not None and until:
            until = min(until, bound) if bound > now else 0.0
        leases = len(self._leases)
        txn.put(GATE_KEY, GATE.pack(until, leases), db=h)
        w = self.store.wait_flag
        if w is not None:  # (the last: the put above raises before it, if at all)
            with self._mm_lock:
                w.set_gate(until, leases)
                self._open = until > 0

    def extend(self):
        """Move the open gate's time on, without the writer lock (from the event loop,
        with every keepalive): a client may hold a record for longer than the gate's
        bound, and its commit checks the gate again. Only while the gate is open: once
        a close is written under the writer lock, never again until it is reopened
        there. Within :attr:`limit`: an ended bound closes it."""
        w = self.store.wait_flag
        if w is None:
            return
        now = time.monotonic()
        until = now + TTL
        bound = self.limit()
        if bound is not None:
            until = min(until, bound) if bound > now else 0.0
        with self._mm_lock:
            if self._open:
                w.set_until(until)

    async def close(self):
        """Close the gate; returns once no client can write any more (the closing is
        committed: client transactions begun before it are finished)."""
        self.want_open = False
        if self.store.env is not None:
            await self.store.run(self._write)

    def tick(self, should_open):
        """On each cycle: open, renew or close the gate (in the background)."""
        now = time.monotonic()
        if now - self._checked > READER_CHECK and self.store.env is not None:
            # a client killed inside a read transaction leaves its reader slot, which
            # keeps LMDB from reusing pages (the file grows): free those of dead processes
            # (the reader table's own mutex, never the writer lock)
            self._checked = now
            try:
                freed = self.store.env.reader_check()
            except Exception as exc:
                log.error("volatile databases: reader check failed: %s", exc)
            else:
                if freed:
                    log.info("volatile databases: %d reader slots of dead clients freed",
                             freed)
        if self._inflight and now - self._last > HELD_WARN and not self._warned:
            self._warned = True
            log.warning("the volatile databases' LMDB writer lock has been held for %.0f s "
                        "(a client of this node inside fetch_locked?): this node's "
                        "volatile writes and recoveries wait for it", now - self._last)
        if should_open == self.want_open and (not should_open or self._inflight
                                              or now - self._last < self.renew()):
            return
        if self.store.env is None:
            return
        self.want_open = should_open
        self._last = now
        self._inflight = True
        tasks.spawn(self._renew(), name="db-gate-renew")

    async def _renew(self):
        try:
            await self.store.run(self._write)
        except Exception as exc:
            log.error("cannot write the gate of the volatile databases: %s", exc)
        finally:
            self._inflight = False
            if self._warned:
                self._warned = False
                log.warning("the volatile databases' LMDB writer lock is free again")

    # -- API leases (a fetch-lock held through the API) ------------------------------------
    async def hold(self, name, key):
        """Mark record ``key`` of ``name`` leased: clients of this node leave it alone
        (committed when this returns)."""
        lk = lease_key(name, key)

        def extra(txn, h):
            self._leases.add(lk)
            txn.put(lk, b"", db=h)
        await self.store.run(self._write, extra)

    async def unhold(self, name, key):
        lk = lease_key(name, key)

        def extra(txn, h):
            self._leases.discard(lk)
            txn.delete(lk, db=h)
        await self.store.run(self._write, extra)
