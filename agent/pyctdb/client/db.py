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

Everything goes through this node's agent (its local API socket: ``socket=`` or
``$PYCTDB_SOCKET``). Keys and values are bytes (str is encoded as UTF-8).

Not yet: reading a record straight from the local LMDB when this node is its DMASTER
(every call is one round trip to the agent).
"""

from __future__ import annotations

import base64

from ..apiclient import ApiCallError, Client

__all__ = ["attach", "Database", "LockedRecord", "Transaction", "DatabaseError"]


class DatabaseError(Exception):
    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _b(x) -> str:
    if isinstance(x, str):
        x = x.encode()
    if not isinstance(x, (bytes, bytearray)):
        raise TypeError("keys and values are bytes or str")
    return base64.b64encode(bytes(x)).decode()


def _unb(s) -> bytes:
    return base64.b64decode(s)


def attach(name, persistent=False, socket=None, timeout=30.0):
    """Attach database ``name`` on every node (creating it if needed) and return it."""
    db = Database(name, socket=socket, timeout=timeout)
    res = db._call("attach", db_name=name, persistent=bool(persistent))
    db.db_id = res["db_id"]
    db.persistent = res["persistent"]
    return db


class Database:
    def __init__(self, name, socket=None, timeout=30.0):
        self.name = name
        self.db_id = None
        self.persistent = None
        self._client = Client(socket, timeout=timeout)

    def _call(self, command, **args):
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
    def fetch_locked(self, key, lease=30.0):
        """Lock record ``key`` on this node (migrating it here). Use as a context
        manager; the lock is released on exit, and in any case after ``lease`` seconds."""
        res = self._call("fetch_lock", db_name=self.name, key=_b(key), lease=lease)
        return LockedRecord(self, key, res)

    def fetch(self, key):
        """The value of ``key`` (None if absent). Volatile: migrates the record here, as
        CTDB's readkey; persistent: this node's replica."""
        if self.persistent:
            res = self._call("pfetch", db_name=self.name, key=_b(key))
        else:
            res = self._call("readkey", db_name=self.name, key=_b(key))
        return _unb(res["value"]) if res["exists"] else None

    def store(self, key, value):
        if self.persistent:
            self._call("pstore", db_name=self.name, key=_b(key), value=_b(value))
        else:
            self._call("writekey", db_name=self.name, key=_b(key), value=_b(value))

    def delete(self, key):
        if self.persistent:
            self._call("pdelete", db_name=self.name, key=_b(key))
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


class LockedRecord:
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
