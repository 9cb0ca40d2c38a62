"""Vacuuming: deleted volatile records (tombstones) removed cluster-wide.

As CTDB's vacuuming (ctdb_vacuum.c), run by every node every ``VacuumInterval`` seconds
(0: never):

1. each node scans its volatile databases for the tombstones it is the DMASTER of;
2. those whose LMASTER is another node are handed to it (``db_vacuum_fetch``): the
   LMASTER migrates them to itself, by the normal migration, and goes on with step 3;
3. the LMASTER, holding the key's migration lock (so the record cannot move) and the
   local record lock, sends ``db_vacuum_delete`` (key, RSN) to every other member of the
   generation: each deletes its copy if that copy is not newer (RSN at most the
   tombstone's) and does not claim to be the DMASTER; it answers the keys it kept;
4. only if every member answered, the LMASTER deletes its tombstone — in the same
   epoch (no recovery started since) and only if the record is still that tombstone.

So a tombstone goes last, on its LMASTER, after every copy an active node had: no copy
is left that a recovery could bring back (the "no resurrection" rule). Nodes that are
not members (stopped, banned) empty their volatile databases anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pyctdb.rules import nodeflags
from pyctdb.rules import records
from pyctdb.server import tasks
from pyctdb.server.cluster import RECMODE_NORMAL
from pyctdb.server.db.wire import b64, unb64

log = logging.getLogger(__name__)

BATCH = 500            # keys per db_vacuum_fetch / db_vacuum_delete
FETCH_PARALLEL = 16    # migrations at a time at the LMASTER
LOCK_WAIT = 0.2        # a key locked longer than this is left for the next run


class Vacuum:
    """Vacuuming of this node's volatile databases (the steps above): a run every
    ``VacuumInterval`` seconds, and the controls ``db_vacuum_fetch`` and
    ``db_vacuum_delete`` it asks of other nodes. Reads and deletes records through the
    :class:`~.backend.StorageBackend` interface (``page``, ``get``, ``delete_where``)."""

    def __init__(self, dbs):
        self.dbs = dbs
        self.cluster = dbs.cluster
        self._last = time.monotonic()
        self._task = None
        self._fetching = set()
        self._running = set()   # fetches of tombstones handed to this node (running)
        self.stats = {}  # name -> {"runs", "removed", "last"}
        self.cluster.control_handlers.update({
            "db_vacuum_fetch": self._ctl_fetch, "db_vacuum_delete": self._ctl_delete})

    def interval(self):
        try:
            return float(self.cluster.tunables.get("VacuumInterval"))
        except (KeyError, TypeError, ValueError):
            return 10.0

    def _can_run(self):
        c = self.cluster
        return (not self.dbs.frozen and c.is_joined() and c.vnnmap
                and nodeflags.is_active(c.my_flags) and c.recmode == RECMODE_NORMAL)

    def on_cycle(self, now):
        iv = self.interval()
        if iv <= 0 or (self._task is not None and not self._task.done()):
            return
        if time.monotonic() - self._last < iv or not self._can_run():
            return
        self._last = time.monotonic()
        self._task = tasks.spawn(self.run(), name="db-vacuum")

    async def run(self):
        """One vacuuming run over every volatile database of this node."""
        removed = 0
        for st in self.dbs.kind_stores(False):
            if not st.available:
                continue
            for name in sorted(st.meta):
                if name in st.damaged or not self._can_run():
                    continue
                try:
                    removed += await self.vacuum_db(name)
                except Exception as exc:  # the next run tries again
                    log.warning("vacuuming %s: %s (next run tries again)", name, exc)
        return removed

    async def vacuum_db(self, name):
        st = self.dbs.find(name)[0]
        pnn, vm = self.dbs.pnn, list(self.cluster.vnnmap)
        mine, others = [], {}
        after = None
        while True:  # scan in pages, yielding to the loop in between
            recs, more = await st.read_page(name, after, 1 << 20)
            for k, r in recs:
                if r.deleted and r.dmaster == pnn:
                    lm = records.lmaster(k, vm)
                    (mine if lm == pnn else others.setdefault(lm, [])).append(k)
            if not more or not recs:
                break
            after = recs[-1][0]
            await asyncio.sleep(0)
        for lm, keys in others.items():
            for i in range(0, len(keys), BATCH):
                await self.cluster.control(lm, "db_vacuum_fetch", {
                    "db": name, "keys": [b64(k) for k in keys[i:i + BATCH]]}, timeout=10.0)
        removed = 0
        for i in range(0, len(mine), BATCH):
            removed += await self.delete_everywhere(name, mine[i:i + BATCH])
        s = self.stats.setdefault(name, {"runs": 0, "removed": 0, "last": None})
        s["runs"] += 1
        s["removed"] += removed
        s["last"] = time.time()
        if removed or others:
            log.info("vacuumed %s: %d tombstones removed, %d handed to their lmaster",
                     name, removed, sum(len(v) for v in others.values()))
        return removed

    async def delete_everywhere(self, name, keys):
        """At the LMASTER (and DMASTER) of ``keys``: delete these tombstones on every
        member, then here. Returns how many were removed."""
        dbs, st, pnn = self.dbs, self.dbs.find(name)[0], self.dbs.pnn
        locks = dbs.migration  # (its lmaster_locks and client_locks)
        epoch, vm, members = dbs.epoch, list(self.cluster.vnnmap), dbs.members()
        held = []
        try:
            for k in keys:
                if records.lmaster(k, vm) != pnn:
                    continue
                try:
                    await locks.lmaster_locks.acquire((name, k), LOCK_WAIT)
                except asyncio.TimeoutError:
                    continue
                try:
                    await locks.client_locks.acquire((name, k), LOCK_WAIT)
                except asyncio.TimeoutError:
                    locks.lmaster_locks.release((name, k))
                    continue
                held.append(k)
            if dbs.frozen or dbs.epoch != epoch:
                return 0
            recs = {}
            for k in held:
                r = await st.read(name, k)
                if r is not None and r.deleted and r.dmaster == pnn:
                    recs[k] = r.rsn
            if not recs:
                return 0
            wire = [[b64(k), rsn] for k, rsn in recs.items()]
            others = [m for m in members if m != pnn]
            res = await asyncio.gather(*(self.cluster.control(
                m, "db_vacuum_delete", {"db": name, "records": wire}, timeout=10.0)
                for m in others), return_exceptions=True)
            kept = set()
            for m, r in zip(others, res):
                if isinstance(r, Exception):
                    log.info("vacuuming %s: node %d did not answer (%s): tombstones kept",
                             name, m, r)
                    return 0
                kept.update(unb64(k) for k in r["kept"])

            def check():
                if dbs.epoch != epoch:
                    raise RuntimeError("a recovery started")
            go = [k for k in recs if k not in kept]
            await st.delete_where(
                name, go, lambda k, r: r.deleted and r.dmaster == pnn and r.rsn == recs[k],
                check=check)
            return len(go)
        finally:
            for k in held:
                locks.client_locks.release((name, k))
                locks.lmaster_locks.release((name, k))

    # -- controls ------------------------------------------------------------------------
    async def _ctl_fetch(self, src, args):
        """From a DMASTER of tombstones this node is the LMASTER of: migrate them here
        (in the background) and vacuum them."""
        self.dbs.not_frozen()
        name = args["db"]
        self.dbs.usable_ctl(name)
        keys = [unb64(k) for k in args["keys"]]
        if name not in self._fetching:
            self._fetching.add(name)
            tasks.spawn(self._fetch(name, keys), name="db-vacuum-fetch",
                        owner=self._running)
        return {}

    async def _fetch(self, name, keys):
        dbs = self.dbs
        try:
            sem = asyncio.Semaphore(FETCH_PARALLEL)

            async def one(k):
                async with sem:
                    if not self._can_run():
                        return
                    try:
                        await dbs.lock(name, k, timeout=2.0)
                    except Exception:
                        return  # busy or a recovery: the next run
                    dbs.unlock(name, k)
            await asyncio.gather(*(one(k) for k in keys))
            await self.delete_everywhere(name, keys)
        except Exception as exc:
            log.warning("vacuuming %s (fetched tombstones): %s", name, exc)
        finally:
            self._fetching.discard(name)

    async def _ctl_delete(self, src, args):
        """From the LMASTER: delete these copies unless newer or held as DMASTER."""
        self.dbs.not_frozen()
        name = args["db"]
        st, _ = self.dbs.usable_ctl(name)
        limit = {unb64(k): int(rsn) for k, rsn in args["records"]}
        pnn, epoch = self.dbs.pnn, self.dbs.epoch
        kept = await st.delete_where(
            name, list(limit), lambda k, r: r.rsn <= limit[k] and r.dmaster != pnn,
            check=self.dbs.check_epoch(epoch))
        return {"kept": [b64(k) for k in kept]}
