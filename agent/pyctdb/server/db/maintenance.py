"""Database administration across the cluster: detach, status, backup and restore.

- ``detach`` (CTDB's ``ctdb detach``): volatile databases only, refused while a recovery
  runs, on a cluster with an inactive node, or while ``AllowClientDBAttach`` is 1 on any
  connected node; then ``db_detach`` removes the database on every member.
- ``backup``/``restore`` (CTDB's ``backupdb``/``restoredb``): the file format is
  :mod:`.backup`; a restore replaces the database on every member, pushed in chunks
  (``db_restore``) and swapped in one LMDB transaction on each, as a recovery pushes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from pyctdb.errors import DbError
from pyctdb.protocol import backup as backup_file
from pyctdb.rules import nodeflags
from pyctdb.rules import records as record_rules
from pyctdb.server.cluster import RECMODE_ACTIVE
from pyctdb.server.db.backend import StoreError
from pyctdb.server.db.wire import STEP_RECORDS, cooperative, from_wire, wire_frames

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20


class Maintenance:
    """Database administration across the cluster (detach, getdbstatus, backupdb,
    restoredb) and its controls ``db_detach`` and ``db_restore``."""

    def __init__(self, dbs):
        self.dbs = dbs
        self.cluster = dbs.cluster
        self._restoring = {}  # (src, token) -> records staged
        self.cluster.control_handlers.update({
            "db_detach": self._ctl_detach, "db_restore": self._ctl_restore})

    def _error(self, code, msg):
        return DbError(code, msg)

    # -- detach ----------------------------------------------------------------------------
    async def detach(self, names):
        c, dbs = self.cluster, self.dbs
        if c.recmode == RECMODE_ACTIVE or dbs.frozen:
            raise self._error("EAGAIN", "Database cannot be detached when recovery is active")
        await dbs.ready()
        for node in c.status()["nodes"]:
            fl = node["flags"]
            if fl & (nodeflags.DISCONNECTED | nodeflags.DELETED):
                continue
            if fl & (nodeflags.STOPPED | nodeflags.BANNED):
                raise self._error("EINVAL", "Database cannot be detached on inactive "
                                            f"(stopped or banned) node {node['pnn']}")
        members = dbs.members()
        res = await asyncio.gather(*(c.control(m, "db_detach", {"check": True},
                                               timeout=10.0) for m in members),
                                   return_exceptions=True)
        for m, r in zip(members, res):
            if isinstance(r, Exception):
                raise self._error("EIO", f"Unable to get tunable AllowClientDBAttach from "
                                         f"node {m}: {r}")
            if r["allow_attach"]:
                raise self._error("EPERM", f"Database access is still active on node {m}. "
                                           "Set AllowclientDBAttach=0 on all nodes.")
        found, missing, failed = [], [], {}
        for name in names:
            try:
                st, _meta = dbs.find(name)
            except Exception:
                missing.append(name)
                continue
            if st.persistent:
                raise self._error("EINVAL", "Only volatile databases can be detached")
            found.append(name)
        for name in found:
            res = await asyncio.gather(*(c.control(m, "db_detach", {"db": name},
                                                   timeout=10.0) for m in members),
                                       return_exceptions=True)
            bad = {m: str(r) for m, r in zip(members, res) if isinstance(r, Exception)}
            if bad:
                failed[name] = bad
        return {"detached": [n for n in found if n not in failed], "missing": missing,
                "failed": failed}

    async def _ctl_detach(self, src, args):
        allow = int(self.cluster.tunables.get("AllowClientDBAttach"))
        if args.get("check"):
            return {"allow_attach": bool(allow)}
        if allow:
            raise RuntimeError(f"Database access is still active on node {self.dbs.pnn}")
        name = args["db"]
        try:
            st = self.dbs.find(name)[0]
        except DbError:
            return {"detached": False}
        if st.persistent:
            raise RuntimeError("Only volatile databases can be detached")
        await st.drop(name)
        log.warning("database %s detached (asked by node %d)", name, src)
        return {"detached": True}

    # -- getdbstatus -----------------------------------------------------------------------
    async def status(self, name):
        st, meta = self.dbs.find(name)
        health = st.damaged.get(name)
        records = None
        if health is None:
            try:
                records = await st.read_count(name)
            except Exception as exc:
                raise DbError("EIO", str(exc)) from None
        vac = getattr(self.dbs, "vacuum", None)
        return {"db_id": meta["db_id"], "name": name, "path": st.location(name),
                "persistent": st.persistent, "replicated": False, "sticky": False,
                "readonly": False, "health": health or "OK", "seqnum": meta["seqnum"],
                "records": records, "pnn": self.dbs.pnn,
                "vacuum": vac.stats.get(name) if vac else None}

    # -- backup ----------------------------------------------------------------------------
    async def backup(self, name, path):
        st, meta = self.dbs.usable(name)
        recs = await self.dbs.traverse(name)
        # encoding and the fsync of a large database: off the event loop
        n = await asyncio.to_thread(backup_file.write, path, name, st.persistent, meta["seqnum"], recs)
        return {"db_name": name, "file": path, "records": n,
                "persistent": st.persistent, "seqnum": meta["seqnum"]}

    # -- restore ---------------------------------------------------------------------------
    async def restore(self, path, name=None):
        try:
            # reading and checking a large backup takes CPU: off the event loop
            bk = await asyncio.to_thread(backup_file.read, path)
        except backup_file.BackupError as exc:
            raise self._error("EINVAL", str(exc)) from None
        target = name or bk.db_name
        try:
            record_rules.check_name(target)
        except ValueError as exc:
            raise self._error("EINVAL", str(exc)) from None
        dbs, c = self.dbs, self.cluster
        await dbs.ready()
        try:
            st, meta = dbs.find(target)
        except Exception:
            st, meta = None, None
        if st is not None and st.persistent != bk.persistent:
            raise self._error("EINVAL", f"database {target} is "
                              f"{'persistent' if st.persistent else 'volatile'}, the backup "
                              f"is of a {'persistent' if bk.persistent else 'volatile'} one")
        try:
            await dbs.ensure(target, bk.persistent)
        except (ValueError, StoreError) as exc:
            raise self._error("EIO", str(exc)) from None
        st, meta = dbs.find(target)
        seqnum = None
        if bk.persistent:
            # above the current one, so a recovery keeps the restored copy
            seqnum = max(bk.seqnum, meta["seqnum"] + 1)
        extra = 0 if bk.persistent else record_rules.REC_MIGRATED_WITH_DATA
        pnn, n = dbs.pnn, len(bk.records)

        def retag():  # every restored record has this node as its DMASTER
            out = []
            for i in range(0, n, STEP_RECORDS):
                out.extend((k, record_rules.Record(r.rsn, pnn, r.flags | extra, r.value))
                           for k, r in bk.records[i:i + STEP_RECORDS])
                yield
            return out
        recs = await cooperative(retag())
        bk.records = None
        frames = await wire_frames(recs, CHUNK_BYTES)
        del recs
        members = dbs.members()
        token = secrets.token_hex(8)
        # As CTDB's restoredb: the cluster's databases are frozen while the database is
        # replaced, so no write lands on a node between the old copy and the restored one
        # (it waits, then goes to the restored copy). A recovery meanwhile (a node lost)
        # makes the restore fail: run it again.
        gen = c.generation
        log.warning("restoredb %s: freezing the databases on %s for %d records", target,
                    members, n)
        res = await self._on_members(members, "db_freeze", {})
        try:
            if not res:
                res = await asyncio.gather(*(self._push(m, target, bk.persistent, frames,
                                                        seqnum, token) for m in members),
                                           return_exceptions=True)
                res = {m: str(r) for m, r in zip(members, res) if isinstance(r, Exception)}
        finally:
            await self._on_members(members, "db_thaw", {"if_generation": gen})
        if res:
            raise self._error("EIO", f"restore of {target} failed on {res}")
        if c.generation != gen:
            raise self._error("EAGAIN", f"a recovery ran during the restore of {target}: "
                                        "run the restore again")
        log.warning("database %s restored from %s: %d records on %s", target, path,
                    n, members)
        return {"db_name": target, "file": path, "records": n,
                "persistent": bk.persistent, "seqnum": seqnum if seqnum is not None else 0,
                "backup_time": bk.time, "nodes": members}

    async def _on_members(self, members, op, args):
        """Control ``op`` on every member; {pnn: error} of those that failed."""
        res = await asyncio.gather(*(self.cluster.control(m, op, args, timeout=30.0)
                                     for m in members), return_exceptions=True)
        return {m: str(r) for m, r in zip(members, res) if isinstance(r, Exception)}

    async def _push(self, pnn, name, persistent, frames, seqnum, token):
        for first, last, chunk in frames:
            await self.cluster.control(pnn, "db_restore", {
                "db": name, "persistent": persistent, "records": chunk, "first": first,
                "last": last, "seqnum": seqnum, "token": token}, timeout=30.0)

    async def _ctl_restore(self, src, args):
        # (the restoring node froze the databases; it is the one writer meanwhile)
        name, persistent = args["db"], bool(args["persistent"])
        key = (src, args["token"])
        if args.get("first"):
            await self.dbs.ensure(name, persistent)
            self._restoring[key] = []
        staged = self._restoring.get(key)
        if staged is None:
            raise RuntimeError("restore: chunk without its first chunk")
        await from_wire(args["records"], staged)
        if not args.get("last"):
            return {}
        recs = self._restoring.pop(key)
        st = self.dbs.find(name)[0]
        # records locked on this node lose their lock: their epoch is over
        self.dbs.epoch += 1
        await st.barrier()
        await st.apply(name, recs, seqnum=args.get("seqnum"), replace=True)
        log.warning("database %s restored (pushed by node %d): %d records", name, src,
                    len(recs))
        return {"records": len(recs)}
