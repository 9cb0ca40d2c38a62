"""The clustered databases of one node (see docs/databases.md): :class:`Databases`
attaches and finds databases and owns the components that do the work:

- :mod:`.migration`: fetch-lock and migration of volatile records (``db_migrate``,
  ``db_give``), and the fetch-locks held through the API (leases);
- :mod:`.transactions`: persistent transactions (``db_trans_commit``,
  ``db_trans_apply``);
- :mod:`.recovery`: the database part of a recovery (``db_freeze``, ``db_pull``,
  ``db_push``, ``db_thaw``) and traverse;
- :mod:`.vacuum` and :mod:`.maintenance`: vacuuming; detach, status, backup, restore.

The storage is reached through :class:`~.backend.StorageBackend` (today LMDB,
:class:`~.store.Store`). Controls of this module: ``db_attach``, ``db_wipe``.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pyctdb.errors import DbError, FrozenError
from pyctdb.rules import nodeflags
from pyctdb.rules import records as record_rules
from pyctdb.server.db.backend import StoreError
from pyctdb.server.db.gate import Gate
from pyctdb.server.db.health import DiskHealth
from pyctdb.server.db.maintenance import Maintenance
from pyctdb.server.db.migration import (CTL_TIMEOUT, GIVE_LOCK_WAIT, LEASE_SECONDS,
                                        KeyLocks, Leases, Migration, Retry)
from pyctdb.server.db.recovery import Recovery
from pyctdb.server.db.store import Store
from pyctdb.server.db.tdbstore import TdbStore
from pyctdb.server.db.transactions import (AMBIGUOUS, CONFLICT, TXIDS_KEPT, TXIDS_KEY,
                                           Transactions)
from pyctdb.server.db.vacuum import Vacuum

# (names that lived here before the split, importable from here still)
__all__ = ["Databases", "AMBIGUOUS", "CONFLICT", "CTL_TIMEOUT", "GIVE_LOCK_WAIT",
           "LEASE_SECONDS", "TXIDS_KEPT", "TXIDS_KEY", "KeyLocks", "Retry"]

log = logging.getLogger(__name__)


class Databases:
    """This node's databases: attaches and finds them (the dbmap of both storage
    backends), says when they may be served (:meth:`ready`: joined, not frozen), holds
    the freeze state every component reads (``frozen``, ``epoch``), and owns the
    components (migration, leases, transactions, recovery, vacuum, maintenance). The
    public methods the API and the daemon call are here; most hand over to a
    component."""

    def __init__(self, cluster, config):
        self.cluster = cluster
        self.pnn = cluster.pnn
        #: the LMDB backends (pyctdb's own clients), by kind (persistent: True)
        self.stores = {False: Store(config.volatile_db_dir, False),
                       True: Store(config.persistent_db_dir, True)}
        #: the TDB backends (what CTDB's socket attaches: Samba's databases), by kind; in
        #: the same directories (``NAME.PNN`` files beside LMDB's)
        self.tdb_stores = {False: TdbStore(config.volatile_db_dir, False, cluster.pnn,
                                           mutexes=config.tdb_mutexes),
                           True: TdbStore(config.persistent_db_dir, True, cluster.pnn)}
        #: the freeze state: while ``frozen`` nothing is written; ``epoch`` goes up at
        #: every freeze, so that a write begun before it (a record locked, a migration)
        #: is refused after it
        self.frozen = False
        self.epoch = 0
        self.freeze_gen = None            # the generation the freeze happened in
        self.thawed = asyncio.Event()
        self.thawed.set()
        #: the members of the generation as the leader said at the last thaw (a follower
        #: may adopt the new generation from the leader's STATE a little later)
        self.leader_members = None
        #: whether this node's clients may write its volatile records themselves (gate.py)
        self.gate = Gate(self.stores[False])
        cluster.control_handlers.update({"db_attach": self._ctl_attach,
                                         "db_wipe": self._ctl_wipe})
        self.migration = Migration(self)
        self.leases = Leases(self, self.migration)
        self.transactions = Transactions(self)
        self.recovery = Recovery(self)
        self.vacuum = Vacuum(self)        # vacuuming (vacuum.py)
        self.maint = Maintenance(self)    # detach, getdbstatus, backup, restore
        self.health = DiskHealth(self)    # a full or read-only database directory

    def backends(self):
        """Every storage backend of this node: LMDB's two, then TDB's two."""
        return [*self.stores.values(), *self.tdb_stores.values()]

    def kind_stores(self, persistent):
        """The backends of one kind (volatile or persistent)."""
        return [self.stores[bool(persistent)], self.tdb_stores[bool(persistent)]]

    def open(self):
        for st in self.backends():
            st.open(wipe=not st.persistent)
            if st.available:
                log.info("%s %s databases in %s: %s", st.kind,
                         "TDB" if st in self.tdb_stores.values() else "LMDB", st.path,
                         ", ".join(sorted(st.meta)) or "none")

    def close(self):
        for st in self.backends():
            st.close()

    # -- lookups -------------------------------------------------------------------------
    def find(self, name):
        """(store, meta) of database ``name``; DbError ENOENT if not attached."""
        if not isinstance(name, str):
            raise DbError("EINVAL", "db must be a database name")
        for st in self.backends():
            if name in st.meta:
                return st, st.meta[name]
        broken = [st.error for st in self.backends() if st.error]
        if broken:  # it may be in the environment this node cannot open
            raise DbError("EIO", f"database {name!r} not available on node {self.pnn}: "
                          + "; ".join(broken))
        raise DbError("ENOENT", f"no database {name!r} is attached (see getdbmap)")

    def usable(self, name):
        st, meta = self.find(name)
        try:
            st.usable(name)
        except StoreError as exc:
            raise DbError("EIO", str(exc)) from None
        return st, meta

    def usable_ctl(self, name):
        """:meth:`usable` for a control's handler: its DbError is the control's answer
        (its code and message, no traceback)."""
        return self.usable(name)

    def dbmap(self):
        out = []
        for st in self.backends():
            for name, meta in st.meta.items():
                out.append({"db_id": meta["db_id"], "name": name,
                            "path": st.location(name), "persistent": st.persistent,
                            "seqnum": meta["seqnum"], "unhealthy": name in st.damaged,
                            "reason": st.damaged.get(name), "tdb": bool(meta.get("tdb"))})
        problems = [st.error for st in self.backends() if st.error]
        return sorted(out, key=lambda d: d["name"]), problems

    async def ensure(self, name, persistent, db_id=None, tdb=False):
        """Create database ``name`` here if it is not attached (idempotent): a TDB file
        with ``tdb`` (CTDB's socket, Samba), else in LMDB. A database attached already
        keeps its backend, except that one Samba must open (``tdb``) cannot be LMDB's."""
        record_rules.check_name(name)
        want = record_rules.db_id(name)
        if db_id is not None and db_id != want:
            raise ValueError(f"db_id 0x{db_id:08x} is not the id of {name!r}")
        for st in self.backends():
            if name in st.meta:
                if st.persistent != bool(persistent):
                    raise ValueError(f"database {name} is attached as "
                                     f"{'persistent' if st.persistent else 'volatile'}")
                if tdb and not st.meta[name].get("tdb"):
                    raise ValueError(f"database {name} is attached as a pyctdb (LMDB) "
                                     "database: a client of CTDB's socket cannot open it")
                return st.meta[name]
            for other, meta in st.meta.items():
                if meta["db_id"] == want:
                    raise ValueError(f"db_id 0x{want:08x} of {name!r} collides with {other!r}")
        st = (self.tdb_stores if tdb else self.stores)[bool(persistent)]
        if not st.available:
            raise StoreError(st.error)
        meta = await st.create(name, want)
        log.warning("attached %s database %s (db_id 0x%08x)", st.kind, name, want)
        return meta

    async def attach(self, name, persistent, tdb=False):
        """Attach database ``name`` here and on every other member (``tdb``: as a TDB
        file, for a client of CTDB's socket)."""
        try:
            record_rules.check_name(name)
        except ValueError as exc:
            raise DbError("EINVAL", str(exc)) from None
        try:
            meta = await self.ensure(name, persistent, tdb=tdb)
        except ValueError as exc:
            raise DbError("EINVAL", str(exc)) from None
        except StoreError as exc:
            raise DbError("EIO", str(exc)) from None
        others = [m for m in self.members() if m != self.pnn]
        res = await asyncio.gather(*(self.cluster.control(
            m, "db_attach", {"name": name, "persistent": bool(persistent),
                             "tdb": bool(meta.get("tdb"))},
            timeout=CTL_TIMEOUT) for m in others), return_exceptions=True)
        failed = {m: str(r) for m, r in zip(others, res) if isinstance(r, Exception)}
        if failed:
            log.error("attach %s: not attached on %s (the next recovery creates it)",
                      name, failed)
        return {"name": name, "db_id": meta["db_id"], "persistent": bool(persistent),
                "failed": failed}

    async def _ctl_attach(self, src, args):
        meta = await self.ensure(args["name"], bool(args.get("persistent")),
                                 tdb=bool(args.get("tdb")))
        return {"name": args["name"], **meta}

    # -- wipedb ------------------------------------------------------------------------------
    async def wipe(self, name):
        await self.ready()
        self.usable(name)
        members = self.members()
        res = await asyncio.gather(*(self.cluster.control(m, "db_wipe", {"db": name},
                                                          timeout=CTL_TIMEOUT)
                                     for m in members), return_exceptions=True)
        failed = {m: str(r) for m, r in zip(members, res) if isinstance(r, Exception)}
        if failed:
            raise DbError("EIO", f"wipedb {name} failed on {failed}")
        return members

    async def _ctl_wipe(self, src, args):
        self.not_frozen()
        name = args["db"]
        st, meta = self.usable_ctl(name)
        # persistent: the sequence number goes up, so a recovery keeps the wiped copy
        await st.apply(name, [], replace=True,
                       seqnum=meta["seqnum"] + 1 if st.persistent else None)
        log.warning("database %s wiped (asked by node %d)", name, src)
        return {}

    # -- readiness and the freeze state ---------------------------------------------------
    async def ready(self, timeout=10.0):
        """Wait until this node may serve database requests: joined and not frozen."""
        c = self.cluster
        if not nodeflags.is_active(c.my_flags):
            raise DbError("ENOTCONN", f"node {self.pnn} is inactive "
                          f"({nodeflags.pretty(c.my_flags)}): it serves no database requests")
        deadline = time.monotonic() + timeout
        while self.frozen or not c.is_joined() or not c.vnnmap:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DbError("EAGAIN", "the cluster is in recovery (databases frozen) or "
                              "this node has not joined: try again")
            try:
                await asyncio.wait_for(self.thawed.wait(), min(left, 0.05))
            except asyncio.TimeoutError:
                pass
            if self.frozen:
                await asyncio.sleep(0.01)

    def members(self):
        return list(self.leader_members if self.leader_members is not None
                    else self.cluster.members)

    def not_frozen(self):
        if self.frozen:
            raise FrozenError("databases frozen: recovery in progress")

    def check_epoch(self, epoch):
        """A ``check`` for a storage write: refuses it once a freeze ended ``epoch``."""
        def check():
            if self.epoch != epoch:
                raise Retry("a recovery started")
        return check

    def freeze(self):
        """Freeze (a recovery or a restore): nothing is written until :meth:`thaw`."""
        if not self.frozen:
            self.frozen = True
            self.thawed.clear()
            self.freeze_gen = self.cluster.generation
        self.epoch += 1

    def thaw(self, members=None):
        """Serve again, with the generation's ``members`` as the leader said (None: the
        cluster layer's); True if the databases were frozen."""
        self.leader_members = list(members) if members is not None else None
        if not self.frozen:
            return False
        self.frozen = False
        for st in self.tdb_stores.values():  # (smbd may take its records again)
            st.thaw()
        self.thawed.set()
        return True

    async def freeze_files(self):
        """After :meth:`freeze`: the TDB files that smbd writes itself are locked whole
        until the thaw (:meth:`.tdbstore.TdbStore.freeze`)."""
        for st in self.tdb_stores.values():
            await st.freeze()

    # -- the components' public methods ------------------------------------------------------
    # -- the leader's recovery and the cycle (wired by the daemon) -------------------------
    async def recover(self, cluster, members):
        """A recovery step: the databases' part of the leader's recovery (pull every
        copy, merge, push; :meth:`Recovery.recover`)."""
        await self.recovery.recover(cluster, members)

    async def recovered(self, cluster, members):
        """A recovery step once the new generation is in place: thaw (before the
        ``recovered`` event, as in CTDB)."""
        await self.recovery.recovered(cluster, members)

    def on_cycle(self, now):
        """Every cycle: the recovery's node side (an inactive node's volatile copies),
        vacuuming, the database directories' probe."""
        self.recovery.on_cycle(now)
        self.vacuum.on_cycle(now)
        self.health.on_cycle(now)

    async def lock(self, name, key, timeout=15.0):
        return await self.migration.lock(name, key, timeout)

    def unlock(self, name, key):
        self.migration.unlock(name, key)

    async def store_locked(self, name, key, epoch, value):
        return await self.migration.store_locked(name, key, epoch, value)

    async def lease(self, name, key, seconds=LEASE_SECONDS):
        return await self.leases.lease(name, key, seconds)

    async def release(self, handle, store=False, value=None):
        return await self.leases.release(handle, store, value)

    def _expire(self, handle, why="not released within its lease"):
        self.leases.expire(handle, why)

    @property
    def _leases(self):
        """The fetch-locks held through the API: {handle: (name, key, epoch, timer)}."""
        return self.leases.held

    def coordinator(self, name):
        return self.transactions.coordinator(name)

    async def commit(self, name, writes, timeout=15.0, expect_seqnum=None):
        return await self.transactions.commit(name, writes, timeout, expect_seqnum)

    async def txid_seqnum(self, name, txid):
        return await self.transactions.txid_seqnum(name, txid)

    async def traverse(self, name):
        return await self.recovery.traverse(name)

    @property
    def last_recovery(self):
        return self.recovery.last_recovery
