"""Node operations on the TDB databases: what CTDB's socket asks for Samba's databases
(attach as TDB, open flags, sequence numbers, TRANS3_COMMIT, traverse, a record
migrated here for a REQ_CALL), by db_id, over the database layer. The CTDB front end
(:mod:`pyctdb.server.ctdbdb`) decodes its packets and calls these; it reaches nothing of
the database layer itself. Errors: DbError with its code."""

from __future__ import annotations

from pyctdb.errors import DbError
from pyctdb.server.db.tdbstore import SEQNUM, SEQNUM_KEY, to_record


class TdbOperations:
    """The TDB databases of ``databases`` (a Databases, or None: the agent runs without
    the database layer)."""

    def __init__(self, databases):
        self._dbs = databases
        self._index, self._index_of = {}, ()  # db_id -> (name, store); of these dbmaps

    @property
    def dbs(self):
        if self._dbs is None:
            raise DbError("EIO", "this agent runs without the database layer")
        return self._dbs

    @property
    def pnn(self):
        return self.dbs.pnn

    def _find(self, db_id):
        """``(name, store)`` of the TDB database ``db_id`` attached here (looked up in an
        index of the dbmaps, made again when a dbmap changed: each is replaced whole)."""
        stores = self.dbs.tdb_stores.values()
        maps = tuple(st.meta for st in stores)
        if len(maps) != len(self._index_of) or any(
                a is not b for a, b in zip(maps, self._index_of)):
            self._index = {meta["db_id"]: (name, st) for st in stores
                           for name, meta in st.meta.items()}
            self._index_of = maps
        found = self._index.get(db_id)
        if found is None:
            raise DbError("ENOENT", f"no database 0x{db_id:08x} attached through CTDB's "
                                    f"socket on node {self.dbs.pnn}")
        return found

    def name(self, db_id):
        return self._find(db_id)[0]

    async def attach(self, name, persistent):
        """Attach ``name`` as a TDB database here and on every member: its db_id."""
        return (await self.dbs.attach(name, persistent, tdb=True))["db_id"]

    def open_flags(self, db_id):
        """The tdb_open flags a client must open ``db_id``'s file with."""
        name, st = self._find(db_id)
        return st.tdb_flags(name)

    async def enable_seqnum(self, db_id):
        name, st = self._find(db_id)
        await st.enable_seqnum(name)

    async def trans3_commit(self, db_id, recs):
        """Apply a client's transaction (``[(key, ltdb data)]``, the sequence number
        record among them, or the next number) on every member: ``(name, seqnum)``."""
        name, st = self._find(db_id)
        writes = [(k, to_record(d)) for k, d in recs]
        seqnum = next((SEQNUM.unpack(r.value)[0] for k, r in writes
                       if k == SEQNUM_KEY and len(r.value) == SEQNUM.size), None)
        if seqnum is None:
            seqnum = st.meta[name]["seqnum"] + 1
        await self.dbs.transactions.trans3_commit(name, writes, seqnum)
        return name, seqnum

    async def traverse(self, db_id):
        """Every record of the cluster's copy of ``db_id``: ``[(key, record)]``."""
        return await self.dbs.traverse(self.name(db_id))

    async def migrate_here(self, db_id, key, timeout):
        """The record ``key`` of volatile database ``db_id``, migrated to this node (its
        DMASTER now, for the client that asked)."""
        name, st = self._find(db_id)
        if st.persistent:
            raise DbError("EINVAL", f"REQ_CALL on persistent database {name}")
        mig = self.dbs.migration
        rec, _epoch = await mig.lock(name, key, timeout=timeout)
        mig.unlock(name, key)
        return rec
