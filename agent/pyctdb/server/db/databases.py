"""The clustered databases of one node: attach, fetch-lock migration, persistent
transactions, and the database part of a recovery (see docs/databases.md).

Controls (docs/protocol.md): ``db_attach``, ``db_migrate`` (to the LMASTER of a key),
``db_give`` (LMASTER to DMASTER), ``db_trans_commit`` (to the database's transaction
coordinator), ``db_trans_apply`` (coordinator to every member), ``db_wipe``,
``db_freeze``, ``db_pull``, ``db_push``, ``db_thaw`` (the leader in a recovery).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time

from pyctdb.rules import nodeflags
from pyctdb.errors import ControlError
from pyctdb.protocol import chunk
from pyctdb.rules import records as record_rules
from pyctdb.server.db.gate import Gate
from pyctdb.server.db.store import Store, StoreError
from pyctdb.errors import DbError
from pyctdb.server.db.wire import (CHUNK_BYTES, PULL_BYTES, STEP_RECORDS, b64, chunk_frames,
                                   cooperative, handover, rec_from_wire, rec_to_wire,
                                   stored_records, unb64)

log = logging.getLogger("pyctdb.db")

CTL_TIMEOUT = 10.0
GIVE_LOCK_WAIT = 1.0      # a DMASTER waits this long for a locked record, then says busy
LEASE_SECONDS = 30.0      # a fetch-lock taken through the API is released after this
CONFLICT = "transaction conflict"  # an expect_seqnum that no longer holds
AMBIGUOUS = "transaction in doubt"  # applied on some members only: a recovery decides
#: A persistent database's record of its last transactions ({"txids": [[txid, seqnum]]}),
#: replicated with it, so that after a failed commit the recovered copy tells whether the
#: transaction is in it (CTDB's ``__db_sequence_number__`` record plays this part).
TXIDS_KEY = b"__pyctdb_txids__"
TXIDS_KEPT = 64


class Retry(Exception):
    pass


class KeyLocks:
    """asyncio locks by key, dropped when nobody holds or waits for them."""

    def __init__(self):
        self._locks = {}

    async def acquire(self, k, timeout=None):
        entry = self._locks.get(k)
        if entry is None:
            entry = self._locks[k] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            if timeout is None or entry[1] == 1:  # (nobody else holds or waits: at once)
                await entry[0].acquire()
            else:
                await asyncio.wait_for(entry[0].acquire(), timeout)
        except BaseException:
            self._unref(k, entry)
            raise

    def release(self, k):
        entry = self._locks[k]
        entry[0].release()
        self._unref(k, entry)

    def _unref(self, k, entry):
        entry[1] -= 1
        if entry[1] == 0:
            self._locks.pop(k, None)

    def locked(self, k):
        e = self._locks.get(k)
        return bool(e and e[0].locked())


class Databases:
    def __init__(self, cluster, config):
        self.cluster = cluster
        self.pnn = cluster.pnn
        self.stores = {False: Store(config.volatile_db_dir, False),
                       True: Store(config.persistent_db_dir, True)}
        self.frozen = False
        self.epoch = 0
        #: whether this node's clients may write its volatile records themselves (gate.py)
        self.gate = Gate(self.stores[False])
        self._freeze_gen = None
        self._thawed = asyncio.Event()
        self._thawed.set()
        self._client_locks = KeyLocks()   # held by a client (or a migration it waits for)
        self._lmaster_locks = KeyLocks()  # serialises migrations at the LMASTER
        self._commit_locks = KeyLocks()   # serialises transactions at the coordinator
        self._commit_queue = {}           # name -> transactions waiting for a commit round
        #: name -> the generation in which a commit round failed on some member: no more
        #: rounds of that database until a recovery has made its copies agree again
        self._trans_blocked = {}
        self._leases = {}                 # handle -> (name, key, epoch, timer)
        self._staged = {}                 # name -> records pushed so far in a recovery
        self._inactive_wiped = False
        #: the members of the generation as the leader said at the last thaw (a follower
        #: may adopt the new generation from the leader's STATE a little later)
        self._members = None
        self.last_recovery = None
        cluster.control_handlers.update({
            "db_attach": self._ctl_attach, "db_migrate": self._ctl_migrate,
            "db_give": self._ctl_give, "db_trans_commit": self._ctl_trans_commit,
            "db_trans_apply": self._ctl_trans_apply, "db_wipe": self._ctl_wipe,
            "db_freeze": self._ctl_freeze, "db_pull": self._ctl_pull,
            "db_push": self._ctl_push, "db_thaw": self._ctl_thaw,
        })
        cluster.recovery_hooks.append(self._recovery)
        # first: the `recovered` event (failover's hook) comes once the databases are
        # thawed, as in CTDB
        cluster.recovered_hooks.insert(0, self._recovered)
        cluster.cycle_hooks.append(self._on_cycle)
        from pyctdb.server.db.maintenance import Maintenance
        from pyctdb.server.db.vacuum import Vacuum
        self.vacuum = Vacuum(self)        # vacuuming (vacuum.py)
        self.maint = Maintenance(self)    # detach, getdbstatus, backup, restore (maint.py)

    def open(self):
        self.stores[False].open(wipe=True)
        self.stores[True].open()
        for st in self.stores.values():
            if st.env is not None:
                log.info("%s databases in %s: %s", st.kind, st.path,
                         ", ".join(sorted(st.meta)) or "none")

    def close(self):
        for st in self.stores.values():
            st.close()

    # -- lookups -------------------------------------------------------------------------
    def find(self, name):
        """(store, meta) of database ``name``; DbError ENOENT if not attached."""
        if not isinstance(name, str):
            raise DbError("EINVAL", "db must be a database name")
        for st in self.stores.values():
            if name in st.meta:
                return st, st.meta[name]
        broken = [st.error for st in self.stores.values() if st.error]
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

    def dbmap(self):
        out = []
        for st in self.stores.values():
            for name, meta in st.meta.items():
                out.append({"db_id": meta["db_id"], "name": name,
                            "path": f"{st.path}#{name}", "persistent": st.persistent,
                            "seqnum": meta["seqnum"], "unhealthy": name in st.damaged,
                            "reason": st.damaged.get(name)})
        problems = [st.error for st in self.stores.values() if st.error]
        return sorted(out, key=lambda d: d["name"]), problems

    async def ensure(self, name, persistent, db_id=None):
        """Create database ``name`` here if it is not attached (idempotent)."""
        record_rules.check_name(name)
        want = record_rules.db_id(name)
        if db_id is not None and db_id != want:
            raise ValueError(f"db_id 0x{db_id:08x} is not the id of {name!r}")
        for st in self.stores.values():
            if name in st.meta:
                if st.persistent != bool(persistent):
                    raise ValueError(f"database {name} is attached as "
                                     f"{'persistent' if st.persistent else 'volatile'}")
                return st.meta[name]
            for other, meta in st.meta.items():
                if meta["db_id"] == want:
                    raise ValueError(f"db_id 0x{want:08x} of {name!r} collides with {other!r}")
        st = self.stores[bool(persistent)]
        if st.env is None:
            raise RuntimeError(st.error)
        meta = await st.create(name, want)
        log.warning("attached %s database %s (db_id 0x%08x)", st.kind, name, want)
        return meta

    # -- readiness -------------------------------------------------------------------------
    async def ready(self, timeout=10.0):
        """Wait until this node may serve database requests: joined and not frozen."""
        c = self.cluster
        if not nodeflags.is_active(c.my_flags):
            raise DbError("ENOTCONN", f"node {self.pnn} is inactive ({nodeflags.pretty(c.my_flags)}): "
                          "it serves no database requests")
        deadline = time.monotonic() + timeout
        while self.frozen or not c.is_joined() or not c.vnnmap:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DbError("EAGAIN", "the cluster is in recovery (databases frozen) or "
                              "this node has not joined: try again")
            try:
                await asyncio.wait_for(self._thawed.wait(), min(left, 0.05))
            except asyncio.TimeoutError:
                pass
            if self.frozen:
                await asyncio.sleep(0.01)

    def members(self):
        return list(self._members if self._members is not None else self.cluster.members)

    def _not_frozen(self):
        if self.frozen:
            raise RuntimeError("databases frozen: recovery in progress")

    def _check_epoch(self, epoch):
        def check():
            if self.epoch != epoch:
                raise Retry("a recovery started")
        return check

    # -- fetch-lock and migration ----------------------------------------------------------
    async def lock(self, name, key, timeout=15.0):
        """Take the record ``key`` of volatile database ``name`` on this node: wait for
        the local lock, then migrate the record here unless this node is its DMASTER.
        Returns ``(record, epoch)``; the caller must call :meth:`unlock`."""
        await self.ready(timeout)
        st, _meta = self.usable(name)
        record_rules.check_key(key)
        if st.persistent:
            raise DbError("EINVAL", f"{name} is a persistent database: use pfetch/pstore "
                          "or a transaction")
        try:
            await self._client_locks.acquire((name, key), timeout)
        except asyncio.TimeoutError:
            raise DbError("EAGAIN", f"record {key!r} of {name} is locked") from None
        try:
            rec, epoch = await self._acquire(st, name, key, time.monotonic() + timeout)
        except BaseException:
            self._client_locks.release((name, key))
            raise
        return rec, epoch

    def unlock(self, name, key):
        self._client_locks.release((name, key))

    async def _acquire(self, st, name, key, deadline):
        delay = 0.01
        while True:
            await self.ready(max(0.1, deadline - time.monotonic()))
            epoch = self.epoch
            rec = st.get(name, key)
            if rec is not None and rec.dmaster == self.pnn:
                return rec, epoch
            lm = record_rules.lmaster(key, self.cluster.vnnmap)
            try:
                if lm == self.pnn:  # stored here by the migration, as this node's
                    got = await self._lmaster_migrate(st, name, key, self.pnn, self_locked=True)
                    return got, epoch
                w = await self.cluster.control(lm, "db_migrate", {
                    "db": name, "key": b64(key), "to": self.pnn}, timeout=CTL_TIMEOUT)
                got = rec_from_wire(w)[1]
                cur = st.get(name, key)
                if cur is not None and cur.rsn > got.rsn:
                    got = cur.replace(rsn=cur.rsn)  # our copy is newer: keep its data
                got = got.replace(dmaster=self.pnn)
                await st.store(name, key, got, check=self._check_epoch(epoch))
                return got, epoch
            except (ControlError, Retry, RuntimeError, asyncio.TimeoutError) as exc:
                if time.monotonic() + delay > deadline:
                    raise DbError("EAGAIN", f"cannot migrate record {key!r} of {name} to "
                                  f"node {self.pnn}: {exc}") from None
                log.debug("migration of %r in %s: %s (retrying)", key, name, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.2)

    async def _lmaster_migrate(self, st, name, key, to, self_locked=False):
        """At the LMASTER: move record ``key`` to node ``to``; returns the record."""
        self._not_frozen()
        epoch = self.epoch
        await self._lmaster_locks.acquire((name, key), CTL_TIMEOUT)
        held = True
        try:
            rec = st.get(name, key)
            dm = rec.dmaster if rec is not None else self.pnn
            if dm in (self.pnn, to) or dm not in self.cluster.vnnmap and dm not in \
                    self.cluster.members:
                # This node is the DMASTER (or nobody is, or the requester already is):
                # hand over this node's copy.
                if rec is None:
                    rec = record_rules.Record(0, self.pnn, record_rules.REC_DELETED, b"")
                own = dm == self.pnn and not (self_locked and to == self.pnn)
                if own:
                    try:
                        await self._client_locks.acquire((name, key), GIVE_LOCK_WAIT)
                    except asyncio.TimeoutError:
                        raise RuntimeError("record is locked on its dmaster") from None
                try:
                    rec = await st.modify(name, key, handover(to, self.pnn),
                                          check=self._check_epoch(epoch))
                finally:
                    if own:
                        self._client_locks.release((name, key))
                return rec
            w = await self.cluster.control(dm, "db_give", {"db": name, "key": b64(key),
                                                           "to": to}, timeout=CTL_TIMEOUT)
            rec = rec_from_wire(w)[1]
            if to == self.pnn:
                await st.store(name, key, rec, check=self._check_epoch(epoch))
                return rec
            # The requester need not wait for this node's note of the new DMASTER: it is
            # written with the key's migration lock still held, released once it is done.
            note = asyncio.ensure_future(st.store(name, key, rec,
                                                  check=self._check_epoch(epoch)))
            note.add_done_callback(lambda f: self._noted(name, key, f))
            held = False
            return rec
        finally:
            if held:
                self._lmaster_locks.release((name, key))

    def _noted(self, name, key, fut):
        self._lmaster_locks.release((name, key))
        if not fut.cancelled() and fut.exception() is not None:
            log.debug("note of the new dmaster of %r in %s: %s", key, name, fut.exception())

    async def _ctl_migrate(self, src, args):
        self._not_frozen()
        name, key, to = args["db"], unb64(args["key"]), int(args["to"])
        st, _ = self.usable_ctl(name)
        if record_rules.lmaster(key, self.cluster.vnnmap) != self.pnn:
            raise RuntimeError("not the lmaster of this key (vnn map changed)")
        rec = await self._lmaster_migrate(st, name, key, to)
        return rec_to_wire(key, rec)

    async def _ctl_give(self, src, args):
        self._not_frozen()
        name, key, to = args["db"], unb64(args["key"]), int(args["to"])
        st, _ = self.usable_ctl(name)
        epoch = self.epoch
        try:
            await self._client_locks.acquire((name, key), GIVE_LOCK_WAIT)
        except asyncio.TimeoutError:
            raise RuntimeError("record is locked on its dmaster") from None
        try:
            rec = await st.modify(name, key, handover(to, self.pnn, must_hold=True),
                                  check=self._check_epoch(epoch))
            return rec_to_wire(key, rec)
        finally:
            self._client_locks.release((name, key))

    def usable_ctl(self, name):
        try:
            return self.usable(name)
        except DbError as exc:
            raise RuntimeError(exc.message) from None

    async def store_locked(self, name, key, epoch, value):
        """Store (``value`` bytes) or delete (``value`` None) a record this node holds
        locked (after :meth:`lock`); the RSN goes up."""
        st, _ = self.usable(name)
        if value is not None:
            record_rules.check_value(value)

        def fn(rec):  # the stored record (a client of this node may have changed it)
            if rec is None or rec.dmaster != self.pnn:
                raise Retry("not the dmaster any more")
            return record_rules.Record(rec.rsn + 1, self.pnn,
                            record_rules.REC_DELETED if value is None else 0, value or b"")
        try:
            return await st.modify(name, key, fn, check=self._check_epoch(epoch))
        except Retry:
            raise DbError("EAGAIN", "a recovery took the record away: fetch it again") \
                from None

    # -- leases: fetch-lock through the API ---------------------------------------------
    async def lease(self, name, key, seconds=LEASE_SECONDS):
        """Lock record ``key`` for a client that reads and stores it through the API:
        marked in the gate, so clients writing this node's LMDB leave it alone.
        Returns (handle, the record as stored once marked)."""
        rec, epoch = await self.lock(name, key)
        try:
            await self.gate.hold(name, key)
            st, _ = self.usable(name)
            rec = st.get(name, key)
            if rec is None or rec.dmaster != self.pnn or self.epoch != epoch:
                raise DbError("EAGAIN", "a recovery took the record away: try again")
        except BaseException:
            await self._unhold(name, key)
            raise
        handle = secrets.token_hex(8)
        timer = asyncio.get_running_loop().call_later(seconds, self._expire, handle)
        self._leases[handle] = (name, key, epoch, timer)
        return handle, rec

    async def _unhold(self, name, key):
        try:
            await self.gate.unhold(name, key)
        except Exception as exc:
            log.error("cannot clear the lease of %r in %s: %s", key, name, exc)
        finally:
            self.unlock(name, key)

    def _expire(self, handle, why="not released within its lease"):
        entry = self._leases.pop(handle, None)
        if entry:
            log.warning("fetch-lock of %r in %s %s: released", entry[1], entry[0], why)
            entry[3].cancel()
            asyncio.ensure_future(self._unhold(entry[0], entry[1]))

    async def release(self, handle, store=False, value=None):
        entry = self._leases.pop(handle, None) if isinstance(handle, str) else None
        if entry is None:
            raise DbError("ENOENT", "no such lock handle (released, or its lease expired)")
        name, key, epoch, timer = entry
        timer.cancel()
        try:
            if store:
                return await self.store_locked(name, key, epoch, value)
            return None
        finally:
            await self._unhold(name, key)

    # -- persistent transactions -----------------------------------------------------------
    def coordinator(self, name):
        vm = self.cluster.vnnmap
        if not vm:
            raise DbError("EAGAIN", "no vnn map yet")
        return vm[record_rules.db_id(name) % len(vm)]

    async def commit(self, name, writes, timeout=15.0, expect_seqnum=None):
        """Commit ``writes`` ([(key, value or None)]) to persistent database ``name`` on
        every active node. Returns the new sequence number. ``expect_seqnum``: commit only
        if the database's sequence number is still that (a read-modify-write that another
        writer overtook fails with DbError EBUSY instead of undoing the other's change)."""
        await self.ready(timeout)
        st, meta = self.usable(name)
        if not st.persistent:
            raise DbError("EINVAL", f"{name} is a volatile database: transactions are for "
                          "persistent databases")
        for k, v in writes:
            record_rules.check_key(k)
            if v is not None:
                record_rules.check_value(v)
        if any(k == TXIDS_KEY for k, _v in writes):
            raise DbError("EINVAL", f"key {TXIDS_KEY.decode()} is reserved")
        wire = [[b64(k), None if v is None else b64(v)] for k, v in writes]
        txid = secrets.token_hex(8)
        deadline = time.monotonic() + timeout
        delay = 0.02
        doubt = False  # an earlier attempt may have been applied
        while True:
            if doubt:
                done = self.txid_seqnum(name, txid)
                if done is not None:
                    return done
            gen = self.cluster.generation
            try:
                res = await self.cluster.control(self.coordinator(name), "db_trans_commit",
                                                 {"db": name, "writes": wire, "txid": txid,
                                                  "expect_seqnum": expect_seqnum},
                                                 timeout=CTL_TIMEOUT)
                return res["seqnum"]
            except ControlError as exc:
                if CONFLICT in exc.message:
                    done = self.txid_seqnum(name, txid) if doubt else None
                    if done is not None:  # an earlier attempt was applied after all
                        return done
                    raise DbError("EBUSY", f"transaction on {name}: {exc.message}") from None
                if AMBIGUOUS in exc.message:
                    # applied on some members only: the recovery that follows keeps it
                    # (a member that applied it survives) or not; wait for it and look
                    doubt = True
                    log.warning("transaction %s on %s: %s; waiting for the recovery",
                                txid, name, exc.message)
                    await self._new_generation(gen, deadline)
                    continue
                retry = "frozen" in exc.message or "not connected" in exc.message \
                    or "timed out" in exc.message
                doubt = doubt or "timed out" in exc.message or "not connected" in exc.message
                if not retry or time.monotonic() + delay > deadline:
                    raise DbError("EAGAIN" if retry else "EIO",
                                  f"transaction on {name} failed: {exc}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.3)
                await self.ready(max(0.1, deadline - time.monotonic()))

    def txid_seqnum(self, name, txid):
        """The sequence number of transaction ``txid`` if this node's copy of
        ``name`` has it (among its last TXIDS_KEPT), else None."""
        rec = self.stores[True].get(name, TXIDS_KEY)
        if rec is None or rec.deleted:
            return None
        try:
            return dict(json.loads(rec.value)["txids"]).get(txid)
        except (ValueError, KeyError, TypeError):
            return None

    async def _new_generation(self, gen, deadline):
        """Wait (until ``deadline``) for a generation other than ``gen``, then until
        this node serves again."""
        while self.cluster.generation in (gen, None) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await self.ready(max(0.1, deadline - time.monotonic()))

    async def _ctl_trans_commit(self, src, args):
        """Queue the transaction for the database's next commit round: the transactions
        that arrive while a round is applied go together in the next one (one
        ``db_trans_apply``, one fsync per node, for all of them)."""
        self._not_frozen()
        name = args["db"]
        self.usable_ctl(name)
        writes = [(unb64(k), None if v is None else unb64(v)) for k, v in args["writes"]]
        fut = asyncio.get_running_loop().create_future()
        queue = self._commit_queue.get(name)
        if queue is None:
            queue = self._commit_queue[name] = []
            asyncio.ensure_future(self._commit_rounds(name, queue))
        queue.append((args.get("expect_seqnum"), writes, fut, args.get("txid")))
        return await fut

    async def _commit_rounds(self, name, queue):
        """Commit the queued transactions of ``name`` in rounds, in their order, until
        none is left; each gets its own sequence number, and the answer only once every
        member has applied its round."""
        try:
            await self._commit_locks.acquire(name, CTL_TIMEOUT)
        except BaseException as exc:
            self._commit_queue.pop(name, None)
            for _e, _w, fut, _t in queue:
                if not fut.done():
                    fut.set_exception(RuntimeError(f"transaction coordinator busy: {exc!r}"))
            raise
        try:
            while queue:
                batch = queue[:]
                del queue[:]
                try:
                    await self._commit_round(name, batch)
                except Exception as exc:
                    for _e, _w, fut, _t in batch:
                        if not fut.done():
                            fut.set_exception(exc)
        finally:
            self._commit_queue.pop(name, None)
            self._commit_locks.release(name)

    async def _commit_round(self, name, batch):
        self._not_frozen()
        if name in self._trans_blocked:
            if self._trans_blocked[name] == self.cluster.generation:
                raise RuntimeError(f"database {name} frozen until the recovery that follows "
                                   "a failed transaction")
            del self._trans_blocked[name]
        st, meta = self.usable_ctl(name)
        seqnum = st.meta[name]["seqnum"]
        pending = {}   # key -> Record: the round's writes, later ones replacing earlier
        done = []      # (future, its sequence number)
        txids = []     # [txid, seqnum] of the round's transactions
        for expect, writes, fut, txid in batch:
            if expect is not None and seqnum != expect:
                fut.set_exception(ControlError(self.pnn, f"{CONFLICT}: sequence number "
                                                         f"{seqnum}, expected {expect}"))
                continue
            seqnum += 1
            for key, value in writes:
                old = pending.get(key) or st.get(name, key)
                pending[key] = record_rules.Record((old.rsn if old else 0) + 1, self.pnn,
                                        record_rules.REC_DELETED if value is None else 0, value or b"")
            done.append((fut, seqnum))
            if txid:
                txids.append([str(txid), seqnum])
        if not done:
            return
        if txids:
            old = pending.get(TXIDS_KEY) or st.get(name, TXIDS_KEY)
            kept = []
            if old is not None and not old.deleted:
                try:
                    kept = list(json.loads(old.value)["txids"])
                except (ValueError, KeyError, TypeError):
                    kept = []
            pending[TXIDS_KEY] = record_rules.Record(
                (old.rsn if old else 0) + 1, self.pnn, 0,
                json.dumps({"txids": (kept + txids)[-TXIDS_KEPT:]}).encode())
        members = self.members()
        if self.pnn not in members:
            raise RuntimeError("the coordinator is not a member of the generation")
        recs = [rec_to_wire(k, r) for k, r in pending.items()]
        res = await asyncio.gather(*(self.cluster.control(
            m, "db_trans_apply", {"db": name, "db_id": meta["db_id"], "seqnum": seqnum,
                                  "records": recs}, timeout=CTL_TIMEOUT)
            for m in members), return_exceptions=True)
        failed = {m: str(r) for m, r in zip(members, res) if isinstance(r, Exception)}
        if failed:
            # Some members have the round, some not: no more rounds until a recovery has
            # made the copies agree (the highest sequence number wins, so the round is
            # kept if a member that applied it is still there). The requesters wait for
            # that recovery and look for their transaction in the result.
            self._trans_blocked[name] = self.cluster.generation
            log.error("transactions on %s (seqnum %d to %d) not applied on %s: asking for "
                      "a recovery, which decides (the highest sequence number wins)", name,
                      done[0][1], seqnum, failed)
            asyncio.ensure_future(self._ask_recovery(
                f"transaction on {name} not applied on {sorted(failed)}"))
            raise ControlError(self.pnn, f"{AMBIGUOUS}: not applied on nodes "
                                         f"{sorted(failed)}: {failed}")
        for fut, n in done:
            if not fut.done():
                fut.set_result({"seqnum": n, "nodes": members})

    async def _ask_recovery(self, reason):
        try:
            await self.cluster.ask_recovery(reason)
        except ControlError as exc:  # no leader, or it went away: a recovery follows anyway
            log.warning("could not ask for a recovery (%s): %s", reason, exc.message)

    async def _ctl_trans_apply(self, src, args):
        self._not_frozen()
        name = args["db"]
        st = self.stores[True]
        if st.env is None or name in st.damaged:
            # this node serves no copy of it; the next recovery gives it a healthy one
            return {"skipped": st.error or st.damaged[name]}
        await self.ensure(name, True, args.get("db_id"))
        recs = [rec_from_wire(w) for w in args["records"]]
        await st.apply(name, recs, seqnum=int(args["seqnum"]),
                       check=self._check_epoch(self.epoch))
        return {}

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
        self._not_frozen()
        name = args["db"]
        st, meta = self.usable_ctl(name)
        # persistent: the sequence number goes up, so a recovery keeps the wiped copy
        await st.apply(name, [], replace=True,
                       seqnum=meta["seqnum"] + 1 if st.persistent else None)
        log.warning("database %s wiped (asked by node %d)", name, src)
        return {}

    async def _ctl_attach(self, src, args):
        meta = await self.ensure(args["name"], bool(args.get("persistent")))
        return {"name": args["name"], **meta}

    async def attach(self, name, persistent):
        try:
            record_rules.check_name(name)
        except ValueError as exc:
            raise DbError("EINVAL", str(exc)) from None
        try:
            meta = await self.ensure(name, persistent)
        except ValueError as exc:
            raise DbError("EINVAL", str(exc)) from None
        except RuntimeError as exc:
            raise DbError("EIO", str(exc)) from None
        others = [m for m in self.members() if m != self.pnn]
        res = await asyncio.gather(*(self.cluster.control(
            m, "db_attach", {"name": name, "persistent": bool(persistent)},
            timeout=CTL_TIMEOUT) for m in others), return_exceptions=True)
        failed = {m: str(r) for m, r in zip(others, res) if isinstance(r, Exception)}
        if failed:
            log.error("attach %s: not attached on %s (the next recovery creates it)",
                      name, failed)
        return {"name": name, "db_id": meta["db_id"], "persistent": bool(persistent),
                "failed": failed}

    # -- recovery: node side ---------------------------------------------------------------
    async def _ctl_freeze(self, src, args):
        if not self.frozen:
            self.frozen = True
            self._thawed.clear()
            self._freeze_gen = self.cluster.generation
        self.epoch += 1
        # no client writes from now (a client holding a record delays this), and writes
        # queued before the freeze are done
        await self.gate.close()
        for st in self.stores.values():
            await st.barrier()
        dbs, problems = self.dbmap()
        return {"dbs": [{k: d[k] for k in ("name", "db_id", "persistent", "seqnum",
                                           "unhealthy")} for d in dbs],
                "unavailable": [st.persistent for st in self.stores.values()
                                if st.env is None]}

    async def _ctl_pull(self, src, args):
        name = args["db"]
        st, _ = self.usable_ctl(name)
        after = unb64(args["after"]) if args.get("after") else None
        raw = bool(args.get("chunk"))  # a binary chunk instead of JSON records
        recs, more = st.page(name, after, CHUNK_BYTES if raw else PULL_BYTES, raw=raw)
        last = b64(recs[-1][0]) if recs else None
        if args.get("dmaster_only"):  # a traverse: the live records this node masters
            if raw:
                me = self.pnn.to_bytes(4, "big")
                recs = [(k, d) for k, d in recs
                        if d[8:12] == me and not d[record_rules.HEADER_SIZE - 1] & record_rules.REC_DELETED]
            else:
                recs = [(k, r) for k, r in recs if r.dmaster == self.pnn and not r.deleted]
        res = {"more": more, "last": last, "seqnum": st.meta[name]["seqnum"]}
        if raw:
            res["chunk"] = chunk.to_wire(chunk.encode(recs), local=src == self.pnn)
        else:
            res["records"] = [rec_to_wire(k, r) for k, r in recs]
        return res

    async def _ctl_push(self, src, args):
        name, persistent = args["db"], bool(args["persistent"])
        st = self.stores[persistent]
        if st.env is None:
            return {"skipped": st.error}
        if args.get("first"):
            try:
                await self.ensure(name, persistent, args.get("db_id"))
            except ValueError as exc:  # e.g. attached here as the other kind: keep ours
                log.error("recovery: database %s not taken from the leader: %s", name, exc)
                return {"skipped": str(exc)}
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
            await st.replace_raw(name, recs, seqnum=args.get("seqnum"))
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
            self._thaw(self._members)
            return {}
        self._thaw(args.get("members"))
        return {}

    def _thaw(self, members=None):
        self._members = list(members) if members is not None else None
        if self.frozen:
            self.frozen = False
            self._staged.clear()
            self._thawed.set()

    def _on_cycle(self, now):
        c = self.cluster
        if self.frozen and c.recmode == 0 and c.generation is not None \
                and c.generation != self._freeze_gen and not c.am_leader:
            self._thaw()
        if self._members is not None and c.members == self._members:
            self._members = None  # the cluster layer has caught up
        self.gate.tick(nodeflags.is_active(c.my_flags) and not self.frozen and c.is_joined()
                       and bool(c.vnnmap))
        # An inactive node's volatile copies are stale (the cluster went on without it):
        # drop them, so they can never come back in a later recovery.
        if not nodeflags.is_active(c.my_flags):
            if not self._inactive_wiped:
                self._inactive_wiped = True
                asyncio.ensure_future(self._wipe_volatile())
        else:
            self._inactive_wiped = False

    async def _wipe_volatile(self):
        st = self.stores[False]
        for name in list(st.meta):
            try:
                await st.wipe(name)
            except Exception as exc:
                log.error("cannot wipe volatile database %s: %s", name, exc)
        if st.meta:
            log.warning("node %d is inactive: its volatile databases were emptied", self.pnn)

    # -- recovery: the leader ----------------------------------------------------------------
    async def _recovery(self, cluster, members):
        t0 = time.monotonic()
        infos = await asyncio.gather(*(cluster.control(m, "db_freeze", {}, timeout=CTL_TIMEOUT)
                                       for m in members))
        dbs = {}
        for m, info in zip(members, infos):
            for d in info["dbs"]:
                e = dbs.setdefault(d["name"], {"db_id": d["db_id"],
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
        await self.ready()
        st, _ = self.usable(name)
        if st.persistent:  # (without the transactions' own record)
            return [(k, r) for k, r in st.items(name) if not r.deleted and k != TXIDS_KEY]
        members = self.members()
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
                "chunk": blob if pnn == self.pnn else text, "first": first, "last": last,
                "seqnum": seqnum},
                timeout=CTL_TIMEOUT)

    async def _recovered(self, cluster, members):
        await asyncio.gather(*(cluster.control(m, "db_thaw", {"members": list(members)},
                                               timeout=CTL_TIMEOUT)
                               for m in members), return_exceptions=True)
