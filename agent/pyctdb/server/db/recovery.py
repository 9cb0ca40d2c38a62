"""The database part of a recovery (docs/databases.md, "Recovery"), and traverse.

The leader freezes every member (``db_freeze``), pulls each database from the members
that have a healthy copy (``db_pull``, in binary chunks), merges the volatile copies (the
record rules of :mod:`pyctdb.rules.records`) or takes the persistent copy with the
highest sequence number, pushes the result to every member (``db_push``), and thaws
them (``db_thaw``) before the ``recovered`` event.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pyctdb.errors import ControlError, DbError, DiskFailure
from pyctdb.protocol import chunk as chunk_codec
from pyctdb.rules import nodeflags
from pyctdb.rules import records as record_rules
from pyctdb.server import tasks
from pyctdb.server.db.migration import CTL_TIMEOUT
from pyctdb.server.db.transactions import TXIDS_KEY
from pyctdb.server.db.wire import (CHUNK_BYTES, PULL_BYTES, STEP_RECORDS, b64, chunk_frames,
                                   cooperative, rec_to_wire, stored_records, unb64)

log = logging.getLogger(__name__)


class Recovery:
    """The databases in a recovery: the node's side (freeze, pull, push, thaw; an
    inactive node's volatile copies emptied) and the leader's (pull every copy, merge,
    push, thaw), plus :meth:`traverse`, which pulls as a recovery does. Reads and
    replaces whole databases only through the :class:`~.backend.StorageBackend`
    interface (``page``, ``replace_raw``, ``wipe``, ``barrier``)."""

    def __init__(self, dbs):
        self.dbs = dbs
        self.cluster = cluster = dbs.cluster
        self.pnn = dbs.pnn
        self._staged = {}                 # name -> records pushed so far in a recovery
        self._inactive_wiped = False
        self._tasks = set()               # volatile wipes of an inactive node (running)
        self.last_recovery = None
        cluster.control_handlers.update({
            "db_freeze": self._ctl_freeze, "db_pull": self._ctl_pull,
            "db_push": self._ctl_push, "db_thaw": self._ctl_thaw})

    # -- the node's side -------------------------------------------------------------------
    async def _ctl_freeze(self, src, args):
        dbs = self.dbs
        dbs.freeze()
        # no client writes from now (a client holding a record delays this), and writes
        # queued before the freeze are done
        await dbs.gate.close()
        await dbs.freeze_files()  # (and smbd's writes of the TDB files)
        for st in dbs.backends():
            await st.barrier()
        infos, _problems = dbs.dbmap()
        return {"dbs": [{k: d[k] for k in ("name", "db_id", "persistent", "seqnum",
                                           "unhealthy", "tdb")} for d in infos],
                "unavailable": [st.persistent for st in dbs.stores.values()
                                if not st.available]}

    async def _ctl_pull(self, src, args):
        name = args["db"]
        st, _ = self.dbs.usable_ctl(name)
        after = unb64(args["after"]) if args.get("after") else None
        raw = bool(args.get("chunk"))  # a binary chunk instead of JSON records
        recs, more = await st.read_page(name, after, CHUNK_BYTES if raw else PULL_BYTES,
                                        raw=raw)
        last = b64(recs[-1][0]) if recs else None
        if args.get("dmaster_only"):  # a traverse: the live records this node masters
            if raw:
                me = self.pnn.to_bytes(4, "big")
                recs = [(k, d) for k, d in recs
                        if d[8:12] == me and not d[record_rules.HEADER_SIZE - 1]
                        & record_rules.REC_DELETED]
            else:
                recs = [(k, r) for k, r in recs if r.dmaster == self.pnn and not r.deleted]
        res = {"more": more, "last": last, "seqnum": st.meta[name]["seqnum"]}
        if raw:
            res["chunk"] = chunk_codec.to_wire(chunk_codec.encode(recs), local=src == self.pnn)
        else:
            res["records"] = [rec_to_wire(k, r) for k, r in recs]
        return res

    async def _ctl_push(self, src, args):
        name, persistent = args["db"], bool(args["persistent"])
        tdb = bool(args.get("tdb"))
        st = (self.dbs.tdb_stores if tdb else self.dbs.stores)[persistent]
        if not st.available:
            return {"skipped": st.error}
        if args.get("first"):
            try:
                await self.dbs.ensure(name, persistent, args.get("db_id"), tdb=tdb)
            except ValueError as exc:  # e.g. attached here as the other kind: keep ours
                log.error("recovery: database %s not taken from the leader: %s", name, exc)
                return {"skipped": str(exc)}
            except DiskFailure:  # (created once the directory works again: see last)
                pass
            self._staged[name] = []
        staged = self._staged.get(name)
        if staged is None:
            raise RuntimeError(f"recovery push of {name}: a chunk without its first one, or "
                               "after a rejected one: nothing stored")
        try:
            staged.extend(await stored_records(args, name, src))
        except RuntimeError as exc:
            self._staged[name] = None  # the rest of this push is refused too
            raise RuntimeError(f"recovery push of {name} rejected: {exc}") from None
        if args.get("last"):
            recs = self._staged.pop(name)
            if name not in st.meta:
                return {"skipped": f"database {name} cannot be created here: its "
                                   f"directory fails ({st.path})"}
            try:
                await st.replace_raw(name, recs, seqnum=args.get("seqnum"))
            except DiskFailure as exc:  # (the others go on; this copy waits for the disk)
                self.dbs.health.missed(st, name, exc)
                return {"skipped": exc.message}
            return {"records": len(recs)}
        return {}

    async def _ctl_thaw(self, src, args):
        gen = args.get("if_generation")
        if gen is not None:
            # a restoredb's thaw: never in the middle of a recovery (whose own thaw
            # comes at its end), nor after one (which thawed already)
            c = self.cluster
            if c.generation != gen or c.recmode != 0:
                return {"skipped": "a recovery is under way or ran meanwhile"}
            self._thaw(self.dbs.leader_members)
            return {}
        self._thaw(args.get("members"))
        return {}

    def _thaw(self, members=None):
        if self.dbs.thaw(members):
            self._staged.clear()

    def on_cycle(self, now):
        c, dbs = self.cluster, self.dbs
        if dbs.frozen and c.recmode == 0 and c.generation is not None \
                and c.generation != dbs.freeze_gen and not c.am_leader:
            self._thaw()
        if dbs.leader_members is not None and c.members == dbs.leader_members:
            dbs.leader_members = None  # the cluster layer has caught up
        dbs.gate.tick(nodeflags.is_active(c.my_flags) and not dbs.frozen and c.is_joined()
                      and bool(c.vnnmap))
        # An inactive node's volatile copies are stale (the cluster went on without it):
        # drop them, so they can never come back in a later recovery.
        if not nodeflags.is_active(c.my_flags):
            if not self._inactive_wiped:
                self._inactive_wiped = True
                tasks.spawn(self._wipe_volatile(), name="db-wipe-volatile",
                            owner=self._tasks)
        else:
            self._inactive_wiped = False

    async def _wipe_volatile(self):
        wiped = False
        for st in self.dbs.kind_stores(False):
            for name in list(st.meta):
                try:
                    await st.wipe(name)
                    wiped = True
                except Exception as exc:
                    log.error("cannot wipe volatile database %s: %s", name, exc)
        if wiped:
            log.warning("node %d is inactive: its volatile databases were emptied", self.pnn)

    # -- the leader --------------------------------------------------------------------------
    async def recover(self, cluster, members):
        t0 = time.monotonic()
        infos = await asyncio.gather(*(cluster.control(m, "db_freeze", {}, timeout=CTL_TIMEOUT)
                                       for m in members))
        dbs = {}
        for m, info in zip(members, infos):
            for d in info["dbs"]:
                e = dbs.setdefault(d["name"], {"db_id": d["db_id"], "tdb": d.get("tdb"),
                                               "persistent": d["persistent"], "nodes": {}})
                if d["persistent"] != e["persistent"]:
                    log.error("recovery: database %s is persistent on some nodes and "
                              "volatile on others: node %d's copy ignored", d["name"], m)
                    continue
                if not d["unhealthy"]:
                    e["nodes"][m] = d["seqnum"]
        total = 0
        for name, e in sorted(dbs.items()):
            if e["persistent"]:
                src = record_rules.pick_persistent(e["nodes"])
                if src is None:
                    log.error("recovery: no healthy copy of persistent database %s on any "
                              "member: left as it is", name)
                    continue
                records = await self._pull(src, name)
                seqnum = e["nodes"][src]
            else:
                copies = await asyncio.gather(*(self._pull(m, name) for m in e["nodes"]))
                merged = {}
                await cooperative(record_rules.merge_stored_steps(
                    list(zip(e["nodes"], copies)), self.pnn, merged, STEP_RECORDS))
                del copies
                records = sorted(merged.items())
                del merged
                seqnum = None
            total += len(records)
            frames = await chunk_frames(records)
            del records
            await asyncio.gather(*(self._push(m, name, e, frames, seqnum) for m in members))
        self.last_recovery = {"time": time.time(), "databases": len(dbs), "records": total,
                              "duration_ms": (time.monotonic() - t0) * 1000,
                              "members": list(members)}
        log.warning("recovery: %d databases, %d records merged and pushed to %s in %.1f ms",
                    len(dbs), total, members, self.last_recovery["duration_ms"])

    async def _pull(self, pnn, name, dmaster_only=False):
        """Every record of ``name`` on node ``pnn``: [(key, stored record)]."""
        out, after = [], None
        while True:
            res = await self.cluster.control(pnn, "db_pull", {
                "db": name, "after": after, "dmaster_only": dmaster_only, "chunk": True},
                timeout=CTL_TIMEOUT)
            out.extend(await stored_records(res, name, pnn))
            await asyncio.sleep(0)
            if not res["more"] or not res["last"]:
                return out
            after = res["last"]

    async def traverse(self, name):
        """Every live record of database ``name`` in the cluster: for a volatile one, the
        copy of each record's DMASTER (asked of every member, as CTDB's traverse); for a
        persistent one, this node's replica. A list of (key, Record), sorted by key."""
        await self.dbs.ready()
        st, _ = self.dbs.usable(name)
        if st.persistent:  # (without the transactions' own record)
            return [(k, r) for k, r in await st.read_items(name)
                    if not r.deleted and k != TXIDS_KEY]
        members = self.dbs.members()
        try:
            parts = await asyncio.gather(*(self._pull(m, name, dmaster_only=True)
                                           for m in members))
        except ControlError as exc:
            raise DbError("EAGAIN", f"traverse of {name} failed: {exc}") from None
        best = {}

        def merge():  # the highest RSN (the header's first 8 bytes, big-endian) wins
            for part in parts:
                for i, (k, d) in enumerate(part):
                    if k not in best or d[:8] > best[k][:8]:
                        best[k] = d
                    if i % STEP_RECORDS == STEP_RECORDS - 1:
                        yield
        await cooperative(merge())
        return [(k, record_rules.unpack(best[k])) for k in sorted(best)]

    async def _push(self, pnn, name, e, frames, seqnum):
        """Push the merged database (:func:`chunk_frames`) to node ``pnn``."""
        for first, last, blob, text in frames:
            await self.cluster.control(pnn, "db_push", {
                "db": name, "db_id": e["db_id"], "persistent": e["persistent"],
                "tdb": bool(e.get("tdb")), "chunk": blob if pnn == self.pnn else text, "first": first, "last": last,
                "seqnum": seqnum},
                timeout=CTL_TIMEOUT)

    async def recovered(self, cluster, members):
        await asyncio.gather(*(cluster.control(m, "db_thaw", {"members": list(members)},
                                               timeout=CTL_TIMEOUT)
                               for m in members), return_exceptions=True)
