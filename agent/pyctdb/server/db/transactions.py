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
import os
import secrets
import time

from pyctdb.errors import (ControlError, DbError, DiskFailure, FrozenError, PyctdbError,
                           TransactionInDoubt)
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
#: Seconds a requester whose transaction is in doubt waits past its deadline for the
#: recovery that decides it (a paused or cut-off requester rejoins meanwhile)
DOUBT_WAIT = 10.0
#: A test hook, for the tests of a commit cut in its last phase (docs/databases.md,
#: "Transaction answers"): ``PYCTDB_TEST_COMMIT_DELAY="PHASE:SECONDS"`` in an agent's
#: environment makes it wait SECONDS in PHASE of every commit round: ``applied`` (a
#: member, once it applied a round, before it answers the coordinator) or ``answer``
#: (the coordinator, once every member applied a round, before it answers). Unset in
#: production: no wait.
_DELAY_PHASE, _, _DELAY = os.environ.get("PYCTDB_TEST_COMMIT_DELAY", "").partition(":")


async def _test_delay(phase):
    if _DELAY and phase == _DELAY_PHASE:
        log.warning("test hook: commit phase %s delayed %s s", phase, _DELAY)
        await asyncio.sleep(float(_DELAY))


def _failure(exc: ControlError):
    """What a failed ``db_trans_commit`` means for the requester: ``"conflict"``,
    ``"doubt"`` (applied on some members only), ``"timeout"``, ``"unreachable"``,
    ``"frozen"`` (worth another try), else ``"fail"``. By the error's code, never its
    text: EBUSY, AMBIGUOUS_CODE (the coordinator's answers), EAGAIN (a frozen
    coordinator: :class:`~pyctdb.errors.FrozenError`), ETIMEDOUT, ENOTCONN (the control
    layer's)."""
    return {"EBUSY": "conflict", AMBIGUOUS_CODE: "doubt", "EAGAIN": "frozen",
            "ETIMEDOUT": "timeout", "ENOTCONN": "unreachable"}.get(exc.code, "fail")


def _txids(rec):
    """The [txid, seqnum] pairs of a stored ``__pyctdb_txids__`` record (None: none)."""
    if rec is None or rec.deleted:
        return []
    try:
        return [(str(t), int(n)) for t, n in json.loads(rec.value)["txids"]]
    except (ValueError, KeyError, TypeError):
        return []


def _link_up(cluster, pnn):
    """Whether a control to node ``pnn`` is sent now (this node, or its link is up):
    one refused as not connected was never sent, so it was not applied."""
    if pnn == cluster.pnn:
        return True
    peer = cluster.peers.get(pnn)
    return peer is not None and peer.link_up


def _settle(fut, result=None, exc=None):
    """Answer a queued transaction once (its requester's control may be gone)."""
    if not fut.done():
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


class _Commit:
    """The requester's side of one transaction: its attempts (``db_trans_commit`` to the
    coordinator, the same txid each time) and what is known of their outcome.

    ``doubt`` holds the generations seen while an attempt whose outcome is unknown was
    out (a round cut by a node's death: EINPROGRESS; a lost link to the coordinator
    after sending; a timeout). Empty: no attempt so far was applied anywhere. Once this
    node serves in another generation, a recovery has decided: this node's copy has the
    txid (kept: success) or not (not kept). ``final`` is the answer of an attempt that
    was refused for good (EBUSY conflict, an error of the coordinator), given once no
    earlier attempt is in doubt. Past the deadline nothing is sent; a transaction in
    doubt waits up to DOUBT_WAIT more for the recovery that decides (a paused or cut-off
    requester rejoins), then is answered :class:`TransactionInDoubt`."""

    def __init__(self, trans, name, wire, expect_seqnum, timeout):
        self.t = trans
        self.name = name
        self.wire = wire
        self.expect = expect_seqnum
        self.txid = secrets.token_hex(8)
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.settle = self.deadline + DOUBT_WAIT
        self.doubt = set()
        self.final = None
        self.last = None     # the last failure, for the messages

    async def answer(self):
        """Send the transaction until its answer is known (see the class)."""
        delay = 0.02
        while True:
            await self._serving()
            done = await self._decided()
            if done is not None:
                return done
            if self.final is not None and not self.doubt:
                raise self.final
            if self.final is not None or time.monotonic() >= self.deadline:
                if not self.doubt:
                    raise self._not_committed()
                await self._new_generation()
                continue
            done, retry = await self._attempt()
            if done is not None:
                return done
            if retry:
                await asyncio.sleep(min(delay, max(0.0, self.deadline - time.monotonic())))
                delay = min(delay * 2, 0.3)

    async def _attempt(self):
        """One ``db_trans_commit``: (its sequence number, None) or (None, whether to
        send it again after a pause); what its failure says is noted."""
        t, name = self.t, self.name
        gen = t.cluster.generation
        try:
            coord = t.coordinator(name)
            sent = _link_up(t.cluster, coord)
            res = await t.cluster.control(coord, "db_trans_commit", {
                "db": name, "writes": self.wire, "txid": self.txid,
                "expect_seqnum": self.expect}, timeout=CTL_TIMEOUT)
            return res["seqnum"], False
        except PyctdbError as exc:  # (ControlError; raised as is by this node's handler)
            self.last = exc
            why = _failure(exc)
        if why == "doubt" or why == "timeout" or why == "unreachable" and sent:
            self.doubt.update((gen, t.cluster.generation))
            if why == "doubt":
                # applied on some members only: the recovery that follows keeps it (a
                # member that applied it survives) or not; wait for it and look
                log.warning("transaction %s on %s: %s; waiting for the recovery",
                            self.txid, name, self.last.message)
                await self._new_generation()
                return None, False
        elif why == "conflict":
            self.final = DbError("EBUSY", f"transaction on {name}: {self.last.message}")
        elif why == "fail":
            self.final = DbError(self.last.code, f"transaction on {name} not committed "
                                 f"(nothing applied): {self.last.message}")
        return None, True

    async def _serving(self):
        """Wait until this node serves databases (until the deadline, or while in
        doubt until the recovery's); its refusal is the answer."""
        limit = self.settle if self.doubt else self.deadline
        try:
            await self.t.dbs.ready(max(0.1, limit - time.monotonic()))
        except DbError as exc:
            self.last = exc
            if self.doubt:
                raise self._in_doubt() from None
            raise DbError(exc.code, f"transaction on {self.name} not committed (nothing "
                          f"applied): {exc.message}") from None

    async def _decided(self):
        """While in doubt: the sequence number if this node's copy has the txid; a
        copy without it from a recovery since the doubtful attempts means not kept."""
        if not self.doubt:
            return None
        done = await self.t.txid_seqnum(self.name, self.txid)
        if done is None and self.t.cluster.generation not in self.doubt:
            log.info("transaction %s on %s: not kept by the recovery", self.txid, self.name)
            self.doubt.clear()
        return done

    async def _new_generation(self):
        """Wait for a generation other than the doubtful attempts' (until the time a
        transaction in doubt waits; past it: in doubt)."""
        while self.t.cluster.generation in self.doubt | {None}:
            if time.monotonic() >= self.settle:
                raise self._in_doubt()
            await asyncio.sleep(0.02)

    def _not_committed(self):
        code = "EAGAIN" if self.last is None else self.last.code
        if code in ("ETIMEDOUT", "ENOTCONN", AMBIGUOUS_CODE):  # (never sent: try again)
            code = "EAGAIN"
        return DbError(code, f"transaction on {self.name} not committed (nothing applied) "
                       f"within {self.timeout:g}s: {self.last or 'the cluster is busy'}")

    def _in_doubt(self):
        return TransactionInDoubt(
            f"transaction {self.txid} on {self.name} in doubt: an attempt may have been "
            f"applied ({self.last}) and no recovery has decided within "
            f"{self.timeout + DOUBT_WAIT:g}s; read the database to know", txid=self.txid)


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
        writer overtook fails with DbError EBUSY instead of undoing the other's change).

        The answer tells the truth (docs/databases.md, "Transaction answers"): the
        sequence number when it is committed (a kept attempt included), a DbError when
        no attempt was applied, :class:`~pyctdb.errors.TransactionInDoubt`
        (EINPROGRESS) when an attempt may have been applied and no recovery decided."""
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
        return await _Commit(self, name, wire, expect_seqnum, timeout).answer()

    async def txid_seqnum(self, name, txid):
        """The sequence number of transaction ``txid`` if this node's copy of
        ``name`` has it (among its last TXIDS_KEPT), else None."""
        st = self.dbs.find(name)[0]
        return dict(_txids(await st.read(name, TXIDS_KEY))).get(txid)

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
        # (with the freeze epoch it came in: a recovery before its round overtakes it)
        queue.append((args.get("expect_seqnum"), writes, fut, args.get("txid"),
                      self.dbs.epoch))
        return await fut

    async def _commit_rounds(self, name, queue):
        """Commit the queued transactions of ``name`` in rounds, in their order, until
        none is left; each gets its own sequence number, and the answer only once every
        member has applied its round."""
        try:
            await self._commit_locks.acquire(name, CTL_TIMEOUT)
        except BaseException as exc:
            self._commit_queue.pop(name, None)
            for entry in queue:  # (not applied: the requesters send them again)
                _settle(entry[2], exc=DbError("EAGAIN", "transaction coordinator busy: "
                                              f"{type(exc).__name__}"))
            raise
        try:
            while queue:
                batch = queue[:]
                del queue[:]
                try:
                    await self._commit_round(name, batch)
                except Exception as exc:
                    for entry in batch:
                        _settle(entry[2], exc=exc)
        finally:
            self._commit_queue.pop(name, None)
            self._commit_locks.release(name)

    async def _round_records(self, st, name, batch):
        """The records of one round: (pending {key: Record}, [(future, seqnum)], the new
        sequence number). A transaction whose ``expect_seqnum`` no longer holds fails
        (EBUSY), one that came before a recovery is sent again (EAGAIN: not applied);
        one whose txid this copy has is a retry of a committed one, answered its
        sequence number, never applied twice."""
        seqnum = st.meta[name]["seqnum"]
        stored = _txids(await st.read(name, TXIDS_KEY))
        kept, applied = dict(stored), {}   # txid -> seqnum: committed; in this round
        pending = {}   # key -> Record: the round's writes, later ones replacing earlier
        done = []      # (future, its sequence number)
        txids = []     # [txid, seqnum] of the round's transactions
        for expect, writes, fut, txid, epoch in batch:
            if txid and txid in kept:
                log.info("transaction %s on %s sent again: committed already (seqnum %d)",
                         txid, name, kept[txid])
                _settle(fut, {"seqnum": kept[txid], "nodes": self.dbs.members()})
                continue
            if txid and txid in applied:  # (sent twice into one round: applied once)
                done.append((fut, applied[txid]))
                continue
            if epoch != self.dbs.epoch:
                _settle(fut, exc=FrozenError(f"transaction on {name} overtaken by a "
                                             "recovery before its round: not applied"))
                continue
            if expect is not None and seqnum != expect:
                _settle(fut, exc=ControlError(self.pnn, f"{CONFLICT}: sequence number "
                                              f"{seqnum}, expected {expect}", code="EBUSY"))
                continue
            seqnum += 1
            for key, value in writes:
                old = pending.get(key) or await st.read(name, key)
                pending[key] = record_rules.Record(
                    (old.rsn if old else 0) + 1, self.pnn,
                    record_rules.REC_DELETED if value is None else 0, value or b"")
            done.append((fut, seqnum))
            if txid:
                txids.append([str(txid), seqnum])
                applied[txid] = seqnum
        if txids:
            old = await st.read(name, TXIDS_KEY)
            pending[TXIDS_KEY] = record_rules.Record(
                (old.rsn if old else 0) + 1, self.pnn, 0,
                json.dumps({"txids": ([list(p) for p in stored] + txids)[-TXIDS_KEPT:]}
                           ).encode())
        return pending, done, seqnum

    def _not_blocked(self, name):
        """FrozenError while ``name``'s transactions wait for the recovery that follows a
        round some member did not apply."""
        if name in self._trans_blocked:
            if self._trans_blocked[name] == self.cluster.generation:
                raise FrozenError(f"database {name} frozen until the recovery that follows "
                                  "a failed transaction")
            del self._trans_blocked[name]

    async def _commit_round(self, name, batch):
        self.dbs.not_frozen()
        self._not_blocked(name)
        st, meta = self.dbs.usable_ctl(name)
        pending, done, seqnum = await self._round_records(st, name, batch)
        members = self.dbs.members()
        if not done:
            return
        if self.pnn not in members:
            raise DbError("EAGAIN", "the coordinator is not a member of the generation")
        await self._apply_round(name, meta, seqnum, list(pending.items()), members)
        await _test_delay("answer")
        for fut, n in done:
            _settle(fut, {"seqnum": n, "nodes": members})

    async def _apply_round(self, name, meta, seqnum, writes, members):
        """``db_trans_apply`` of ``writes`` ([(key, Record)]) with ``seqnum`` on every
        member at once. If some member did not apply it: no more rounds of ``name`` in
        this generation, a recovery is asked for (it decides: the highest sequence
        number wins), and ControlError AMBIGUOUS."""
        recs = [rec_to_wire(k, r) for k, r in writes]
        res = await asyncio.gather(*(self.cluster.control(
            m, "db_trans_apply", {"db": name, "db_id": meta["db_id"], "seqnum": seqnum,
                                  "records": recs, "tdb": bool(meta.get("tdb"))},
            timeout=CTL_TIMEOUT)
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
                      meta["seqnum"] + 1, seqnum, failed)
            tasks.spawn(self._ask_recovery(
                f"transaction on {name} not applied on {sorted(failed)}"),
                name="db-ask-recovery", owner=self._tasks)
            raise ControlError(self.pnn, f"{AMBIGUOUS}: not applied on nodes "
                                         f"{sorted(failed)}: {failed}", code=AMBIGUOUS_CODE)

    async def trans3_commit(self, name, writes, seqnum):
        """CTDB's TRANS3_COMMIT (a Samba transaction, its writes and the sequence number
        record made by the client, which holds the database's g_lock meanwhile):
        ``writes`` ([(key, Record)]) applied as they are on every member, with
        ``seqnum``. Refused while frozen (Samba then compares its sequence number and
        sends it again); ControlError AMBIGUOUS when some member did not apply it (the
        recovery that follows decides, as in CTDB)."""
        dbs = self.dbs
        dbs.not_frozen()
        st, meta = dbs.usable_ctl(name)
        if not st.persistent:
            raise DbError("EINVAL", f"{name} is a volatile database: TRANS3_COMMIT is for "
                          "persistent ones")
        self._not_blocked(name)
        await self._commit_locks.acquire(name, CTL_TIMEOUT)
        try:
            members = dbs.members()
            if self.pnn not in members:
                raise DbError("EAGAIN", "this node is not a member of the generation")
            await self._apply_round(name, meta, seqnum, writes, members)
        finally:
            self._commit_locks.release(name)
        return seqnum

    async def _ask_recovery(self, reason):
        try:
            await self.cluster.ask_recovery(reason)
        except ControlError as exc:  # no leader, or it went away: a recovery follows anyway
            log.warning("could not ask for a recovery (%s): %s", reason, exc.message)

    async def _ctl_trans_apply(self, src, args):
        dbs = self.dbs
        dbs.not_frozen()
        name = args["db"]
        st = (dbs.tdb_stores if args.get("tdb") else dbs.stores)[True]
        if not st.available or name in st.damaged:
            # this node serves no copy of it; the next recovery gives it a healthy one
            return {"skipped": st.error or st.damaged[name]}
        recs = [rec_from_wire(w) for w in args["records"]]
        try:
            await dbs.ensure(name, True, args.get("db_id"), tdb=bool(args.get("tdb")))
            st = dbs.find(name)[0]
            await st.apply(name, recs, seqnum=int(args["seqnum"]),
                           check=dbs.check_epoch(dbs.epoch))
        except DiskFailure as exc:  # (this copy is behind: not served until a recovery)
            dbs.health.missed(st, name, exc)
            return {"skipped": exc.message}
        await _test_delay("applied")
        return {}
