"""The storage backend seam: what the database components (databases.py, migration.py,
transactions.py, recovery.py, vacuum.py, maintenance.py) may ask of the storage of one
kind of database (volatile or persistent) on this node.

:class:`StorageBackend` is modelled on patroni's ``AbstractDCS``: an abstract base class
whose every abstract method states its contract, so that another storage can be put
behind the same components. Today's backend is LMDB (:class:`.store.Store`). The next
one is TDB as CTDB keeps it: each record carries CTDB's ltdb header (RSN u64, DMASTER u32,
flags u32) in a TDB file that other processes (smbd) open and lock themselves.

Records are handed in and out as :class:`pyctdb.rules.records.Record` (header + value),
or in their *stored form* (``Record.pack()``: the 16-byte header, then the value) where a
recovery moves them in bulk. A backend holds many databases, each known by name, with a
``db_id`` and a sequence number (the *dbmap*, :attr:`StorageBackend.meta`).

Locking: a write that depends on a record's current value goes through :meth:`modify`,
which reads and writes under the backend's record lock in one step. For LMDB that lock
is the environment's writer lock (one write transaction, in the store's worker thread:
clients of this node write the volatile environment too, see gate.py). For TDB it is
the record's chain lock (``tdb_chainlock``), which smbd takes as well: it must be taken
off the event loop (in a worker thread), as it may wait for another process. Reads never
block the loop: LMDB's on the loop (read transactions), TDB's in its worker (a fetch
takes the chain's read lock), through the asynchronous ``read*`` methods, which every
component that may meet a TDB database uses.
"""

from __future__ import annotations

import abc
import errno
import os

from pyctdb.errors import PyctdbError

#: the probe's file in each database directory, and how much it writes (a few pages)
PROBE_FILE = ".pyctdb-probe"
PROBE_BYTES = 64 * 1024


def probe_directory(path):
    """(In a worker) write and fsync a small new file in directory ``path``, then put it
    in place of the last one: None if that works, else (errno name, strerror). Put in
    place, not overwritten: a full disk has no room for it even with the old one's
    blocks. The new file's name is this process's own."""
    final = os.path.join(path, PROBE_FILE)
    new = "%s.new.%d" % (final, os.getpid())
    try:
        fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, bytes(PROBE_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(new, final)
        return None
    except OSError as exc:
        try:
            os.unlink(new)
        except OSError:
            pass
        return errno.errorcode.get(exc.errno, "EIO"), exc.strerror


class StoreError(PyctdbError):
    """A database (or the whole backend) that this node cannot serve: the backend could
    not be opened, or the database is damaged here."""

    code = "EIO"


class NotNow(PyctdbError):
    """(From :meth:`StorageBackend.modify_now`) the write cannot be done at once, without
    waiting: the caller takes the asynchronous way (:meth:`StorageBackend.modify`)."""

    code = "EAGAIN"


class StorageBackend(abc.ABC):
    """One kind (volatile or persistent) of this node's databases, in one storage.

    Attributes every backend keeps, read by the components on the event loop:

    - ``path``: where the storage is (a directory);
    - ``persistent``: True for the persistent databases (each write is durable once its
      call returns), False for the volatile ones (emptied when the agent starts);
    - ``kind``: ``"persistent"`` or ``"volatile"`` (for messages);
    - ``error``: why the whole backend is unusable (it could not be opened), else None;
    - ``damaged``: {name: why} of the databases this node does not serve (a damaged
      copy: a recovery replaces it);
    - ``meta``: the dbmap, {name: {"db_id", "persistent", "seqnum"}} of every database
      attached here; it changes only once the write that changes it is durable.

    Every ``check`` argument is a callable run inside the write, under the lock, before
    anything is written: it raises to abort the write (a recovery that overtook it).
    """

    path: str
    persistent: bool
    kind: str
    error: str | None
    damaged: dict
    meta: dict

    # -- opening and closing -------------------------------------------------------------
    @abc.abstractmethod
    def open(self, wipe=False):
        """Open the storage (with ``wipe``: emptied first, as volatile databases are at
        start-up) and load the dbmap. Never raises: a failure sets :attr:`error` (logged)
        and leaves the backend unavailable; a database whose records cannot all be read
        is put in :attr:`damaged`."""

    @abc.abstractmethod
    def close(self):
        """Finish the writes queued so far and release the storage."""

    @property
    @abc.abstractmethod
    def available(self) -> bool:
        """Whether the storage is open (False: :attr:`error` says why)."""

    def usable(self, name):
        """Raise :class:`StoreError` unless database ``name`` can be served here."""
        if not self.available:
            raise StoreError(self.error or f"{self.kind} databases are not available")
        if name in self.damaged:
            raise StoreError(self.damaged[name])

    def location(self, name) -> str:
        """Where database ``name`` is, for getdbmap and getdbstatus."""
        return f"{self.path}#{name}"

    # -- the dbmap -----------------------------------------------------------------------
    @abc.abstractmethod
    async def create(self, name, db_id) -> dict:
        """Attach database ``name`` (empty, sequence number 0) with ``db_id`` unless it is
        attached; returns its dbmap entry. Idempotent."""

    @abc.abstractmethod
    async def drop(self, name):
        """Remove database ``name`` (its records and its dbmap entry) from this node."""

    # -- reads (on the event loop, never blocking) ---------------------------------------
    @abc.abstractmethod
    def get(self, name, key):
        """The Record stored under ``key`` (a tombstone included), or None."""

    @abc.abstractmethod
    def items(self, name) -> list:
        """Every record of ``name``, tombstones included: [(key, Record)] in key order."""

    @abc.abstractmethod
    def page(self, name, after=None, limit_bytes=1 << 20, raw=False):
        """The records after key ``after`` (from the first with None), in key order, up
        to about ``limit_bytes`` (at least one): ``(list, more)``, ``more`` True when
        records follow. Each record is (key, Record), or with ``raw`` (key, stored form).
        A traverse, a recovery's pull and vacuuming read a database this way, page by
        page, giving the event loop a turn in between."""

    @abc.abstractmethod
    def count(self, name) -> int:
        """How many records of ``name`` are stored here, tombstones included."""

    # -- reads that may wait (a backend whose reads take locks other processes hold:
    # TDB) -- the components that may meet such a database read through these; by
    # default they are the reads above.
    async def read(self, name, key):
        """:meth:`get`, for a backend whose reads may wait."""
        return self.get(name, key)

    async def read_items(self, name):
        """:meth:`items`, for a backend whose reads may wait."""
        return self.items(name)

    async def read_page(self, name, after=None, limit_bytes=1 << 20, raw=False):
        """:meth:`page`, for a backend whose reads may wait."""
        return self.page(name, after, limit_bytes, raw)

    async def read_count(self, name):
        """:meth:`count`, for a backend whose reads may wait."""
        return self.count(name)

    # -- writes (off the event loop; each call is one atomic, durable-if-persistent step) --
    @abc.abstractmethod
    async def store(self, name, key, rec, check=None):
        """Write Record ``rec`` under ``key`` as it is (the caller decided it)."""

    @abc.abstractmethod
    async def modify(self, name, key, fn, check=None):
        """Read-modify-write ``key`` under the record lock: ``fn(stored Record or None)``
        returns the Record to store (or raises to abort, nothing written); returns it.
        The record lock is held from the read to the write, so that a client of this node
        (writing the storage itself) cannot change the record in between: LMDB's writer
        lock, or TDB's chain lock (taken in a worker thread, never on the loop)."""

    def modify_now(self, name, key, fn, check=None):
        """:meth:`modify` done at once on the event loop, when it can be without waiting
        for anything (a lock, a worker, a sync); else :class:`NotNow` and nothing is
        written. The hot path of record migration; a backend without such a way (this
        default) always says NotNow."""
        raise NotNow(f"{self.kind} databases are written asynchronously")

    @abc.abstractmethod
    async def apply(self, name, writes, seqnum=None, replace=False, check=None):
        """Write ``writes`` ([(key, Record)]) in one transaction: a persistent
        transaction's round on a member, a wipe, a restore. ``replace``: the database is
        emptied first (and, if it was damaged, served again). ``seqnum``: the database's
        new sequence number, committed with the records (None: unchanged). A persistent
        database keeps no tombstones: a deleted record is removed."""

    @abc.abstractmethod
    async def replace_raw(self, name, items, seqnum=None):
        """A recovery's push: replace every record of ``name`` with ``items`` ([(key,
        stored form)], already checked) in one transaction, with the new ``seqnum``; a
        damaged copy is served again."""

    @abc.abstractmethod
    async def delete_where(self, name, keys, pred, check=None) -> list:
        """Vacuuming: delete each of ``keys`` whose stored record satisfies ``pred(key,
        Record)``, under the record lock, in one step; returns the stored keys kept."""

    async def wipe(self, name):
        """Empty database ``name`` (its sequence number unchanged)."""
        await self.apply(name, [], replace=True)

    @abc.abstractmethod
    async def barrier(self):
        """Wait until every write queued so far is done (a freeze: no write started
        before it lands after it)."""
