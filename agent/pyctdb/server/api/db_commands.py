"""The JSON API's database commands (docs/api.md, "Databases"): keys and values travel
base64-encoded (``key``, ``value``), as they are bytes; a record is an object
``{"key", "rsn", "dmaster", "flags", "value"}``. The operations are
:class:`pyctdb.server.api.db_ops.DatabaseOperations`'."""

from __future__ import annotations

import base64
import binascii

from pyctdb.errors import ApiError


def _bytes(what, s):
    if not isinstance(s, str):
        raise ApiError("EINVAL", f"{what} must be a base64 string")
    try:
        return base64.b64decode(s.encode(), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError("EINVAL", f"{what} is not valid base64") from None


def _b64(b):
    return base64.b64encode(b).decode()


def _rec(key, rec):
    return {"key": _b64(key), "rsn": rec.rsn, "dmaster": rec.dmaster, "flags": rec.flags,
            "value": _b64(rec.value)}


def commands(ops):
    """The database commands on ``ops.databases``, and those of them that take the
    connection (``conn``)."""
    dbs = ops.databases

    async def attach(db_name, persistent=False):
        return await dbs.attach(db_name, persistent)

    async def getdbmap():
        return await dbs.getdbmap()

    async def catdb(db_name):
        res = await dbs.catdb(db_name)
        res["records"] = [_rec(k, r) for k, r in res["records"]]
        return res

    async def readkey(db_name, key):
        k = _bytes("key", key)
        rec = await dbs.readkey(db_name, k)
        return {"exists": not rec.deleted, **_rec(k, rec)}

    async def writekey(db_name, key, value):
        k = _bytes("key", key)
        return _rec(k, await dbs.writekey(db_name, k, _bytes("value", value)))

    async def deletekey(db_name, key):
        k = _bytes("key", key)
        old, rec = await dbs.deletekey(db_name, k)
        return {"existed": not old.deleted, **_rec(k, rec)}

    async def fetch_lock(db_name, key, lease=None, conn=None):
        k = _bytes("key", key)
        handle, rec = await dbs.fetch_lock(db_name, k, lease, conn)
        return {"handle": handle, "exists": not rec.deleted, **_rec(k, rec)}

    async def fetch_unlock(handle, store=False, value=None, conn=None):
        v = _bytes("value", value) if (store and value is not None) else None
        return await dbs.fetch_unlock(handle, store, v, conn)

    async def pfetch(db_name, key):
        k = _bytes("key", key)
        rec = await dbs.pfetch(db_name, k)
        if rec is None:
            return {"exists": False, "key": key, "value": None}
        return {"exists": True, **_rec(k, rec)}

    async def pstore(db_name, key, value):
        return await dbs.pstore(db_name, _bytes("key", key), _bytes("value", value))

    async def pdelete(db_name, key):
        return await dbs.pdelete(db_name, _bytes("key", key))

    async def ptrans(db_name, writes):
        if not isinstance(writes, list) or not all(
                isinstance(w, list) and len(w) == 2 for w in writes):
            raise ApiError("EINVAL", "writes must be a list of [key, value or null]")
        ws = [(_bytes("key", k), None if v is None else _bytes("value", v))
              for k, v in writes]
        return await dbs.ptrans(db_name, ws)

    cmds = {f.__name__: f for f in (
        attach, getdbmap, catdb, readkey, writekey, deletekey, fetch_lock, fetch_unlock,
        pfetch, pstore, pdelete, ptrans)}
    cmds.update({name: getattr(dbs, name) for name in (
        "getdbseqnum", "wipedb", "detach", "getdbstatus", "backupdb", "restoredb")})
    return cmds, {"fetch_lock", "fetch_unlock"}
