"""Node operations on the databases (docs/api.md, "Databases"): attach, the map, records
of volatile databases (read, write, delete, fetch-lock), persistent ones (fetch, store,
delete, transactions), traverse, wipe, detach, status, backup and restore.

Keys and values are bytes here (each front end decodes its own form); a record is
returned as the store's record (``rsn``, ``dmaster``, ``flags``, ``value``,
``deleted``). Errors: DbError or ApiError with their code."""

from __future__ import annotations

import os

from pyctdb.errors import ApiError, DbError
from pyctdb.rules import records


def _checked(check, b):
    try:
        return check(b)
    except ValueError as exc:
        raise ApiError("EINVAL", str(exc)) from None


def _path(what, p):
    if not isinstance(p, str) or not os.path.isabs(p):
        raise ApiError("EINVAL", f"{what} must be an absolute path")
    return p


class DatabaseOperations:
    """The database layer (``databases``, a Databases, or None: this agent runs without
    it) for clients; fetch-locks a client connection holds are released when it closes."""

    def __init__(self, databases):
        self.databases = databases
        self._owned = {}  # client connection -> handles of the fetch-locks it took

    def _db(self):
        if self.databases is None:
            raise ApiError("EIO", "this agent runs without the database layer")
        return self.databases

    def _volatile(self, name):
        db = self._db()
        st, _ = db.find(name)
        if st.persistent:
            raise DbError("EINVAL", f"{name} is a persistent database: use pfetch, pstore, "
                                    "pdelete")
        return db

    def _persistent(self, name):
        db = self._db()
        st, _ = db.find(name)
        if not st.persistent:
            raise DbError("EINVAL", f"{name} is a volatile database: use readkey, writekey, "
                                    "deletekey")
        return db

    async def attach(self, db_name, persistent=False):
        db = self._db()
        if not int(db.cluster.tunables.get("AllowClientDBAttach")):  # as CTDB (detach)
            raise ApiError("EPERM", f"attach of {db_name} refused: AllowClientDBAttach "
                                    f"is 0 on node {db.pnn}")
        res = await db.attach(db_name, bool(persistent))
        # for the client library's fast path (docs/client.md): this node's volatile LMDB
        # environment, which its clients open themselves
        st = db.stores[False]
        res.update(pnn=db.pnn, volatile_env=None if st.env is None
                   else os.path.abspath(st.path))
        return res

    async def getdbmap(self):
        db = self._db()
        dbs, problems = db.dbmap()
        return {"pnn": db.pnn, "dbs": dbs, "problems": problems}

    async def catdb(self, db_name):
        """``{"db_name", "persistent", "pnn", "records": [(key, record)]}``."""
        db = self._db()
        st, _ = db.find(db_name)
        recs = list(await db.traverse(db_name))
        return {"db_name": db_name, "persistent": st.persistent, "pnn": db.pnn,
                "records": recs}

    # -- volatile databases ----------------------------------------------------------
    async def readkey(self, db_name, key):
        """The record of ``key`` (``deleted``: it does not exist)."""
        db = self._volatile(db_name)
        k = _checked(records.check_key, key)
        rec, _epoch = await db.lock(db_name, k)
        db.unlock(db_name, k)
        return rec

    async def writekey(self, db_name, key, value):
        db = self._volatile(db_name)
        k, v = _checked(records.check_key, key), _checked(records.check_value, value)
        _rec0, epoch = await db.lock(db_name, k)
        try:
            return await db.store_locked(db_name, k, epoch, v)
        finally:
            db.unlock(db_name, k)

    async def deletekey(self, db_name, key):
        """(the record before, the record after)."""
        db = self._volatile(db_name)
        k = _checked(records.check_key, key)
        old, epoch = await db.lock(db_name, k)
        try:
            rec = await db.store_locked(db_name, k, epoch, None)
        finally:
            db.unlock(db_name, k)
        return old, rec

    def _closed(self, conn):
        for h in self._owned.pop(conn, ()):
            self.databases._expire(h, "released: its client closed the connection")

    async def fetch_lock(self, db_name, key, lease=None, conn=None):
        """Lock ``key`` for ``lease`` seconds (30 when None): (handle, record). Released
        when the client connection ``conn`` closes, or its lease ends."""
        db = self._volatile(db_name)
        k = _checked(records.check_key, key)
        if lease is not None and (isinstance(lease, bool) or not isinstance(
                lease, (int, float)) or not 0 < lease <= 3600):
            raise ApiError("EINVAL", "lease must be a number of seconds in (0, 3600]")
        handle, rec = await db.lease(db_name, k, lease or 30.0)
        if conn is not None:
            mine = self._owned.get(conn)
            if mine is None:
                mine = self._owned[conn] = set()
                conn.on_close.append(lambda: self._closed(conn))
            elif len(mine) > 64:  # forget those that expired
                mine.intersection_update(db._leases)
            mine.add(handle)
        return handle, rec

    async def fetch_unlock(self, handle, store=False, value=None, conn=None):
        """Release a fetch-lock, storing ``value`` (bytes, or None: delete) if
        ``store``; whether it stored."""
        db = self._db()
        v = _checked(records.check_value, value) if (store and value is not None) else None
        self._owned.get(conn, set()).discard(handle)
        rec = await db.release(handle, bool(store), v)
        return {"stored": rec is not None}

    # -- persistent databases --------------------------------------------------------
    async def pfetch(self, db_name, key):
        """The record of ``key``, or None when it does not exist."""
        db = self._persistent(db_name)
        k = _checked(records.check_key, key)
        await db.ready()
        st, _ = db.usable(db_name)
        rec = await st.read(db_name, k)
        return None if rec is None or rec.deleted else rec

    async def pstore(self, db_name, key, value):
        db = self._persistent(db_name)
        k, v = _checked(records.check_key, key), _checked(records.check_value, value)
        return {"seqnum": await db.commit(db_name, [(k, v)])}

    async def pdelete(self, db_name, key):
        db = self._persistent(db_name)
        k = _checked(records.check_key, key)
        return {"seqnum": await db.commit(db_name, [(k, None)])}

    async def ptrans(self, db_name, writes):
        """One transaction of ``writes`` [(key, value or None: delete)]."""
        db = self._persistent(db_name)
        ws = [(_checked(records.check_key, k),
               None if v is None else _checked(records.check_value, v)) for k, v in writes]
        if not ws:
            return {"seqnum": db.find(db_name)[1]["seqnum"], "writes": 0}
        return {"seqnum": await db.commit(db_name, ws), "writes": len(ws)}

    # -- whole databases -------------------------------------------------------------
    async def getdbseqnum(self, db_name):
        _st, meta = self._db().usable(db_name)
        return {"db_name": db_name, "seqnum": meta["seqnum"]}

    async def wipedb(self, db_name):
        return {"db_name": db_name, "nodes": await self._db().wipe(db_name)}

    async def detach(self, db_names):
        db = self._db()
        if isinstance(db_names, str):
            db_names = [db_names]
        if not isinstance(db_names, list) or not db_names or not all(
                isinstance(n, str) for n in db_names):
            raise ApiError("EINVAL", "db_names must be a non-empty list of names")
        return await db.maint.detach(db_names)

    async def getdbstatus(self, db_name):
        return await self._db().maint.status(db_name)

    async def backupdb(self, db_name, file):
        db = self._db()
        try:
            return await db.maint.backup(db_name, _path("file", file))
        except OSError as exc:
            raise ApiError("EIO", f"cannot write backup file {file}: {exc.strerror}") \
                from None

    async def restoredb(self, file, db_name=None):
        return await self._db().maint.restore(_path("file", file), db_name)
