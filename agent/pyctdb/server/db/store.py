"""LMDB storage of the clustered databases on one node.

Two LMDB environments per node, in the directories of pyctdb.conf's ``[database]``
section: ``volatile database directory`` (emptied when the agent starts, as CTDB wipes
its volatile databases; written without fsync) and ``persistent database directory``
(fsync'd). In each, a named sub-database ``db:NAME`` per clustered database holds
``key -> header + value`` (see :mod:`pyctdb.rules.records`), and the sub-database
``__dbmap__`` holds ``NAME -> {"db_id", "persistent", "seqnum"}`` (JSON). The sequence
number is updated in the same LMDB transaction as the records. :class:`Store` is the
LMDB :class:`~.backend.StorageBackend`.

Reads run on the event loop (LMDB readers never block); every write runs in the store's
single worker thread, so a write transaction (and its fsync) never blocks the loop and
write transactions never wait for each other's lock on the loop. The volatile
environment is written by the node's clients too (the client library's fast path, see
:mod:`.gate`): the worker may wait for the writer lock while a client holds a record, and
a write that depends on a record's current value reads it in its own transaction
(:meth:`Store.modify`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import lmdb

from pyctdb.errors import DiskFailure
from pyctdb.protocol.fastpath import open_env
from pyctdb.rules import records
from pyctdb.server.db.backend import StorageBackend, StoreError, probe_directory
from pyctdb.server.db.gate import WaitFlag

__all__ = ["Store", "StoreError", "remove_tree"]

log = logging.getLogger(__name__)

DBMAP = b"__dbmap__"
#: LMDB's errors of a disk that fails a write (lmdb.Error itself: a system errno, e.g. EIO
#: or EROFS; MDB_PANIC: the environment gave up after one), and their errno names when
#: the directory's probe cannot tell
DISK_ERRORS = {lmdb.MapFullError: "ENOSPC", lmdb.DiskError: "ENOSPC",
               lmdb.ReadonlyError: "EROFS", lmdb.PanicError: "EIO", lmdb.Error: "EIO"}


class Store(StorageBackend):
    """The LMDB :class:`~.backend.StorageBackend`: one LMDB environment holding the
    volatile (or the persistent) databases of this node, written in one worker thread.
    Besides the backend's contract it offers :meth:`run` and :meth:`handle_in` (a write
    transaction of one's own) and ``env``/``wait_flag``, which only the LMDB-specific
    gate (gate.py) and the API's fast-path answer use."""

    def __init__(self, path, persistent):
        self.path = path
        self.persistent = persistent
        self.kind = "persistent" if persistent else "volatile"
        self.env = None
        self.error = None           # why the whole environment is unusable
        self.damaged = {}           # name -> why this database is not served
        self.meta = {}              # name -> {"db_id", "persistent", "seqnum"}
        self._handles = {}
        self._dbmap = None
        self.pending = 0  # writes queued or running in the worker
        self.wait_flag = None  # volatile: tells its clients the worker waits (gate.WaitFlag)
        #: called (on the loop) with (store, DiskFailure) when a write fails for the disk
        self.on_disk_error = None
        self._exec = ThreadPoolExecutor(1, thread_name_prefix=f"lmdb-{self.kind}")

    # -- opening ---------------------------------------------------------------------
    def open(self, wipe=False):
        """Open (for volatile: wipe first). A failure marks the store unusable, logged;
        it never raises."""
        self.error = None
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            self.env = self._open_wiped() if wipe else open_env(self.path, self.persistent)
            if not self.persistent:
                self.wait_flag = self._wait_flag()
            self._dbmap = self.env.open_db(DBMAP)
            with self.env.begin(db=self._dbmap) as txn:
                for name, raw in txn.cursor():
                    self.meta[name.decode()] = json.loads(raw)
        except (lmdb.Error, OSError, ValueError, UnicodeError) as exc:
            self.error = f"cannot open {self.kind} database environment {self.path}: {exc}"
            log.error("%s: NOT serving %s databases on this node", self.error, self.kind)
            self.env = None
            self.meta = {}
            return
        for name in list(self.meta):
            self.verify(name)

    def _wait_flag(self):
        """The volatile environment's ``agent.wait`` (gate.WaitFlag), or None if it cannot
        be made (the databases work without it; a looping client may delay the agent)."""
        try:
            return WaitFlag(self.path)
        except (OSError, ValueError) as exc:
            log.warning("%s: no wait flag for the clients (%s): a client in a fetch-lock "
                        "loop may delay this agent's volatile writes", self.path, exc)
            return None

    def _open_wiped(self):
        """The environment emptied in place (every sub-database dropped), so that a
        client still holding it (after an agent crash) sees the empty databases and a
        closed gate, not files unlinked under it; if it cannot be opened, new files."""
        try:
            env = open_env(self.path, self.persistent)
            try:
                with env.begin(write=True) as txn:
                    for sub in env.dbs(txn):
                        txn.drop(env.open_db(sub, txn=txn), delete=True)
            except lmdb.Error:
                env.close()
                raise
            return env
        except lmdb.Error as exc:
            log.warning("%s: cannot be emptied in place (%s): new files", self.path, exc)
        for f in ("data.mdb", "lock.mdb"):
            p = os.path.join(self.path, f)
            if os.path.exists(p):
                os.unlink(p)
        return open_env(self.path, self.persistent)

    def verify(self, name):
        """Read every record of ``name``; a damaged one marks the database damaged."""
        try:
            n = 0
            with self.env.begin(db=self.handle(name)) as txn:
                for _k, raw in txn.cursor():
                    records.unpack(raw)
                    n += 1
        except (lmdb.Error, records.CorruptRecord) as exc:
            why = f"database {name} is damaged on this node ({self.path}): {exc}"
            self.damaged[name] = why
            log.error("%s: not serving it; recovery will replace it with a healthy copy", why)
            return False
        self.damaged.pop(name, None)
        return True

    def close(self):
        self._exec.shutdown(wait=True)
        if self.wait_flag is not None:
            self.wait_flag.close()
            self.wait_flag = None
        if self.env is not None:
            self.env.close()
            self.env = None

    def handle(self, name):
        """The LMDB handle of database ``name``. :meth:`create` opens it in the worker:
        opening one here takes a write transaction, which on the event loop could wait
        for a client holding a record of this node (docs/client.md)."""
        h = self._handles.get(name)
        if h is None:
            h = self.env.open_db(b"db:" + name.encode())  # creates it if needed
            self._handles[name] = h
        return h

    def handle_in(self, txn, sub):
        """(In the worker) the handle of sub-database ``sub``, created if needed."""
        return self.env.open_db(sub, txn=txn)

    @property
    def available(self):
        return self.env is not None

    # -- reads (on the loop) ---------------------------------------------------------
    def get(self, name, key) -> records.Record | None:
        self.usable(name)
        with self.env.begin(db=self.handle(name)) as txn:
            raw = txn.get(key)
        return None if raw is None else records.unpack(raw)

    def items(self, name):
        """All records of ``name`` (deleted ones included) as a list of (key, Record)."""
        self.usable(name)
        with self.env.begin(db=self.handle(name)) as txn:
            return [(bytes(k), records.unpack(v)) for k, v in txn.cursor()]

    def page(self, name, after=None, limit_bytes=1 << 20, raw=False):
        """Records after key ``after`` up to about ``limit_bytes``: (list, more); with
        ``raw``, each record as stored (header + value) instead of a Record."""
        self.usable(name)
        out, size = [], 0
        with self.env.begin(db=self.handle(name)) as txn:
            cur = txn.cursor()
            ok = cur.set_range(after) if after is not None else cur.first()
            if ok and after is not None and cur.key() == after:
                ok = cur.next()
            for k, v in (cur.iternext() if ok else ()):  # (bytes: the txn's default)
                if out and size + len(k) + len(v) > limit_bytes:
                    return out, True
                out.append((k, v if raw else records.unpack(v)))
                size += len(k) + len(v)
        return out, False

    # -- writes (in the worker thread) -----------------------------------------------
    async def run(self, fn, *args, after=None):
        """Run ``fn(txn, *args)`` in one write transaction in the worker thread, then
        ``after()`` (in the worker, once the transaction is committed: what readers on
        the loop see, such as ``meta``, never runs ahead of what LMDB readers see)."""
        if self.env is None:
            raise StoreError(self.error or f"{self.kind} databases are not available")
        loop = asyncio.get_running_loop()

        def job():
            w = self.wait_flag
            if w is None:
                txn = self.env.begin(write=True)
            else:  # clients in a fetch-lock loop let this worker have the lock next
                w.raise_()
                try:
                    txn = self.env.begin(write=True)
                finally:
                    w.lower()
            with txn:
                r = fn(txn, *args)
            if after is not None:
                after()
            return r
        self.pending += 1
        try:
            return await loop.run_in_executor(self._exec, job)
        except lmdb.Error as exc:
            if type(exc) not in DISK_ERRORS:
                raise
            raise await self._disk_failure(exc) from None
        finally:
            self.pending -= 1

    async def _disk_failure(self, exc):
        """The DiskFailure of a write that LMDB refused (nothing of it written), its
        errno as the directory's probe finds it; ``on_disk_error`` is told."""
        code, why = (await self.probe()) or (DISK_ERRORS[type(exc)], str(exc))
        err = DiskFailure(f"{self.kind} database directory {self.path}: {code} ({why}): "
                          "the write failed, nothing of it was written", code, self.path)
        if self.on_disk_error is not None:
            self.on_disk_error(self, err)
        return err

    async def probe(self):
        """:func:`.backend.probe_directory` in the worker, after the writes queued."""
        return await asyncio.get_running_loop().run_in_executor(
            self._exec, probe_directory, self.path)

    async def barrier(self):
        """Wait until every write queued so far is done."""
        if self.pending and self.env is not None:
            await asyncio.get_running_loop().run_in_executor(self._exec, lambda: None)

    def put_meta(self, txn, name, meta):
        txn.put(name.encode(), json.dumps(meta).encode(), db=self._dbmap)

    async def create(self, name, db_id):
        if name in self.meta:
            return self.meta[name]
        meta = {"db_id": db_id, "persistent": self.persistent, "seqnum": 0}

        def fn(txn):
            h = self.handle_in(txn, b"db:" + name.encode())
            self.put_meta(txn, name, meta)
            return h
        self._handles[name] = await self.run(fn)
        self.meta[name] = meta
        return meta

    async def store(self, name, key, rec, check=None):
        """Write one record; ``check()`` (run in the worker, inside the transaction)
        may raise to abort (used against writes that a recovery overtook)."""
        self.usable(name)
        h = self.handle(name)

        def fn(txn):
            if check is not None:
                check()
            txn.put(key, rec.pack(), db=h)
        await self.run(fn)

    async def modify(self, name, key, fn, check=None):
        """Read-modify-write record ``key`` in one transaction in the worker:
        ``fn(stored Record or None)`` returns the new Record (or raises to abort);
        returns it. (A client of this node may write the record between a read on the
        loop and a later write: a change based on the stored record reads it here.)"""
        self.usable(name)
        h = self.handle(name)

        def job(txn):
            if check is not None:
                check()
            raw = txn.get(key, db=h)
            new = fn(None if raw is None else records.unpack(raw))
            txn.put(key, new.pack(), db=h)
            return new
        return await self.run(job)

    async def apply(self, name, writes, seqnum=None, replace=False, check=None):
        """Apply ``writes`` ([(key, Record)]) in one transaction; ``replace``: empty the
        database first (recovery); ``seqnum``: the new database sequence number."""
        if self.env is None:
            raise StoreError(self.error or f"{self.kind} databases are not available")
        if not replace:
            self.usable(name)
        h = self.handle(name)
        meta = dict(self.meta[name])
        if seqnum is not None:
            meta["seqnum"] = seqnum

        def fn(txn):
            if check is not None:
                check()
            if replace:
                txn.drop(h, delete=False)
            for key, rec in writes:
                if self.persistent and rec.deleted:
                    # a persistent database needs no tombstones: a recovery takes a
                    # whole copy (the highest sequence number), never single records
                    txn.delete(key, db=h)
                else:
                    txn.put(key, rec.pack(), db=h)
            self.put_meta(txn, name, meta)
        # the new meta (sequence number) once the records are committed, in the worker:
        # before any later barrier
        await self.run(fn, after=lambda: self.meta.__setitem__(name, meta))
        if replace:
            self._served_again(name)

    def _served_again(self, name):
        """After ``name`` was replaced whole (recovery, restore): a damaged copy is gone."""
        if self.damaged.pop(name, None) is not None:
            log.warning("database %s replaced by recovery: served again", name)

    async def replace_raw(self, name, items, seqnum=None):
        """Replace database ``name`` with ``items`` ([(key, stored record)], checked by
        the caller, e.g. :func:`.chunk.decode`) in one transaction (a recovery push);
        ``seqnum``: the new database sequence number."""
        if self.env is None:
            raise StoreError(self.error or f"{self.kind} databases are not available")
        h = self.handle(name)
        meta = dict(self.meta[name])
        if seqnum is not None:
            meta["seqnum"] = seqnum
        if self.persistent:  # no tombstones in a persistent database (see apply)
            items = [(k, d) for k, d in items if not d[records.HEADER_SIZE - 1] & records.REC_DELETED]

        def fn(txn):
            txn.drop(h, delete=False)
            txn.cursor(db=h).putmulti(items)
            self.put_meta(txn, name, meta)
        await self.run(fn, after=lambda: self.meta.__setitem__(name, meta))
        self._served_again(name)

    def count(self, name):
        """The number of records of ``name`` stored here, deleted ones included."""
        self.usable(name)
        with self.env.begin() as txn:
            return txn.stat(self.handle(name))["entries"]

    async def delete_where(self, name, keys, pred, check=None):
        """Delete each of ``keys`` whose stored record satisfies ``pred(key, record)``
        (in one transaction in the worker; ``check()`` may raise to abort). Returns the
        keys that are stored and were kept."""
        self.usable(name)
        h = self.handle(name)

        def fn(txn):
            if check is not None:
                check()
            kept = []
            for key in keys:
                raw = txn.get(key, db=h)
                if raw is None:
                    continue
                if pred(key, records.unpack(raw)):
                    txn.delete(key, db=h)
                else:
                    kept.append(key)
            return kept
        return await self.run(fn)

    async def drop(self, name):
        """Remove database ``name`` from this node (its records and its entry)."""
        h = self.handle(name)

        def fn(txn):
            txn.drop(h, delete=True)
            txn.delete(name.encode(), db=self._dbmap)
            self.meta.pop(name, None)
        await self.run(fn)
        self._handles.pop(name, None)
        self.damaged.pop(name, None)

    async def wipe(self, name):
        await self.apply(name, [], replace=True)


def remove_tree(path):
    shutil.rmtree(path, ignore_errors=True)
