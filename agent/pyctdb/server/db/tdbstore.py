"""The TDB :class:`~.backend.StorageBackend`: the databases that Samba (or any client of
CTDB's socket) attaches, kept as CTDB keeps them, so that smbd opens and locks the same
files itself (docs/databases.md, "TDB databases").

- One TDB file per database, ``DIR/NAME.PNN`` (CTDB's names: ``locking.tdb.0``), opened
  with the flags ctdbd uses (:func:`.tdbfile.ctdb_tdb_flags`); each record starts with
  CTDB's ltdb header (RSN, DMASTER, flags). A record whose value is empty is a deleted
  one (CTDB's convention: smbd deletes by storing the header alone); pyctdb's REC_DELETED
  flag is never written to the file, and only the flags pyctdb knows are read back.
- The dbmap (names, ids, kinds) is ``DIR/.pyctdb-tdbmap.json``, replaced atomically; a
  persistent database's sequence number is CTDB's own record ``__db_sequence_number__``
  (a little-endian u64), which Samba reads and writes in its transactions.
- A TDB handle is not thread-safe: whoever touches the files holds ``_guard``. Jobs run
  in this store's one worker thread; persistent writes and transactions (which sync)
  always do. A read, or a volatile write, is tried on the loop first when the worker has
  nothing queued and the chain is free at once (:meth:`_inline`); else the worker does
  it. Chain locks are never waited for: when smbd holds the chain, the worker gives up
  at once and the coroutine tries again a little later (:func:`retry_delay`: 0.2-0.5 ms
  for the first 50 ms, then doubling up to 20 ms) — neither the loop nor the worker
  waits for another process. (CTDB waits in a helper process instead.)
- TDB takes the chain's read lock for a fetch, which waits while smbd holds the chain,
  so this backend's reads are the asynchronous ones (:meth:`read`, :meth:`read_page`,
  :meth:`read_items`, :meth:`read_count`); the synchronous ones of the seam are
  refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

from pyctdb.errors import DiskFailure, PyctdbError
from pyctdb.rules import records
from pyctdb.server.db.backend import NotNow, StorageBackend, StoreError, probe_directory
from pyctdb.server.db.tdbfile import (TDB_SEQNUM, TdbError, TdbFile, ctdb_tdb_flags,
                                      ltdb_pack, ltdb_unpack)

log = logging.getLogger(__name__)

MAP_FILE = ".pyctdb-tdbmap.json"
#: CTDB's record of a persistent database's sequence number (with its NUL)
SEQNUM_KEY = b"__db_sequence_number__\0"
SEQNUM = struct.Struct("<Q")
HASH_SIZE = 10007          # CTDB's DatabaseHashSize default
# A chain another process holds (smbd, CTDB's client library) is tried again without
# blocking the worker: every 0.2-0.5 ms for the first LOCK_RETRY_FAST_FOR seconds, then
# doubling to 20 ms. The fast start matters to a client that takes the chain again and
# again, with short gaps: CTDB's g_lock waiter (ctdb_transaction_start, Samba's
# g_lock) holds the record's chain through a PROCESS_EXISTS round trip, lets go for
# 1 ms and takes it again; ctdbd's lock helper waits on it blocked (F_SETLKW) and gets
# it in the gap; tries 1 ms, 2 ms, 4 ms, ... apart mostly missed the gaps (CTDB's
# transaction_loop: 30 commits/s on three nodes, one node starved; 0.2-0.5 ms: 140).
LOCK_RETRY_FIRST = 0.0002
LOCK_RETRY_FAST = 0.0005
LOCK_RETRY_FAST_FOR = 0.05
LOCK_RETRY_MAX = 0.02
LOCK_WAIT = 10.0           # a chain held by another process longer than this: RecordBusy


class ChainBusy(StoreError):
    """A record's chain lock is held by another process (smbd) for longer than the wait."""

    code = "EBUSY"


class _Busy(PyctdbError):
    """(In the worker) the chain lock is held elsewhere: try again later."""


def to_record(data: bytes) -> records.Record:
    """A TDB record (ltdb header + value) as pyctdb's Record."""
    rsn, dmaster, flags, value = ltdb_unpack(data)
    flags &= records.REC_MIGRATED_WITH_DATA
    if not value:
        flags |= records.REC_DELETED
    return records.Record(rsn, dmaster, flags, value)


def from_record(rec: records.Record) -> bytes:
    """pyctdb's Record as a TDB record (a deleted one: the header alone)."""
    return ltdb_pack(rec.rsn, rec.dmaster, rec.flags & ~records.REC_DELETED,
                     b"" if rec.deleted else rec.value)


def retry_delay(delay, waited):
    """The pause before the next try at a busy chain, after one of ``delay`` seconds,
    ``waited`` seconds into the wait."""
    if waited < LOCK_RETRY_FAST_FOR:
        return min(delay * 2, LOCK_RETRY_FAST)
    return min(max(delay, LOCK_RETRY_FAST) * 2, LOCK_RETRY_MAX)


class TdbStore(StorageBackend):
    """The TDB databases of one kind (volatile or persistent) of node ``pnn``, in
    directory ``path``."""

    def __init__(self, path, persistent, pnn, mutexes=False):
        self.path = path
        self.persistent = persistent
        #: volatile files locked with robust mutexes (``[database] tdb mutexes``)
        self.mutexes = mutexes
        self.pnn = pnn
        self.kind = "persistent" if persistent else "volatile"
        self.error = None
        self.damaged = {}
        self.meta = {}
        self._files = {}            # name -> TdbFile (touched in the worker only)
        self._frozen = set()        # names whose whole file this node holds (worker only)
        self._freeze_id = 0         # +1 at every freeze and thaw (on the loop)
        self._open = False
        self._exec = ThreadPoolExecutor(1, thread_name_prefix=f"tdb-{self.kind}")
        # Whoever touches the files holds _guard: the worker for each job; the loop for
        # a read or a volatile write that cannot wait (a chain not free: tried at once,
        # else handed to the worker), and only when no job is queued (_submitted, on the
        # loop, equals _finished, in the worker), so that it comes after every job
        # queued before it, as in the worker's order.
        self._guard = threading.Lock()
        self._submitted = 0
        self._finished = 0
        #: called (on the loop) with (store, DiskFailure) when a call fails for the disk
        self.on_disk_error = None

    # -- paths and flags -----------------------------------------------------------------
    def file_path(self, name):
        """Where database ``name``'s TDB file is (CTDB's ``NAME.PNN``)."""
        return os.path.join(self.path, f"{name}.{self.pnn}")

    def location(self, name):
        return self.file_path(name)

    def tdb_flags(self, name):
        """The tdb_open flags of ``name`` (what DB_OPEN_FLAGS answers smbd)."""
        flags = ctdb_tdb_flags(self.persistent, self.mutexes)
        if self.meta.get(name, {}).get("seqnum_enabled"):
            flags |= TDB_SEQNUM
        return flags

    # -- opening -------------------------------------------------------------------------
    def open(self, wipe=False):
        self.error = None
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            self.meta = self._read_map()
            if wipe:  # (volatile: CTDB starts with empty volatile databases too)
                for name in list(self.meta):
                    try:
                        os.unlink(self.file_path(name))
                    except FileNotFoundError:
                        pass
                self.meta = {}
                self._write_map()
        except (OSError, ValueError) as exc:
            self.error = f"cannot open {self.kind} TDB databases in {self.path}: {exc}"
            log.error("%s: NOT serving them on this node", self.error)
            self.meta = {}
            return
        self._open = True
        for name in list(self.meta):
            self._run_sync(self._verify, name)

    def _verify(self, name):
        try:
            f = self._file(name)
            for _k, data in f.items():
                to_record(data)
            seq = f.fetch(SEQNUM_KEY)
            if self.persistent and seq is not None:
                self.meta[name]["seqnum"] = _seqnum_of(seq)
        except (TdbError, ValueError) as exc:
            why = f"database {name} is damaged on this node ({self.file_path(name)}): {exc}"
            self.damaged[name] = why
            log.error("%s: not serving it; recovery will replace it with a healthy copy", why)

    def _read_map(self):
        try:
            with open(os.path.join(self.path, MAP_FILE)) as f:
                m = json.load(f)
        except FileNotFoundError:
            return {}
        if not isinstance(m, dict):
            raise ValueError(f"{MAP_FILE} is not a JSON object")
        return m

    def _set_map(self, meta):
        """(In the worker) the dbmap becomes ``meta``: its file first, then ``self.meta``
        replaced whole (never changed in place: the loop may be going through the old
        one), so that the worker's changes, one at a time, each see the last."""
        self._write_map(meta)
        self.meta = meta

    def _write_map(self, meta=None):
        path = os.path.join(self.path, MAP_FILE)
        tmp = f"{path}.new.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(self.meta if meta is None else meta, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def close(self):
        def job():
            for f in self._files.values():
                f.close()
            self._files.clear()
        if self._open:
            self._submit(job).result()
        self._exec.shutdown(wait=True)
        self._open = False

    @property
    def available(self):
        return self._open and self.error is None

    # -- the worker ----------------------------------------------------------------------
    def _file(self, name):
        """(In the worker) the open TdbFile of ``name``."""
        f = self._files.get(name)
        if f is None:
            f = TdbFile(self.file_path(name), self.tdb_flags(name), hash_size=HASH_SIZE)
            self._files[name] = f
        return f

    def _guarded(self, fn, *args):
        """(In the worker) a job: ``fn(*args)`` holding the files' guard."""
        with self._guard:
            try:
                return fn(*args)
            finally:
                self._finished += 1

    def _submit(self, fn, *args):
        """(On the loop) queue ``fn(*args)`` to the worker; its concurrent future."""
        self._submitted += 1
        return self._exec.submit(self._guarded, fn, *args)

    def _run_sync(self, fn, *args):
        return self._submit(fn, *args).result()

    def _inline(self, fn, *args):
        """``(True, fn(*args))`` run here on the loop when the worker has nothing queued
        or running; ``(False, None)`` when it has, or when the chain is not free
        (:class:`_Busy`): then the worker does it. Raises what ``fn`` raises else."""
        if self._submitted != self._finished or not self._guard.acquire(blocking=False):
            return False, None
        try:
            return True, fn(*args)
        except _Busy:
            return False, None
        finally:
            self._guard.release()

    async def _call(self, fn, *args, inline=False):
        """Run ``fn(*args)`` in the worker; while it answers :class:`_Busy` (a chain
        held by another process) try again, 0.2 ms doubling to 0.5 ms for the first
        LOCK_RETRY_FAST_FOR seconds, then doubling to 20 ms, for at most LOCK_WAIT
        seconds (:func:`retry_delay`). ``inline``: ``fn`` takes no lock it waits for
        and writes nothing it must sync: tried on the loop first (:meth:`_inline`),
        which spares the worker's round trip (0.05-0.1 ms, a migration makes three)."""
        if not self.available:
            raise StoreError(self.error or f"{self.kind} TDB databases are not available")
        if inline:
            try:
                done, res = self._inline(fn, *args)
            except TdbError as exc:
                raise await self._failure(exc) from None
            if done:
                return res
        delay, waited = LOCK_RETRY_FIRST, 0.0
        while True:
            try:
                return await asyncio.wrap_future(self._submit(fn, *args))
            except _Busy as exc:
                if waited >= LOCK_WAIT:
                    raise ChainBusy(f"{exc}: held by another process for {waited:.1f} s")
                await asyncio.sleep(delay)
                waited += delay
                delay = retry_delay(delay, waited)
            except TdbError as exc:
                raise await self._failure(exc) from None

    async def _failure(self, exc):
        """What a libtdb error is: :class:`DiskFailure` when the directory's probe fails
        too (full, read-only, failing: the write was refused, a transaction cancelled,
        nothing of it written; ``on_disk_error`` is told), else :class:`StoreError`."""
        res = await asyncio.get_running_loop().run_in_executor(self._exec, probe_directory,
                                                               self.path)
        if res is None:
            return StoreError(str(exc))
        code, why = res
        err = DiskFailure(f"{self.kind} database directory {self.path}: {code} ({why}): "
                          f"the TDB write failed, nothing of it was written ({exc})",
                          code, self.path)
        if self.on_disk_error is not None:
            self.on_disk_error(self, err)
        return err

    # -- the dbmap -----------------------------------------------------------------------
    async def create(self, name, db_id):
        if name in self.meta:
            return self.meta[name]
        meta = {"db_id": db_id, "persistent": self.persistent, "seqnum": 0, "tdb": True}

        def job():
            if name not in self.meta:  # (two attaches of one name: the first makes it)
                self._file(name)
                self._set_map({**self.meta, name: meta})
            return self.meta[name]
        return await self._call(job)

    async def enable_seqnum(self, name):
        """ENABLE_SEQNUM: the database's TDB keeps libtdb's sequence number (smbd opens
        it with TDB_SEQNUM, as DB_OPEN_FLAGS answers from now on)."""
        self.usable(name)
        if self.meta[name].get("seqnum_enabled"):
            return

        def job():
            self._file(name).enable_seqnum()
            self._set_map({**self.meta, name: {**self.meta[name], "seqnum_enabled": True}})
        await self._call(job)

    async def drop(self, name):
        def job():
            f = self._files.pop(name, None)
            if f is not None:
                if name in self._frozen:
                    self._frozen.discard(name)
                    f.unlockall()
                f.close()
            try:
                os.unlink(self.file_path(name))
            except FileNotFoundError:
                pass
            self._set_map({k: v for k, v in self.meta.items() if k != name})
        await self._call(job)
        self.damaged.pop(name, None)

    # -- reads (asynchronous: in the worker) ---------------------------------------------
    def get(self, name, key):
        raise StoreError("TDB databases are read asynchronously (read)")

    def items(self, name):
        raise StoreError("TDB databases are read asynchronously (read_items)")

    def page(self, name, after=None, limit_bytes=1 << 20, raw=False):
        raise StoreError("TDB databases are read asynchronously (read_page)")

    def count(self, name):
        raise StoreError("TDB databases are read asynchronously (read_count)")

    async def read(self, name, key):
        self.usable(name)

        def job():
            f = self._file(name)
            if not f.chainlock_read_nonblock(key):
                raise _Busy(f"record {key!r} of {name} is locked")
            try:
                data = f.fetch(key)
            finally:
                f.chainunlock_read(key)
            return None if data is None else to_record(data)
        return await self._call(job, inline=True)

    async def read_items(self, name):
        self.usable(name)
        return await self._call(lambda: sorted(
            (k, to_record(d)) for k, d in self._file(name).items()))

    async def read_page(self, name, after=None, limit_bytes=1 << 20, raw=False):
        # (a traverse of the whole file, in key order, cut after ``after``: TDB has no
        # ordered cursor; databases Samba keeps are small enough for it)
        recs = await self.read_items(name)
        out, size = [], 0
        for k, r in recs:
            if after is not None and k <= after:
                continue
            if out and size + len(k) + len(r.value) > limit_bytes:
                return out, True
            out.append((k, r.pack() if raw else r))
            size += len(k) + len(r.value)
        return out, False

    async def read_count(self, name):
        self.usable(name)
        return await self._call(lambda: len(self._file(name).items()))

    # -- writes --------------------------------------------------------------------------
    def _locked(self, name, key, fn):
        """(In the worker) ``fn(TdbFile)`` under the key's chain lock, not waiting."""
        f = self._file(name)
        if not f.chainlock(key, block=False):
            raise _Busy(f"record {key!r} of {name} is locked")
        try:
            return fn(f)
        finally:
            f.chainunlock(key)

    async def store(self, name, key, rec, check=None):
        self.usable(name)

        def write(f):
            if check is not None:
                check()
            f.store(key, from_record(rec))
        await self._call(self._locked, name, key, write, inline=not self.persistent)

    @staticmethod
    def _modifier(key, fn, check):
        def write(f):
            if check is not None:
                check()
            data = f.fetch(key)
            new = fn(None if data is None else to_record(data))
            f.store(key, from_record(new))
            return new
        return write

    async def modify(self, name, key, fn, check=None):
        self.usable(name)
        return await self._call(self._locked, name, key, self._modifier(key, fn, check),
                                inline=not self.persistent)

    def modify_now(self, name, key, fn, check=None):
        """A volatile record's :meth:`modify`, here on the loop when the worker has
        nothing queued and the chain is free at once; else NotNow (and a libtdb error
        too: the asynchronous way says what it is)."""
        if self.persistent or not self.available:
            raise NotNow("persistent TDB writes sync: done in the worker")
        self.usable(name)
        try:
            done, res = self._inline(self._locked, name, key,
                                     self._modifier(key, fn, check))
        except TdbError as exc:
            raise NotNow(str(exc)) from None
        if not done:
            raise NotNow(f"record {key!r} of {name}: its chain or the worker is busy")
        return res

    async def apply(self, name, writes, seqnum=None, replace=False, check=None):
        if not replace:
            self.usable(name)
        elif not self.available:
            raise StoreError(self.error or f"{self.kind} TDB databases are not available")
        writes = list(writes)
        if seqnum is not None and self.persistent and not any(k == SEQNUM_KEY
                                                              for k, _r in writes):
            old = await self.read(name, SEQNUM_KEY) if not replace else None
            writes.append((SEQNUM_KEY, records.Record((old.rsn if old else 0) + 1, self.pnn,
                                                      0, SEQNUM.pack(seqnum))))

        def write(f):
            if replace:
                f.wipe()
            for key, rec in writes:
                if self.persistent and rec.deleted:
                    f.delete(key)
                else:
                    f.store(key, from_record(rec))

        def job():
            if check is not None:
                check()
            f = self._file(name)
            if name in self._frozen:  # (volatile, under the freeze's lock: libtdb has no
                write(f)              # transaction while a lock is held; none is needed)
            else:
                with f.transaction():
                    write(f)
            # the sequence number after it: the record's, for a persistent database
            # (Samba's transactions write it), else ``seqnum``
            data = f.fetch(SEQNUM_KEY) if self.persistent else None
            got = seqnum if data is None else _seqnum_of(data)
            if got is not None and got != self.meta[name].get("seqnum"):
                self.meta = {**self.meta, name: {**self.meta[name], "seqnum": got}}
        await self._call(job)
        if replace:
            self._served_again(name)

    def _served_again(self, name):
        if self.damaged.pop(name, None) is not None:
            log.warning("database %s replaced by recovery: served again", name)

    async def replace_raw(self, name, items, seqnum=None):
        recs = [(k, records.unpack(d)) for k, d in items]
        await self.apply(name, recs, seqnum=seqnum, replace=True)

    async def delete_where(self, name, keys, pred, check=None):
        self.usable(name)

        def one(f, key):
            data = f.fetch(key)
            if data is None:
                return None
            if pred(key, to_record(data)):
                f.delete(key)
                return None
            return key
        kept = []
        for key in keys:  # (each under its own chain lock, as CTDB's vacuuming does)
            if check is not None:
                check()
            k = await self._call(self._locked, name, key, lambda f, key=key: one(f, key))
            if k is not None:
                kept.append(k)
        return kept

    # -- a recovery's freeze -------------------------------------------------------------
    async def freeze(self):
        """A recovery's freeze of the volatile databases: each file locked whole
        (``tdb_lockall``, not waiting, retried as a chain lock is), so that smbd, which
        takes a record's chain lock to read or write it, waits until :meth:`thaw`, as
        in CTDB. This node's own writes go on under it (libtdb's locks nest in the
        process that holds them). Persistent databases need none: Samba changes them
        only through TRANS3_COMMIT, refused while frozen."""
        if self.persistent or not self.available:
            return
        self._freeze_id += 1
        mine = self._freeze_id
        for name in sorted(self.meta):
            await self._call(self._lock_whole, name)
            if self._freeze_id != mine:  # thawed meanwhile: what this freeze took goes
                self.thaw()
                return

    def _lock_whole(self, name):
        if name in self._frozen:
            return
        if not self._file(name).lockall_nonblock():
            raise _Busy(f"database {name} has a record locked")
        self._frozen.add(name)

    def thaw(self):
        """The freeze ends: every file this node locked whole is let go (queued to the
        worker, after the writes of the recovery)."""
        def job():
            for name in sorted(self._frozen):
                f = self._files.get(name)
                if f is not None:
                    f.unlockall()
            self._frozen.clear()
        self._freeze_id += 1
        if self.available:
            self._submit(job)

    async def barrier(self):
        if self.available:
            await asyncio.get_running_loop().run_in_executor(self._exec, lambda: None)


def _seqnum_of(data):
    value = ltdb_unpack(data)[3]
    return SEQNUM.unpack(value)[0] if len(value) == SEQNUM.size else 0
