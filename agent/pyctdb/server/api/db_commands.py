"""Local API commands of the database layer (docs/api.md, "Databases").

Keys and values travel base64-encoded (``key``, ``value``), as they are bytes."""

from __future__ import annotations

import base64
import binascii
import os

from pyctdb.rules import records


def _api_error(code, message):
    from pyctdb.errors import ApiError
    return ApiError(code, message)


def _bytes(what, s):
    if not isinstance(s, str):
        raise _api_error("EINVAL", f"{what} must be a base64 string")
    try:
        return base64.b64decode(s.encode(), validate=True)
    except (binascii.Error, ValueError):
        raise _api_error("EINVAL", f"{what} is not valid base64") from None


def _checked(what, check):
    def parse(s):
        try:
            return check(_bytes(what, s))
        except ValueError as exc:
            raise _api_error("EINVAL", str(exc)) from None
    return parse


_key = _checked("key", records.check_key)
_value = _checked("value", records.check_value)


def _b64(b):
    return base64.b64encode(b).decode()


def _rec(key, rec):
    return {"key": _b64(key), "rsn": rec.rsn, "dmaster": rec.dmaster, "flags": rec.flags,
            "value": _b64(rec.value)}


def db_command(server, fn, errors=()):
    """An API handler calling ``fn(db, **args)`` with ``server``'s database layer;
    DbError (and the ``(exception class, code)`` pairs of ``errors``) become API errors."""
    from pyctdb.errors import DbError

    async def handler(**kw):
        db = server.db
        if db is None:
            raise _api_error("EIO", "this agent runs without the database layer")
        try:
            return await fn(db, **kw)
        except DbError as exc:
            raise _api_error(exc.code, exc.message) from None
        except tuple(cls for cls, _code in errors) as exc:
            code = next(code for cls, code in errors if isinstance(exc, cls))
            raise _api_error(code, str(exc)) from None
    handler.__name__ = fn.__name__
    return handler


def commands(server):
    """The database commands for ApiServer ``server`` (its ``db``: a Databases or None)."""
    from pyctdb.errors import DbError

    def wrap(fn):
        return db_command(server, fn)

    async def attach(db, db_name, persistent=False):
        if not int(db.cluster.tunables.get("AllowClientDBAttach")):  # as CTDB (detach)
            raise _api_error("EPERM", f"attach of {db_name} refused: AllowClientDBAttach "
                                      f"is 0 on node {db.pnn}")
        res = await db.attach(db_name, bool(persistent))
        # for the client library's fast path (docs/client.md): this node's volatile LMDB
        # environment, which its clients open themselves
        st = db.stores[False]
        res.update(pnn=db.pnn, volatile_env=None if st.env is None
                   else os.path.abspath(st.path))
        return res

    async def getdbmap(db):
        dbs, problems = db.dbmap()
        return {"pnn": db.pnn, "dbs": dbs, "problems": problems}

    def _volatile(db, name):
        st, _ = db.find(name)
        if st.persistent:
            raise DbError("EINVAL", f"{name} is a persistent database: use pfetch, pstore, "
                                    "pdelete")

    def _persistent(db, name):
        st, _ = db.find(name)
        if not st.persistent:
            raise DbError("EINVAL", f"{name} is a volatile database: use readkey, writekey, "
                                    "deletekey")

    async def catdb(db, db_name):
        st, _ = db.find(db_name)
        recs = [_rec(k, r) for k, r in await db.traverse(db_name)]
        return {"db_name": db_name, "persistent": st.persistent, "pnn": db.pnn,
                "records": recs}

    async def readkey(db, db_name, key):
        _volatile(db, db_name)
        k = _key(key)
        rec, _epoch = await db.lock(db_name, k)
        db.unlock(db_name, k)
        return {"exists": not rec.deleted, **_rec(k, rec)}

    async def writekey(db, db_name, key, value):
        _volatile(db, db_name)
        k, v = _key(key), _value(value)
        _rec0, epoch = await db.lock(db_name, k)
        try:
            rec = await db.store_locked(db_name, k, epoch, v)
        finally:
            db.unlock(db_name, k)
        return _rec(k, rec)

    async def deletekey(db, db_name, key):
        _volatile(db, db_name)
        k = _key(key)
        old, epoch = await db.lock(db_name, k)
        try:
            rec = await db.store_locked(db_name, k, epoch, None)
        finally:
            db.unlock(db_name, k)
        return {"existed": not old.deleted, **_rec(k, rec)}

    owned = {}  # connection -> handles of the fetch-locks it took

    def _closed(conn):
        for h in owned.pop(conn, ()):
            server.db._expire(h, "released: its client closed the connection")

    async def fetch_lock(db, db_name, key, lease=None, conn=None):
        _volatile(db, db_name)
        k = _key(key)
        if lease is not None and (isinstance(lease, bool) or not isinstance(
                lease, (int, float)) or not 0 < lease <= 3600):
            raise _api_error("EINVAL", "lease must be a number of seconds in (0, 3600]")
        handle, rec = await db.lease(db_name, k, lease or 30.0)
        if conn is not None:  # released when the connection closes, or its lease ends
            mine = owned.get(conn)
            if mine is None:
                mine = owned[conn] = set()
                conn.on_close.append(lambda: _closed(conn))
            elif len(mine) > 64:  # forget those that expired
                mine.intersection_update(db._leases)
            mine.add(handle)
        return {"handle": handle, "exists": not rec.deleted, **_rec(k, rec)}

    async def fetch_unlock(db, handle, store=False, value=None, conn=None):
        v = _value(value) if (store and value is not None) else None
        owned.get(conn, set()).discard(handle)
        rec = await db.release(handle, bool(store), v)
        return {"stored": rec is not None}

    async def pfetch(db, db_name, key):
        _persistent(db, db_name)
        k = _key(key)
        await db.ready()
        st, _ = db.usable(db_name)
        rec = st.get(db_name, k)
        if rec is None or rec.deleted:
            return {"exists": False, "key": key, "value": None}
        return {"exists": True, **_rec(k, rec)}

    async def pstore(db, db_name, key, value):
        _persistent(db, db_name)
        seq = await db.commit(db_name, [(_key(key), _value(value))])
        return {"seqnum": seq}

    async def pdelete(db, db_name, key):
        _persistent(db, db_name)
        seq = await db.commit(db_name, [(_key(key), None)])
        return {"seqnum": seq}

    async def ptrans(db, db_name, writes):
        _persistent(db, db_name)
        if not isinstance(writes, list) or not all(
                isinstance(w, list) and len(w) == 2 for w in writes):
            raise _api_error("EINVAL", "writes must be a list of [key, value or null]")
        ws = [(_key(k), None if v is None else _value(v)) for k, v in writes]
        if not ws:
            return {"seqnum": db.find(db_name)[1]["seqnum"], "writes": 0}
        return {"seqnum": await db.commit(db_name, ws), "writes": len(ws)}

    async def getdbseqnum(db, db_name):
        st, meta = db.usable(db_name)
        return {"db_name": db_name, "seqnum": meta["seqnum"]}

    async def wipedb(db, db_name):
        nodes = await db.wipe(db_name)
        return {"db_name": db_name, "nodes": nodes}

    # -- detach, getdbstatus, backupdb, restoredb (db/maint.py) ---------------------------
    async def detach(db, db_names):
        if isinstance(db_names, str):
            db_names = [db_names]
        if not isinstance(db_names, list) or not db_names or not all(
                isinstance(n, str) for n in db_names):
            raise _api_error("EINVAL", "db_names must be a non-empty list of names")
        return await db.maint.detach(db_names)

    async def getdbstatus(db, db_name):
        return db.maint.status(db_name)

    def _path(what, p):
        if not isinstance(p, str) or not os.path.isabs(p):
            raise _api_error("EINVAL", f"{what} must be an absolute path")
        return p

    async def backupdb(db, db_name, file):
        try:
            return await db.maint.backup(db_name, _path("file", file))
        except OSError as exc:
            raise _api_error("EIO", f"cannot write backup file {file}: {exc.strerror}") \
                from None

    async def restoredb(db, file, db_name=None):
        return await db.maint.restore(_path("file", file), db_name)

    server.conn_commands |= {"fetch_lock", "fetch_unlock"}
    cmds = {f.__name__: wrap(f) for f in (
        attach, getdbmap, catdb, readkey, writekey, deletekey, fetch_lock, fetch_unlock,
        pfetch, pstore, pdelete, ptrans, getdbseqnum, wipedb,
        detach, getdbstatus, backupdb, restoredb)}
    return cmds
