"""Clustered databases from a program: the database half of ``pyctdb.client``.

    from pyctdb.client import attach

    db = attach("counters.tdb")                     # volatile
    with db.fetch_locked(b"hits") as rec:           # the record migrates to this node
        rec.store(str(int(rec.value or b"0") + 1).encode())

    reg = attach("registry.tdb", persistent=True)
    with reg.transaction() as t:                    # atomic on every node
        t.store(b"a", b"1")
        t.delete(b"b")
    reg.fetch(b"a")                                  # -> b"1"

Requests go to this node's agent (its local API socket: ``socket=`` or
``$PYCTDB_SOCKET``). Keys and values are bytes (str is encoded as UTF-8).

Volatile databases have a fast path, as CTDB's client: the library opens the node's
volatile LMDB environment itself (the agent says where in its ``attach`` answer), and
``fetch_locked`` is one LMDB write transaction — the environment's writer lock is the
record lock — in which it checks the gate (the agent serves, no recovery: see the
shared layout in ``pyctdb.protocol.fastpath``; it reads it from the agent's memory-mapped
``agent.wait``) and that this node is the record's DMASTER, then reads, and the store
commits. Only when that does not hold does it ask the agent to migrate the record here,
and try again. ``fetch`` reads a record this node masters from a read transaction.
See docs/client.md.
"""

from __future__ import annotations

import base64
import mmap
import os
import threading
import time
import weakref

import lmdb

from pyctdb.client.connection import ApiCallError, Client
from pyctdb.errors import PyctdbError
from pyctdb.protocol.fastpath import (GATE, GATE_AT, GATE_DB, GATE_KEY, WAIT_FILE,
                                      WAIT_SIZE, defer, lease_key, open_env)
from pyctdb.rules.records import HEADER, MAX_KEY, MAX_VALUE, REC_DELETED

__all__ = ["attach", "Database", "LocalRecord", "LockedRecord", "Transaction",
           "DatabaseError"]


class DatabaseError(PyctdbError):
    """A database request failed: its ``code`` (errno name: ENOENT, EINVAL, EDEADLK,
    EIO...) and ``message``; ``str()`` is ``"CODE: message"``."""

    def __init__(self, code, message):
        super().__init__(message, code)
        Exception.__init__(self, f"{code}: {message}")


def _b(x) -> str:
    if isinstance(x, str):
        x = x.encode()
    if not isinstance(x, (bytes, bytearray)):
        raise TypeError("keys and values are bytes or str")
    return base64.b64encode(bytes(x)).decode()


def _unb(s) -> bytes:
    return base64.b64decode(s)


def attach(name, persistent=False, socket=None, timeout=30.0, local=True):
    """Attach database ``name`` on every node (creating it if needed) and return it.
    ``local`` (volatile databases): use this node's LMDB environment directly when
    possible (the fast path); False: every request goes to the agent."""
    db = Database(name, socket=socket, timeout=timeout)
    res = db._call("attach", db_name=name, persistent=bool(persistent))
    db.db_id = res["db_id"]
    db.persistent = res["persistent"]
    db.pnn = res.get("pnn")
    if local and not db.persistent and res.get("volatile_env") and db.pnn is not None:
        try:
            db._local = _Local(res["volatile_env"], name, db.pnn)
        except Exception as exc:  # lmdb.Error, OSError (permissions)
            db.local_error = f"{type(exc).__name__}: {exc}"
        else:
            _DATABASES.add(db)
    return db


# -- the fast path: this node's volatile LMDB environment ----------------------------------
# (module globals bound once: the fetch-lock loop's Python is most of its cost)
_HDR = HEADER
_unpack_hdr = HEADER.unpack_from
_pack_hdr = HEADER.pack
assert HEADER.size == 16  # (the value's offset, spelled 16 in fetch_locked)
_GATE = GATE
_monotonic = time.monotonic
_get_ident = threading.get_ident
_new = object.__new__
#: API commands that may need this node's volatile writer lock: refused to a thread that
#: holds a record through the fast path (the agent would wait for it, and it for the agent)
_WRITERS = frozenset({"readkey", "writekey", "deletekey", "fetch_lock", "fetch_unlock",
                      "wipedb", "attach", "detach", "restoredb"})
#: sub-databases a client may open in a node's volatile environment (the gate's and one a
#: database it attaches; beyond: DbsFullError, so that database goes through the agent).
#: Not the agent's 4096: LMDB copies a table that long at each write transaction's begin
#: (1.0 us more per fetch-lock than with 256, measured).
CLIENT_MAX_DBS = 256
#: fast-path attempts (each after a migration) before a fetch-lock goes through the agent
MIGRATE_TRIES = 3
_ENVS = {}                       # path -> _Env: LMDB allows one per file per process
_ENVS_LOCK = threading.Lock()
_DATABASES = weakref.WeakSet()   # Databases with a fast path (dropped in a forked child)


class _Env:
    """This process's handle on one node's volatile LMDB environment."""

    __slots__ = ("env", "gate", "holder", "wait", "until", "leases")

    def __init__(self, path, env=None):
        # the agent's agent.wait (gate.WaitFlag): its wait flag and the gate; without it
        # (an agent from before the gate was there, or none) no fast path
        try:
            with open(os.path.join(path, WAIT_FILE), "rb") as f:
                self.wait = mmap.mmap(f.fileno(), WAIT_SIZE, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise OSError(f"{WAIT_FILE} (the gate of the agent, {WAIT_SIZE} bytes): "
                          f"{exc}") from None
        mv = memoryview(self.wait)
        self.until = mv[GATE_AT:GATE_AT + 8].cast("d")         # [0]: gate.GATE's fields,
        self.leases = mv[GATE_AT + 8:GATE_AT + 12].cast("I")   # read only under the lock
        self.env = env if env is not None else open_env(path, persistent=False, create=False,
                                                        max_dbs=CLIENT_MAX_DBS)
        self.gate = self.env.open_db(GATE_DB)
        self.holder = 0   # the thread holding the writer lock through the fast path

    @classmethod
    def get(cls, path, env=None):
        """(``env``: this process has the environment open already: the tests, which
        are their own agent.)"""
        with _ENVS_LOCK:
            e = _ENVS.get(path)
            if e is None:
                e = _ENVS[path] = cls(path, env)
            return e


class _Local:
    """One database's fast path: its handle in the node's environment."""

    __slots__ = ("e", "env", "begin", "db", "gate", "pnn", "wait", "until", "leases")

    def __init__(self, path, name, pnn, env=None):
        self.e = e = _Env.get(path, env)
        self.env = e.env
        self.wait = e.wait
        self.until = e.until
        self.leases = e.leases
        self.begin = self.env.begin
        self.gate = e.gate
        self.db = self.env.open_db(b"db:" + name.encode(), create=False)
        self.pnn = pnn


def _forked():
    # An LMDB environment belongs to the process that opened it: a forked child goes
    # through the agent (better: attach again in the child).
    global _ENVS_LOCK
    for db in list(_DATABASES):
        db._local = None
    _DATABASES.clear()
    _ENVS.clear()
    _ENVS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def _key(key):
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise TypeError("keys and values are bytes or str")


class Database:
    """One clustered database from a program: records of a volatile database
    (:meth:`fetch_locked`, :meth:`fetch`, :meth:`store`, :meth:`delete`, through the fast
    path when it can), transactions of a persistent one; made by :func:`attach`."""

    def __init__(self, name, socket=None, timeout=30.0):
        self.name = name
        self.db_id = None
        self.persistent = None
        self.pnn = None
        self._local = None       # the fast path (_Local), if this node's LMDB could be opened
        self.local_error = None  # why not, if it could not
        self._client = Client(socket, timeout=timeout)

    @property
    def local(self):
        """Whether this database uses the fast path (this node's LMDB directly)."""
        return self._local is not None

    def _call(self, command, **args):
        loc = self._local
        if (loc is not None and loc.e.holder == _get_ident() and command in _WRITERS
                and _holds_lock(loc)):
            raise DatabaseError("EDEADLK", f"{command} while this thread holds a record of "
                                "this node locked (fetch_locked): release it first")
        try:
            return self._client.call(command, **args)
        except ApiCallError as exc:
            raise DatabaseError(exc.code, exc.message) from None

    def close(self):
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- volatile databases ---------------------------------------------------------------
    def fetch_locked(self, key, lease=30.0, _tries=0):
        """Lock record ``key`` on this node (migrating it here). Use as a context
        manager; the lock is released on exit (or by ``store``/``delete``).

        Fast path: one LMDB write transaction on this node's volatile environment,
        without a request to the agent when this node is the record's DMASTER; it holds
        the node's volatile writer lock until released (keep the block short). Through
        the agent otherwise: released on exit, when this connection closes, and in any
        case after ``lease`` seconds."""
        if key.__class__ is not bytes:
            key = _key(key)
        loc = self._local
        if loc is not None:
            if loc.wait[0]:  # the agent waits for the writer lock: it goes first
                defer(loc.wait)
            # (positional arguments: py-lmdb's keyword parsing costs 20% here)
            try:
                txn = loc.begin(loc.db, None, True)
            except Exception as exc:
                raise self._lmdb_error(exc) from None
            try:
                # the gate, in agent.wait: read now that this thread holds the writer lock
                # (the agent writes it only while it holds it: gate.py)
                if loc.until[0] > _monotonic() and not (
                        loc.leases[0] and txn.get(lease_key(self.name, key), None,
                                                  loc.gate) is not None):
                    raw = txn.get(key)
                    if raw is not None:
                        rsn, dmaster, flags = _unpack_hdr(raw)
                        if dmaster == loc.pnn:
                            loc.e.holder = _get_ident()
                            rec = _new(LocalRecord)  # (no __init__ call: 0.1 us less)
                            rec._txn = txn
                            rec._loc = loc
                            rec.key = key
                            rec.rsn = rsn
                            rec.value = None if flags & REC_DELETED else raw[16:]
                            return rec
                txn.abort()
            except BaseException as exc:
                txn.abort()
                if isinstance(exc, Exception) and not isinstance(exc, DatabaseError):
                    raise self._lmdb_error(exc) from None
                raise
            if _tries < MIGRATE_TRIES:
                # not here, in recovery, or leased through the agent: the agent migrates
                # the record here (waiting for the recovery or the lease); then again
                self._call("readkey", db_name=self.name, key=_b(key))
                return self.fetch_locked(key, lease, _tries + 1)
            # taken away again each time (a busy record): the agent holds it for us
        res = self._call("fetch_lock", db_name=self.name, key=_b(key), lease=lease)
        return LockedRecord(self, key, res)

    def _lmdb_error(self, exc):
        # py-lmdb raises its plain lmdb.Error for a second write transaction in one
        # thread: only its text tells it apart (a third-party library's error)
        if "while another write transaction is active on the same thread" in str(exc):
            return DatabaseError("EDEADLK", "fetch_locked while this thread holds a "
                                 "record of this node locked: release it first")
        if isinstance(exc, lmdb.BadValsizeError):
            return DatabaseError("EINVAL", f"key must be 1 to {MAX_KEY} bytes")
        return DatabaseError("EIO", f"{self.name}: local LMDB: {exc}")

    def fetch(self, key):
        """The value of ``key`` (None if absent). Volatile: read from this node's LMDB
        when this node is the record's DMASTER, otherwise migrated here, as CTDB's
        readkey; persistent: this node's replica."""
        if self.persistent:
            res = self._call("pfetch", db_name=self.name, key=_b(key))
            return _unb(res["value"]) if res["exists"] else None
        if key.__class__ is not bytes:
            key = _key(key)
        loc = self._local
        if loc is not None:
            try:
                with loc.begin(loc.db) as txn:
                    g = txn.get(GATE_KEY, None, loc.gate)
                    raw = txn.get(key)
            except Exception as exc:
                raise self._lmdb_error(exc) from None
            if g is not None and raw is not None and _GATE.unpack(g)[0] > _monotonic():
                rsn, dmaster, flags = _unpack_hdr(raw)
                if dmaster == loc.pnn:
                    return None if flags & REC_DELETED else raw[_HDR.size:]
        res = self._call("readkey", db_name=self.name, key=_b(key))
        return _unb(res["value"]) if res["exists"] else None

    def store(self, key, value):
        if self.persistent:
            self._call("pstore", db_name=self.name, key=_b(key), value=_b(value))
        elif self._local is not None:
            with self.fetch_locked(key) as rec:
                rec.store(value)
        else:
            self._call("writekey", db_name=self.name, key=_b(key), value=_b(value))

    def delete(self, key):
        if self.persistent:
            self._call("pdelete", db_name=self.name, key=_b(key))
        elif self._local is not None:
            with self.fetch_locked(key) as rec:
                rec.delete()
        else:
            self._call("deletekey", db_name=self.name, key=_b(key))

    def traverse(self):
        """(key, value) of every record this node holds (volatile: its copies, which may
        be older than the DMASTER's; persistent: the replica)."""
        res = self._call("catdb", db_name=self.name)
        return [(_unb(r["key"]), _unb(r["value"])) for r in res["records"]]

    # -- persistent databases ---------------------------------------------------------------
    def transaction(self):
        return Transaction(self)

    def seqnum(self):
        return self._call("getdbseqnum", db_name=self.name)["seqnum"]

    def wipe(self):
        self._call("wipedb", db_name=self.name)


class LocalRecord:
    """A record held through the fast path: an open LMDB write transaction on this
    node's volatile environment (its writer lock). ``value`` (None if the record does
    not exist), ``exists``, ``rsn``; :meth:`store` / :meth:`delete` write it (RSN + 1)
    and release it, leaving the block (or :meth:`release`) without them releases it
    unchanged, and so does dropping it (py-lmdb aborts a transaction it frees).
    Made by :meth:`Database.fetch_locked` only."""

    __slots__ = ("key", "value", "rsn", "_txn", "_loc")

    @property
    def exists(self):
        return self.value is not None

    def store(self, value, _flags=0):
        """Store ``value`` (bytes, or str as UTF-8) and release the lock."""
        if value.__class__ is not bytes:
            value = _key(value)
        if len(value) > MAX_VALUE:
            raise DatabaseError("EINVAL", f"value of {len(value)} bytes is larger than the "
                                f"limit ({MAX_VALUE} bytes)")
        txn = self._txn
        if txn is None:
            raise DatabaseError("EINVAL", "the record was already stored or released")
        self._txn = None
        loc = self._loc
        loc.e.holder = 0
        rsn = self.rsn + 1
        try:
            txn.put(self.key, _pack_hdr(rsn, loc.pnn, _flags) + value)
            # the gate again, right before the commit: it closes when this node is
            # fenced (its lease or its agent's deadline ended: another node may take the
            # record from now on), and a write after that would be lost
            if loc.until[0] <= _monotonic():
                txn.abort()
                raise DatabaseError("EAGAIN", "not stored: this node stopped serving its "
                                    "records while this one was held (its agent is gone, "
                                    "paused or cut off); fetch it again")
            txn.commit()
        except BaseException:
            txn.abort()
            raise
        self.rsn = rsn
        self.value = value

    def delete(self):
        """Delete the record (it stays as a deleted record: docs/databases.md) and
        release the lock."""
        self.store(b"", REC_DELETED)
        self.value = None

    def release(self):
        txn = self._txn
        if txn is not None:
            self._txn = None
            self._loc.e.holder = 0
            txn.abort()

    def __enter__(self):
        return self

    def __exit__(self, t, v, tb):
        if self._txn is not None:
            self.release()


def _holds_lock(loc):
    """Whether this thread holds ``loc``'s writer lock through the fast path (its
    ``holder`` says so): a record dropped without release was aborted when py-lmdb freed
    its transaction, but left ``holder`` set. Asked of py-lmdb, which refuses a second
    write transaction in a thread that has one (rare: only when ``holder`` names this
    thread)."""
    try:
        loc.begin(None, None, True).abort()
    except Exception as exc:  # lmdb.Error
        # py-lmdb's plain lmdb.Error: only its text says it is this thread's own write
        # transaction (a third-party library's error)
        return "same thread" in str(exc)
    loc.e.holder = 0
    return False


class LockedRecord:
    """A record held through the agent (fetch_lock / fetch_unlock), same interface as
    :class:`LocalRecord`."""

    def __init__(self, db, key, res):
        self.db = db
        self.key = key
        self._handle = res["handle"]
        self.exists = res["exists"]
        self.value = _unb(res["value"]) if res["exists"] else None
        self.rsn = res["rsn"]
        self._done = False

    def store(self, value):
        """Store ``value`` and release the lock."""
        self._finish(store=True, value=_b(value))
        self.value, self.exists = (value.encode() if isinstance(value, str) else value), True

    def delete(self):
        self._finish(store=True, value=None)
        self.value, self.exists = None, False

    def _finish(self, **kw):
        if self._done:
            raise DatabaseError("EINVAL", "the record was already stored or released")
        self._done = True
        self.db._call("fetch_unlock", handle=self._handle, **kw)

    def release(self):
        if not self._done:
            self._finish()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


class Transaction:
    """Writes buffered here and committed at once on every node by :meth:`commit`
    (or at the end of a ``with`` block without an exception); reads see them."""

    def __init__(self, db):
        if db.persistent is False:
            raise DatabaseError("EINVAL", f"{db.name} is volatile: transactions are for "
                                          "persistent databases")
        self.db = db
        self.writes = {}
        self.seqnum = None

    def fetch(self, key):
        k = key.encode() if isinstance(key, str) else bytes(key)
        if k in self.writes:
            return self.writes[k]
        res = self.db._call("pfetch", db_name=self.db.name, key=_b(k))
        return _unb(res["value"]) if res["exists"] else None

    def store(self, key, value):
        k = key.encode() if isinstance(key, str) else bytes(key)
        self.writes[k] = value.encode() if isinstance(value, str) else bytes(value)

    def delete(self, key):
        k = key.encode() if isinstance(key, str) else bytes(key)
        self.writes[k] = None

    def commit(self):
        res = self.db._call("ptrans", db_name=self.db.name, writes=[
            [_b(k), None if v is None else _b(v)] for k, v in self.writes.items()])
        self.seqnum = res["seqnum"]
        self.writes = {}
        return self.seqnum

    def cancel(self):
        self.writes = {}

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.commit()
        else:
            self.cancel()
