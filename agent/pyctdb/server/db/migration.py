"""Volatile records: fetch-lock and migration between nodes (docs/databases.md,
"Volatile records: migration"), and the fetch-locks clients hold through the API.

Controls: ``db_migrate`` (to the LMASTER of a key: move the record to a node) and
``db_give`` (LMASTER to the DMASTER: hand the record over).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

from pyctdb.errors import (ControlError, DbError, FrozenError, PyctdbError, RecordBusy,
                           RecordMoved)
from pyctdb.rules import records as record_rules
from pyctdb.server import tasks
from pyctdb.server.controls import LATER
from pyctdb.server.db.backend import NotNow
from pyctdb.server.db.wire import b64, handover, rec_from_wire, rec_to_wire, unb64

log = logging.getLogger(__name__)

CTL_TIMEOUT = 10.0
GIVE_LOCK_WAIT = 1.0      # a DMASTER waits this long for a locked record, then says busy
LEASE_SECONDS = 30.0      # a fetch-lock taken through the API is released after this


class Retry(PyctdbError):
    """A step overtaken by a recovery (or a record that moved away): try again."""

    code = "EAGAIN"


class _Elsewhere(PyctdbError):
    """(At the LMASTER, on the loop) the record is on a third node: the asynchronous
    way asks it."""


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


class Migration:
    """Fetch-lock of volatile records: takes a record's local lock and moves the record
    to this node (asking its LMASTER, which asks its DMASTER), and serves those requests
    (``db_migrate``, ``db_give``) for other nodes. Talks to the volatile storage only
    through the :class:`~.backend.StorageBackend` interface."""

    def __init__(self, dbs):
        self.dbs = dbs
        self.cluster = dbs.cluster
        self.pnn = dbs.pnn
        self.client_locks = KeyLocks()   # held by a client (or a migration it waits for)
        self.lmaster_locks = KeyLocks()  # serialises migrations at the LMASTER
        self._notes = set()              # background writes of a new DMASTER (running)
        dbs.cluster.control_handlers.update({
            "db_migrate": self._ctl_migrate, "db_give": self._ctl_give})
        dbs.cluster.controls.control_now.update({
            "db_migrate": self._now_migrate, "db_give": self._now_give})

    async def lock(self, name, key, timeout=15.0):
        """Take the record ``key`` of volatile database ``name`` on this node: wait for
        the local lock, then migrate the record here unless this node is its DMASTER.
        Returns ``(record, epoch)``; the caller must call :meth:`unlock`."""
        dbs = self.dbs
        await dbs.ready(timeout)
        st, _meta = dbs.usable(name)
        record_rules.check_key(key)
        if st.persistent:
            raise DbError("EINVAL", f"{name} is a persistent database: use pfetch/pstore "
                          "or a transaction")
        try:
            await self.client_locks.acquire((name, key), timeout)
        except asyncio.TimeoutError:
            raise DbError("EAGAIN", f"record {key!r} of {name} is locked") from None
        try:
            rec, epoch = await self._acquire(st, name, key, time.monotonic() + timeout)
        except BaseException:
            self.client_locks.release((name, key))
            raise
        return rec, epoch

    def unlock(self, name, key):
        self.client_locks.release((name, key))

    async def _acquire(self, st, name, key, deadline):
        dbs = self.dbs
        delay = 0.01
        while True:
            await dbs.ready(max(0.1, deadline - time.monotonic()))
            epoch = dbs.epoch
            rec = await st.read(name, key)
            if rec is not None and rec.dmaster == self.pnn and epoch == dbs.epoch:
                return rec, epoch
            lm = record_rules.lmaster(key, self.cluster.vnnmap)
            try:
                if lm == self.pnn:  # stored here by the migration, as this node's
                    try:
                        got = self._hand_over_now(st, name, key, self.pnn, epoch,
                                                  self_locked=True)
                    except (NotNow, _Elsewhere):
                        got = await self._lmaster_migrate(st, name, key, self.pnn,
                                                          self_locked=True)
                    return got, epoch
                w = await self.cluster.control(lm, "db_migrate", {
                    "db": name, "key": b64(key), "to": self.pnn}, timeout=CTL_TIMEOUT)
                given = rec_from_wire(w)[1]

                def take(cur):  # (one read-and-write of the store, under its lock)
                    got = cur if cur is not None and cur.rsn > given.rsn else given
                    return got.replace(dmaster=self.pnn)  # (our copy newer: its data)
                try:
                    got = st.modify_now(name, key, take, check=dbs.check_epoch(epoch))
                except NotNow:
                    got = await st.modify(name, key, take, check=dbs.check_epoch(epoch))
                return got, epoch
            except (ControlError, Retry, RecordBusy, RecordMoved, FrozenError,
                    asyncio.TimeoutError) as exc:  # (contention: tried again)
                if time.monotonic() + delay > deadline:  # (EBUSY: still locked there)
                    raise DbError("EBUSY" if getattr(exc, "code", None) == "EBUSY"
                                  else "EAGAIN", f"cannot migrate record {key!r} of {name} to "
                                  f"node {self.pnn}: {exc}") from None
                log.debug("migration of %r in %s: %s (retrying)", key, name, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.2)

    def _hand_over_now(self, st, name, key, to, epoch, must_hold=False, self_locked=False):
        """The record handed to node ``to`` at once, on the loop, when nothing needs
        waiting for: no migration of the key in progress here, no client of this node
        holding it, the chain free, and (at the LMASTER) this node or nobody its
        DMASTER. Else :class:`~.backend.NotNow` (or :class:`_Elsewhere`): the
        asynchronous way does it. ``self_locked``: this node's requester, which holds
        the key's client lock itself, asks."""
        k = (name, key)
        if self.lmaster_locks.locked(k) or (not self_locked and self.client_locks.locked(k)):
            raise NotNow("the record is locked here")
        pnn, cluster = self.pnn, self.cluster
        give = handover(to, pnn, must_hold=must_hold)

        def fn(rec):
            dm = rec.dmaster if rec is not None else pnn
            if not must_hold and dm not in (pnn, to) and (dm in cluster.vnnmap
                                                          or dm in cluster.members):
                raise _Elsewhere("another node is its dmaster")
            return give(rec)
        return st.modify_now(name, key, fn, check=self.dbs.check_epoch(epoch))

    def _now_migrate(self, src, args):
        """``db_migrate`` answered without a task when it can be (the common case: this
        LMASTER is the record's DMASTER, or nobody is): :meth:`_hand_over_now`."""
        dbs = self.dbs
        dbs.not_frozen()
        name, key, to = args["db"], unb64(args["key"]), int(args["to"])
        st, _ = dbs.usable_ctl(name)
        if record_rules.lmaster(key, self.cluster.vnnmap) != self.pnn:
            raise RecordMoved(f"node {self.pnn} is not the lmaster of {key!r} (vnn map "
                              "changed)")
        try:
            return rec_to_wire(key, self._hand_over_now(st, name, key, to, dbs.epoch))
        except (NotNow, _Elsewhere):
            return LATER

    def _now_give(self, src, args):
        """``db_give`` answered without a task when the record is free here."""
        dbs = self.dbs
        dbs.not_frozen()
        name, key, to = args["db"], unb64(args["key"]), int(args["to"])
        st, _ = dbs.usable_ctl(name)
        try:
            return rec_to_wire(key, self._hand_over_now(st, name, key, to, dbs.epoch,
                                                        must_hold=True))
        except NotNow:
            return LATER

    async def _lmaster_migrate(self, st, name, key, to, self_locked=False):
        """At the LMASTER: move record ``key`` to node ``to``; returns the record."""
        dbs = self.dbs
        dbs.not_frozen()
        epoch = dbs.epoch
        await self.lmaster_locks.acquire((name, key), CTL_TIMEOUT)
        held = True
        try:
            rec = await st.read(name, key)
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
                        await self.client_locks.acquire((name, key), GIVE_LOCK_WAIT)
                    except asyncio.TimeoutError:
                        raise RecordBusy(f"record {key!r} of {name} is locked on its "
                                         f"dmaster (node {self.pnn})") from None
                try:
                    rec = await st.modify(name, key, handover(to, self.pnn),
                                          check=dbs.check_epoch(epoch))
                finally:
                    if own:
                        self.client_locks.release((name, key))
                return rec
            w = await self.cluster.control(dm, "db_give", {"db": name, "key": b64(key),
                                                           "to": to}, timeout=CTL_TIMEOUT)
            rec = rec_from_wire(w)[1]
            if to == self.pnn:
                await st.store(name, key, rec, check=dbs.check_epoch(epoch))
                return rec
            # The requester need not wait for this node's note of the new DMASTER: it is
            # written with the key's migration lock still held, released once it is done.
            tasks.spawn(self._note(st, name, key, rec, epoch), name="db-note-dmaster",
                        owner=self._notes)
            held = False
            return rec
        finally:
            if held:
                self.lmaster_locks.release((name, key))

    async def _note(self, st, name, key, rec, epoch):
        """Store the record's new DMASTER here, then release the key's migration lock."""
        try:
            await st.store(name, key, rec, check=self.dbs.check_epoch(epoch))
        except Exception as exc:
            log.debug("note of the new dmaster of %r in %s: %s", key, name, exc)
        finally:
            self.lmaster_locks.release((name, key))

    async def _ctl_migrate(self, src, args):
        self.dbs.not_frozen()
        name, key, to = args["db"], unb64(args["key"]), int(args["to"])
        st, _ = self.dbs.usable_ctl(name)
        if record_rules.lmaster(key, self.cluster.vnnmap) != self.pnn:
            raise RecordMoved(f"node {self.pnn} is not the lmaster of {key!r} (vnn map "
                              "changed)")
        rec = await self._lmaster_migrate(st, name, key, to)
        return rec_to_wire(key, rec)

    async def _ctl_give(self, src, args):
        dbs = self.dbs
        dbs.not_frozen()
        name, key, to = args["db"], unb64(args["key"]), int(args["to"])
        st, _ = dbs.usable_ctl(name)
        epoch = dbs.epoch
        try:
            await self.client_locks.acquire((name, key), GIVE_LOCK_WAIT)
        except asyncio.TimeoutError:
            raise RecordBusy(f"record {key!r} of {name} is locked on its dmaster "
                             f"(node {self.pnn})") from None
        try:
            rec = await st.modify(name, key, handover(to, self.pnn, must_hold=True),
                                  check=dbs.check_epoch(epoch))
            return rec_to_wire(key, rec)
        finally:
            self.client_locks.release((name, key))

    async def store_locked(self, name, key, epoch, value):
        """Store (``value`` bytes) or delete (``value`` None) a record this node holds
        locked (after :meth:`lock`); the RSN goes up."""
        st, _ = self.dbs.usable(name)
        if value is not None:
            record_rules.check_value(value)

        def fn(rec):  # the stored record (a client of this node may have changed it)
            if rec is None or rec.dmaster != self.pnn:
                raise Retry("not the dmaster any more")
            return record_rules.Record(rec.rsn + 1, self.pnn,
                                       record_rules.REC_DELETED if value is None else 0,
                                       value or b"")
        try:
            return await st.modify(name, key, fn, check=self.dbs.check_epoch(epoch))
        except Retry:
            raise DbError("EAGAIN", "a recovery took the record away: fetch it again") \
                from None


class Leases:
    """Fetch-locks held through the API (``fetch_lock``/``fetch_unlock``): a record
    locked for a client for at most its lease, and marked in the gate so that clients
    writing this node's LMDB themselves leave it alone."""

    def __init__(self, dbs, migration):
        self.dbs = dbs
        self.migration = migration
        self.held = {}                 # handle -> (name, key, epoch, timer)
        self._unholding = set()        # background releases (running)

    async def lease(self, name, key, seconds=LEASE_SECONDS):
        """Lock record ``key`` for a client that reads and stores it through the API.
        Returns (handle, the record as stored once marked)."""
        dbs = self.dbs
        rec, epoch = await self.migration.lock(name, key)
        try:
            await dbs.gate.hold(name, key)
            st, _ = dbs.usable(name)
            rec = await st.read(name, key)
            if rec is None or rec.dmaster != dbs.pnn or dbs.epoch != epoch:
                raise DbError("EAGAIN", "a recovery took the record away: try again")
        except BaseException:
            await self._unhold(name, key)
            raise
        handle = secrets.token_hex(8)
        timer = asyncio.get_running_loop().call_later(seconds, self.expire, handle)
        self.held[handle] = (name, key, epoch, timer)
        return handle, rec

    async def _unhold(self, name, key):
        try:
            await self.dbs.gate.unhold(name, key)
        except Exception as exc:
            log.error("cannot clear the lease of %r in %s: %s", key, name, exc)
        finally:
            self.migration.unlock(name, key)

    def expire(self, handle, why="not released within its lease"):
        entry = self.held.pop(handle, None)
        if entry:
            log.warning("fetch-lock of %r in %s %s: released", entry[1], entry[0], why)
            entry[3].cancel()
            tasks.spawn(self._unhold(entry[0], entry[1]), name="db-lease-release",
                        owner=self._unholding)

    async def release(self, handle, store=False, value=None):
        entry = self.held.pop(handle, None) if isinstance(handle, str) else None
        if entry is None:
            raise DbError("ENOENT", "no such lock handle (released, or its lease expired)")
        name, key, epoch, timer = entry
        timer.cancel()
        try:
            if store:
                return await self.migration.store_locked(name, key, epoch, value)
            return None
        finally:
            await self._unhold(name, key)
