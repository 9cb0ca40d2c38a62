"""The generation this node is in: made by the leader's recovery, adopted by followers.

As leader, :class:`RecoveryDriver` runs a recovery whenever the set of active members
changes (or one is asked for): recovery mode ACTIVE, the recovery steps (the databases,
the addresses) while watching that no member is lost, then a new generation and vnn map
in NORMAL mode, then the steps after run once it is in place. As follower it adopts the
leader's generation from the leader's STATE.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from pyctdb.common.logsetup import NOTICE
from pyctdb.errors import ControlError
from pyctdb.rules import election
from pyctdb.server import tasks
from pyctdb.server.clusterview import INVALID_GENERATION, RECMODE_ACTIVE, RECMODE_NORMAL

log = logging.getLogger(__name__)


async def _outcome(coro):
    """Run ``coro``; return the exception it raised (None: it ran to its end). Its
    caller handles the exception: it is no crash for :func:`tasks.spawn` to log."""
    try:
        await coro
    except Exception as exc:
        return exc
    return None


class RecoveryDriver:
    """Keeps this node's generation, vnn map, members and recovery mode (in the
    :class:`~pyctdb.server.clusterview.ClusterView`) right: the leader makes a new
    generation by a recovery; a follower adopts its leader's."""

    def __init__(self, view, membership, *, clock, lmaster_capable, keep_up, kick,
                 step_arg):
        """``keep_up(now) -> seconds``: what the cycle does every tick (keepalive,
        dropping silent peers, the lock watch), done while a recovery blocks the cycle;
        it returns how long to wait at most before doing it again. ``kick()`` runs the
        cycle soon. ``step_arg``: the first argument of the recovery steps (the cluster)."""
        self.view = view
        self.membership = membership
        self.clock = clock
        self.lmaster_capable = lmaster_capable
        self._keep_up = keep_up
        self._kick = kick
        self._step_arg = step_arg
        #: async callables(cluster, members) the leader runs in a recovery, in order
        #: (:meth:`Cluster.set_recovery_steps`) ...
        self.steps_during = ()
        #: ... and these once the new generation is in place (recovery mode NORMAL)
        self.steps_after = ()
        self.last_recovery_started = None
        self.last_recovery_finished = None
        self._wanted = None  # why a recovery was asked for (request)
        #: a link went down or this node stepped down: wakes the recovery's watch
        self._watch_wake = asyncio.Event()
        #: the controls this part serves (op -> handler), for the cluster's Controls
        self.control_handlers = {"recover": self._ctl_recover}

    def wake(self, *_):
        """Something the running recovery must look at happened (a link went down, this
        node stepped down)."""
        self._watch_wake.set()

    # -- asking for one ------------------------------------------------------------------
    def request(self, reason):
        """On the leader: run a recovery at the next cycle even if nothing changed
        (CTDB's ``ctdb recover``; the database layer after a transaction that some
        member failed to apply)."""
        self._wanted = reason
        log.log(NOTICE, "leader: recovery asked for: %s", reason)
        self._kick()

    async def _ctl_recover(self, src, args):
        if not self.view.am_leader:
            raise ControlError(self.view.pnn, "this node is not the leader")
        self.request(f"{args.get('reason') or 'recover'} (from node {src})")
        return {"leader": self.view.pnn}

    # -- the leader ----------------------------------------------------------------------
    async def lead(self, now):
        """The leader's part of a cycle: a recovery if the active members changed, none
        was completed yet, or one was asked for. Returns what was done (or None)."""
        v = self.view
        members = self.membership.active_members(v.my_flags)
        if members == v.members and v.generation is not None \
                and v.recmode == RECMODE_NORMAL and self._wanted is None:
            log.debug("leader: generation %d unchanged, members %s", v.generation, members)
            return None
        return await self._recover(members)

    async def _recover(self, members):
        v = self.view
        old = set(v.members)
        joined = sorted(set(members) - old)
        left = sorted(old - set(members))
        asked, self._wanted = self._wanted, None
        v.recmode = RECMODE_ACTIVE
        self.last_recovery_started = time.time()
        t0 = time.monotonic()
        self.membership.broadcast_state(self.clock(), force=True)
        aborted = await self._while_watched(self._run_steps(self.steps_during, members),
                                            members)
        if aborted is not None:
            log.warning("leader: recovery aborted after %.1f ms: %s%s",
                        (time.monotonic() - t0) * 1000, aborted,
                        "; starting again" if v.am_leader else "")
            self._kick()
            return f"recovery of {members} aborted: {aborted}"
        gen = v.generation
        while gen in (None, 0, INVALID_GENERATION, v.generation):
            gen = random.randint(2, 2 ** 31 - 1)
        v.generation = gen
        v.members = members
        lmaster = {v.pnn: self.lmaster_capable, **self.membership.lmaster_capability()}
        v.vnnmap = election.vnnmap_for(members, lmaster)
        v.recmode = RECMODE_NORMAL
        self.last_recovery_finished = time.time()
        why = []
        if joined:
            why.append(f"joined {joined}")
        if left:
            why.append(f"left {left}")
        if asked:
            why.append(f"asked for: {asked}")
        log.log(NOTICE, "leader: recovery done in %.1f ms: generation %d, members %s%s",
                (time.monotonic() - t0) * 1000, gen, members,
                f" ({', '.join(why)})" if why else "")
        self.membership.broadcast_state(self.clock(), force=True)
        failed = await self._while_watched(self._run_steps(self.steps_after, members))
        if failed is not None:
            log.warning("leader: after the recovery: %s", failed)
        return f"recovered to generation {gen} with members {members}" + (
            f" ({', '.join(why)})" if why else "")

    async def _run_steps(self, steps, members):
        for step in steps:
            await step(self._step_arg, members)

    async def _while_watched(self, coro, abort_unless=None):
        """Run ``coro`` (the recovery steps, which the cycle waits for: seconds for a
        large database) while keeping up what the blocked cycle would do (``keep_up``:
        the keepalive, or the other nodes drop this leader; dropping silent peers, or a
        control to a dead member waits for its timeout; the leader's check of its
        cluster lock). ``abort_unless``: members that must stay connected; when one is
        lost, ``coro`` is cancelled and the reason returned (None: it ran to its end). A
        ControlError from ``coro`` (a member that failed or went away) is returned as a
        reason too; anything else is raised."""
        task = tasks.spawn(_outcome(coro), name="recovery")
        reason = None
        try:
            while not task.done():
                timeout = await self._keep_up(self.clock())
                if abort_unless is not None:
                    reason = election.recovery_abort(abort_unless, self.view.pnn,
                                                     self.membership.connected(),
                                                     self.view.am_leader)
                    if reason is not None:
                        task.cancel()
                        break
                self._watch_wake.clear()
                waiter = tasks.spawn(self._watch_wake.wait(), name="recovery-watch")
                try:
                    await asyncio.wait({task, waiter}, timeout=timeout,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
        except asyncio.CancelledError:
            task.cancel()
            raise
        try:
            exc = await task
        except asyncio.CancelledError:
            if reason is None:
                raise
            return reason
        if isinstance(exc, ControlError):
            return f"{exc}"
        if exc is not None:
            raise exc
        return reason

    # -- a follower ----------------------------------------------------------------------
    def follow(self):
        """A follower's part of a cycle: adopt the leader's generation from its STATE.
        Returns what changed (or None)."""
        v = self.view
        if v.leader is None:
            v.generation = None
            v.recmode = RECMODE_ACTIVE
            return None
        st = self.membership.state_of(v.leader)
        if not st or not st.get("is_leader"):
            v.recmode = RECMODE_ACTIVE
            return None
        adopted = None
        if st["generation"] != v.generation:
            if st["generation"] is not None:
                log.info("following leader %d: generation %d, members %s", v.leader,
                         st["generation"], st["members"])
                self.last_recovery_started = self.last_recovery_started or time.time()
                self.last_recovery_finished = time.time()
                adopted = (f"adopted generation {st['generation']} of leader {v.leader}, "
                           f"members {st['members']}")
        v.generation = st["generation"]
        v.vnnmap = list(st["vnnmap"])
        v.members = list(st["members"])
        v.recmode = st["recmode"] if v.generation is not None else RECMODE_ACTIVE
        return adopted
