"""A database directory that is full, read-only or failing (docs/databases.md, "A full
or read-only disk").

A write that LMDB or libtdb refuses for its disk is answered :class:`~pyctdb.errors.DiskFailure`
(ENOSPC, EROFS, EIO; nothing of it written: LMDB keeps the last committed state). The
node then becomes UNHEALTHY (``Cluster.set_health``), with one ERROR line naming the
directory and the errno. A probe every MonitorInterval writes and fsyncs a small file in
each directory (``Store.probe``): it finds a failing directory before any write does,
and clears the condition once the directory works again (one NOTICE line); this node
then asks for a recovery, which gives it the databases whose writes it missed meanwhile
(marked damaged: not served here until then). An environment that could not be opened
because its directory fails (read-only at start) is opened again once it works.
"""

from __future__ import annotations

import logging
import os

from pyctdb.common.logsetup import NOTICE
from pyctdb.errors import ControlError, DiskFailure
from pyctdb.server import tasks

log = logging.getLogger(__name__)

SOURCE = "database directory"   # this check's name in Cluster.set_health
DEFAULT_INTERVAL = 15.0         # (MonitorInterval's default)


class DiskHealth:
    """The database directories' health: ``failing`` {kind: DiskFailure}; the periodic
    probe (:meth:`on_cycle`); :meth:`missed` for a write a member could not make."""

    def __init__(self, dbs):
        self.dbs = dbs
        self.cluster = dbs.cluster
        self.failing = {}
        self._next = 0.0
        self._tasks = set()
        # (LMDB's and TDB's: both kinds share their directory, so one probe of LMDB's
        # store below checks the TDB files' directory too, and clears what either found)
        for st in (*dbs.stores.values(), *dbs.tdb_stores.values()):
            st.on_disk_error = self.failed

    def failed(self, st, err):
        """A write or the probe of store ``st`` failed for its disk (``err``)."""
        if st.kind not in self.failing:
            log.error("%s: node %d is UNHEALTHY until the directory works again (probed "
                      "every MonitorInterval)", err.message, self.dbs.pnn)
        self.failing[st.kind] = err
        self._report()

    def missed(self, st, name, err):
        """Database ``name`` missed a write (a transaction's round, a recovery's push)
        for the disk: not served here until a recovery replaces it."""
        if name in st.meta and name not in st.damaged:
            st.damaged[name] = (f"database {name} missed writes on this node: {err.message}; "
                                "a recovery replaces it once the directory works again")
            log.error("%s", st.damaged[name])

    def _report(self):
        problem = "; ".join(e.message for e in self.failing.values()) or None
        self.cluster.set_health(SOURCE, problem)

    def on_cycle(self, now):
        """Every cycle: probe the directories every MonitorInterval."""
        if now < self._next or self._tasks:
            return
        interval = self.cluster.tunables.get("MonitorInterval")
        self._next = now + (float(interval) if interval else DEFAULT_INTERVAL)
        tasks.spawn(self._probe(), name="db-disk-probe", owner=self._tasks)

    async def _probe(self):
        healed = False
        for st in self.dbs.stores.values():  # (the TDB backends share their directories)
            if not st.available and not os.path.isdir(st.path):
                continue  # (its directory cannot even be made: open's error says why)
            res = await st.probe()
            if res is None and not st.available and st.kind in self.failing:
                st.open()  # (it could not be opened for the disk: again, now it works)
                if not st.available:
                    continue
            if res is not None:
                code, why = res
                self.failed(st, DiskFailure(f"{st.kind} database directory {st.path}: "
                                            f"{code} ({why}): the probe's write failed",
                                            code, st.path))
            elif self.failing.pop(st.kind, None) is not None:
                log.log(NOTICE, "%s database directory %s works again", st.kind, st.path)
                healed = True
        if healed:
            self._report()
            if not self.failing:
                log.log(NOTICE, "database directories work again: node %d is no longer "
                        "UNHEALTHY for them", self.dbs.pnn)
            try:  # (databases that missed writes meanwhile get the cluster's copy)
                await self.cluster.ask_recovery("a database directory works again on "
                                                f"node {self.dbs.pnn}")
            except ControlError as exc:
                log.warning("could not ask for a recovery: %s", exc.message)
