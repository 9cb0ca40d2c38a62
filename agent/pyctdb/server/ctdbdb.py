"""CTDB's socket, its database part: what Samba's smbd, winbindd and ``net`` ask of
ctdbd for their clustered databases (source3/lib/dbwrap/dbwrap_ctdb.c and
ctdbd_conn.c), answered from the TDB backend (:mod:`pyctdb.server.db.tdbstore`).

- DB_ATTACH / DB_ATTACH_PERSISTENT (the name, NUL-terminated): the database is attached
  as a TDB file here and on every other member; the answer is its db_id.
- GET_DBMAP, GET_DBNAME, GETDBPATH, DB_GET_HEALTH, GET_DB_SEQNUM (every database,
  LMDB's too), DB_OPEN_FLAGS (the tdb_open flags smbd must use), ENABLE_SEQNUM,
  SET_DB_READONLY (accepted: pyctdb hands out no read-only copies, a read migrates the
  record), SCHEDULE_FOR_DELETION (accepted: vacuuming finds deleted records itself).
- REQ_CALL: smbd found that this node is not the record's DMASTER (it read the ltdb
  header in its own copy of the file); the record is migrated here (the migration of
  :mod:`pyctdb.server.db.migration`, the same as for pyctdb's own clients) and the call
  answered: CTDB_NULL_FUNC nothing, CTDB_FETCH_FUNC the value, CTDB_FETCH_WITH_HEADER_FUNC
  the ltdb header and the value.
- TRANS3_COMMIT (a marshall buffer of records with their ltdb headers, the sequence
  number record among them): applied as it is on every member.
"""

from __future__ import annotations

import asyncio
import logging

from pyctdb.errors import DbError, PyctdbError
from pyctdb.server.tasks import spawn
from pyctdb.protocol.ctdb import marshal as M
from pyctdb.protocol.ctdb import packet as P
from pyctdb.rules.records import REC_DELETED
from pyctdb.server.db.tdbfile import ltdb_pack

log = logging.getLogger(__name__)

MAX_NAME = 255
CALL_TIMEOUT = 30.0  # seconds a REQ_CALL's migration may take (contention included)


class CtdbDatabases:
    """The database controls and REQ_CALL of CTDB's socket, over ``ops`` (the node's
    NodeOperations: ``ops.databases`` for the dbmap, ``ops.tdb`` for the rest)."""

    def __init__(self, ops):
        self.ops = ops
        self.tdb = ops.tdb
        self._tasks = set()

    def handlers(self):
        return {
            M.DB_ATTACH: self._attach(False), M.DB_ATTACH_PERSISTENT: self._attach(True),
            M.DB_OPEN_FLAGS: self._open_flags, M.ENABLE_SEQNUM: self._enable_seqnum,
            M.SET_DB_READONLY: self._accepted, M.SCHEDULE_FOR_DELETION: self._accepted,
            M.TRANS3_COMMIT: self._trans3_commit,
            M.TRAVERSE_START: self._traverse_start, M.TRAVERSE_START_EXT: self._traverse_start,
            M.GET_DBMAP: self._get_dbmap, M.GET_DBNAME: self._db_field("name"),
            M.GETDBPATH: self._db_field("path"), M.DB_GET_HEALTH: self._db_health,
            M.GET_DB_SEQNUM: self._get_db_seqnum,
        }

    # -- controls ------------------------------------------------------------------------
    async def _get_dbmap(self, conn, c):
        dbs = (await self.ops.databases.getdbmap())["dbs"]
        return 0, M.dbid_map([(d["db_id"], M.DB_FLAGS_PERSISTENT if d["persistent"] else 0)
                              for d in dbs])

    async def _db(self, db_id):
        """The dbmap entry of ``db_id`` (ValueError: no such database here)."""
        for d in (await self.ops.databases.getdbmap())["dbs"]:
            if d["db_id"] == db_id:
                return d
        raise ValueError(f"no database 0x{db_id:08x} on node {self.tdb.pnn}")

    def _db_field(self, field):
        """GET_DBNAME, GETDBPATH: the database's name or where it is, as a string."""
        async def handler(conn, c):
            return 0, M.string((await self._db(M.parse_u32(c.data)))[field])
        return handler

    async def _db_health(self, conn, c):
        """The reason the database is unhealthy here, or nothing (healthy)."""
        d = await self._db(M.parse_u32(c.data))
        return 0, M.string(d["reason"] if d["unhealthy"] else None)

    async def _get_db_seqnum(self, conn, c):
        d = await self._db(M.parse_u32(c.data[:4]))
        return 0, M.u64(d["seqnum"])

    def _attach(self, persistent):
        async def handler(conn, c):
            name = c.data.split(b"\0", 1)[0]
            if not name or len(name) > MAX_NAME:
                raise ValueError(f"database name of {len(name)} bytes")
            db_id = await self.tdb.attach(name.decode("utf-8", "strict"), persistent)
            return 0, M.u32(db_id)
        return handler

    async def _open_flags(self, conn, c):
        return 0, M.i32(self.tdb.open_flags(M.parse_u32(c.data)))

    async def _enable_seqnum(self, conn, c):
        await self.tdb.enable_seqnum(M.parse_u32(c.data))
        return 0, b""

    @staticmethod
    def _accepted(conn, c):
        return 0, b""

    async def _trans3_commit(self, conn, c):
        db_id, recs = M.parse_marshall_buffer(c.data)
        name, seqnum = await self.tdb.trans3_commit(db_id, recs)
        log.info("TRANS3_COMMIT of %s: %d records, sequence number %d", name, len(recs),
                 seqnum)
        return 0, b""

    async def _traverse_start(self, conn, c):
        """TRAVERSE_START(_EXT): answered at once; the records follow as messages to the
        srvid the client names, on its own connection, as CTDB sends them (each a
        ``ctdb_rec_data`` with the ltdb header and the value; then an empty one). The
        records are the cluster's: each volatile record from its DMASTER."""
        db_id, reqid, srvid, with_empty = M.parse_traverse_start(c.data)
        name = self.tdb.name(db_id)
        if conn is None:
            raise ValueError("a traverse is served to a local client only")
        spawn(self._traverse(conn, db_id, name, reqid, srvid, with_empty), "ctdb traverse",
              owner=self._tasks)
        return 0, b""

    async def _traverse(self, conn, db_id, name, reqid, srvid, with_empty):
        await asyncio.sleep(0)  # (the control's answer first)
        try:
            recs = await self.tdb.traverse(db_id)
        except PyctdbError as exc:
            log.warning("CTDB socket: traverse of %s failed: %s", name, exc.message)
            recs = []
        pnn = self.tdb.pnn
        for k, r in recs:
            if r.deleted and not with_empty:
                continue
            data = ltdb_pack(r.rsn, r.dmaster, r.flags & ~REC_DELETED,
                             b"" if r.deleted else r.value)
            conn.transport.write(conn.encode_raw(srvid, pnn, M.rec_data(reqid, k, data)))
        conn.transport.write(conn.encode_raw(srvid, pnn, M.rec_data(reqid, b"", b"")))

    # -- REQ_CALL ------------------------------------------------------------------------
    async def call(self, call: P.Call):
        """``(status, data)`` of a REQ_CALL, or DbError (a REPLY_ERROR)."""
        if call.callid not in (P.NULL_FUNC, P.FETCH_FUNC, P.FETCH_WITH_HEADER_FUNC):
            raise DbError("ENOSYS", f"call function 0x{call.callid:08x} is not one of "
                                    "CTDB's (null, fetch, fetch with header)")
        rec = await self.tdb.migrate_here(call.db_id, call.key, CALL_TIMEOUT)
        if call.callid == P.NULL_FUNC:
            return 0, b""
        value = b"" if rec.deleted else rec.value
        if call.callid == P.FETCH_FUNC:
            return 0, value
        return 0, ltdb_pack(rec.rsn, rec.dmaster, rec.flags & ~REC_DELETED, value)
