"""Persistent databases: transactions (docs/databases.md, "Persistent databases:
transactions").

A transaction goes to its database's coordinator (``db_trans_commit``), which commits
the transactions that arrive together in rounds: one ``db_trans_apply`` to every member
of the generation per round, each transaction with its own sequence number.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time

from pyctdb.errors import ControlError, DbError, FrozenError
from pyctdb.rules import records as record_rules
from pyctdb.server import tasks
from pyctdb.server.db.migration import CTL_TIMEOUT, KeyLocks
from pyctdb.server.db.wire import b64, rec_from_wire, rec_to_wire, unb64

log = logging.getLogger(__name__)

CONFLICT = "transaction conflict"  # an expect_seqnum that no longer holds (code EBUSY)
AMBIGUOUS = "transaction in doubt"  # applied on some members only: a recovery decides
AMBIGUOUS_CODE = "EINPROGRESS"      # (its code: the outcome is the next recovery's)
#: A persistent database's record of its last transactions ({"txids": [[txid, seqnum]]}),
#: replicated with it, so that after a failed commit the recovered copy tells whether the
#: transaction is in it (CTDB's ``__db_sequence_number__`` record plays this part).
TXIDS_KEY = b"__pyctdb_txids__"
TXIDS_KEPT = 64


def _failure(exc: ControlError):
    """What a failed ``db_trans_commit`` means for the requester: ``"conflict"``,
    ``"doubt"`` (applied on some members only), ``"timeout"``, ``"unreachable"``,
    ``"frozen"`` (worth another try), else ``"fail"``. By the error's code, never its
    text: EBUSY, AMBIGUOUS_CODE (the coordinator's answers), EAGAIN (a frozen
    coordinator: :class:`~pyctdb.errors.FrozenError`), ETIMEDOUT, ENOTCONN (the control
    layer's)."""
    return {"EBUSY": "conflict", AMBIGUOUS_CODE: "doubt", "EAGAIN": "frozen",
            "ETIMEDOUT": "timeout", "ENOTCONN": "unreachable"}.get(exc.code, "fail")


class Transactions:
    """Persistent transactions: the requester's side (:meth:`commit`: to the
    coordinator, retried across recoveries, a transaction in doubt looked up by its
    txid) and the coordinator's and members' sides (``db_trans_commit``: commit rounds;
    ``db_trans_apply``: a round applied on a member)."""

    def __init__(self, dbs):
        self.dbs = dbs
        self.cluster = dbs.cluster
        self.pnn = dbs.pnn
        self._commit_locks = KeyLocks()   # serialises transactions at the coordinator
        self._commit_queue = {}           # name -> transactions waiting for a commit round
        #: name -> the generation in which a commit round failed on some member: no more
        #: rounds of that database until a recovery has made its copies agree again
        self._trans_blocked = {}
        self._tasks = set()               # commit rounds and recovery requests (running)
        dbs.cluster.control_handlers.update({
            "db_trans_commit": self._ctl_trans_commit,
            "db_trans_apply": self._ctl_trans_apply})

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
        dbs = self.dbs
        await dbs.ready(timeout)
        st, meta = dbs.usable(name)
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
                why = _failure(exc)
                if why == "conflict":
                    done = self.txid_seqnum(name, txid) if doubt else None
                    if done is not None:  # an earlier attempt was applied after all
                        return done
                    raise DbError("EBUSY", f"transaction on {name}: {exc.message}") from None
                if why == "doubt":
                    # applied on some members only: the recovery that follows keeps it
                    # (a member that applied it survives) or not; wait for it and look
                    doubt = True
                    log.warning("transaction %s on %s: %s; waiting for the recovery",
                                txid, name, exc.message)
                    await self._new_generation(gen, deadline)
                    continue
                retry = why in ("frozen", "unreachable", "timeout")
                doubt = doubt or why in ("timeout", "unreachable")
                if not retry or time.monotonic() + delay > deadline:
                    raise DbError("EAGAIN" if retry else "EIO",
                                  f"transaction on {name} failed: {exc}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.3)
                await dbs.ready(max(0.1, deadline - time.monotonic()))

    def txid_seqnum(self, name, txid):
        """The sequence number of transaction ``txid`` if this node's copy of
        ``name`` has it (among its last TXIDS_KEPT), else None."""
        rec = self.dbs.stores[True].get(name, TXIDS_KEY)
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
        await self.dbs.ready(max(0.1, deadline - time.monotonic()))

    async def _ctl_trans_commit(self, src, args):
        """Queue the transaction for the database's next commit round: the transactions
        that arrive while a round is applied go together in the next one (one
        ``db_trans_apply``, one fsync per node, for all of them)."""
        self.dbs.not_frozen()
        name = args["db"]
        self.dbs.usable_ctl(name)
        writes = [(unb64(k), None if v is None else unb64(v)) for k, v in args["writes"]]
        fut = asyncio.get_running_loop().create_future()
        queue = self._commit_queue.get(name)
        if queue is None:
            queue = self._commit_queue[name] = []
            tasks.spawn(self._commit_rounds(name, queue), name=f"db-commit-{name}",
                        owner=self._tasks)
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

    def _round_records(self, st, name, batch):
        """The records of one round: (pending {key: Record}, [(future, seqnum)], the new
        sequence number); a transaction whose ``expect_seqnum`` no longer holds fails."""
        seqnum = st.meta[name]["seqnum"]
        pending = {}   # key -> Record: the round's writes, later ones replacing earlier
        done = []      # (future, its sequence number)
        txids = []     # [txid, seqnum] of the round's transactions
        for expect, writes, fut, txid in batch:
            if expect is not None and seqnum != expect:
                fut.set_exception(ControlError(self.pnn, f"{CONFLICT}: sequence number "
                                                         f"{seqnum}, expected {expect}",
                                               code="EBUSY"))
                continue
            seqnum += 1
            for key, value in writes:
                old = pending.get(key) or st.get(name, key)
                pending[key] = record_rules.Record(
                    (old.rsn if old else 0) + 1, self.pnn,
                    record_rules.REC_DELETED if value is None else 0, value or b"")
            done.append((fut, seqnum))
            if txid:
                txids.append([str(txid), seqnum])
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
        return pending, done, seqnum

    async def _commit_round(self, name, batch):
        self.dbs.not_frozen()
        if name in self._trans_blocked:
            if self._trans_blocked[name] == self.cluster.generation:
                raise FrozenError(f"database {name} frozen until the recovery that follows "
                                  "a failed transaction")
            del self._trans_blocked[name]
        st, meta = self.dbs.usable_ctl(name)
        pending, done, seqnum = self._round_records(st, name, batch)
        if not done:
            return
        members = self.dbs.members()
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
            tasks.spawn(self._ask_recovery(
                f"transaction on {name} not applied on {sorted(failed)}"),
                name="db-ask-recovery", owner=self._tasks)
            raise ControlError(self.pnn, f"{AMBIGUOUS}: not applied on nodes "
                                         f"{sorted(failed)}: {failed}", code=AMBIGUOUS_CODE)
        for fut, n in done:
            if not fut.done():
                fut.set_result({"seqnum": n, "nodes": members})

    async def _ask_recovery(self, reason):
        try:
            await self.cluster.ask_recovery(reason)
        except ControlError as exc:  # no leader, or it went away: a recovery follows anyway
            log.warning("could not ask for a recovery (%s): %s", reason, exc.message)

    async def _ctl_trans_apply(self, src, args):
        dbs = self.dbs
        dbs.not_frozen()
        name = args["db"]
        st = dbs.stores[True]
        if not st.available or name in st.damaged:
            # this node serves no copy of it; the next recovery gives it a healthy one
            return {"skipped": st.error or st.damaged[name]}
        await dbs.ensure(name, True, args.get("db_id"))
        recs = [rec_from_wire(w) for w in args["records"]]
        await st.apply(name, recs, seqnum=int(args["seqnum"]),
                       check=dbs.check_epoch(dbs.epoch))
        return {}
