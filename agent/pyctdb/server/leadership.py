"""Who leads: the election's input, its decision acted on, the campaign for the cluster
lock, stepping down, and the leader's watch over its lock.

:mod:`pyctdb.rules.election` decides; :class:`Leadership` gathers what it decides on
and acts: it follows, waits, campaigns (takes the cluster lock in a background task,
then claims) or steps down. Taking the lock never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pyctdb.common.logsetup import NOTICE
from pyctdb.rules import election
from pyctdb.server import tasks
from pyctdb.server.clusterlock import CONTENDED, TAKEN
from pyctdb.server.clusterview import RECMODE_ACTIVE

log = logging.getLogger(__name__)

CAMPAIGN_RETRY = 0.1  # seconds between two tries to take a contended cluster lock
LOCK_CHECK_INTERVAL = 5.0  # seconds between two checks that the held lock is still ours


class Leadership:
    """Runs the election each cycle and acts on its decision: writes ``leader`` and
    ``am_leader`` of the :class:`~pyctdb.server.clusterview.ClusterView`, campaigns for
    the cluster lock, steps down, and while leading watches that the lock is still
    held."""

    def __init__(self, view, membership, lock, *, leader_capable, leader_timeout, clock,
                 start_mono, kick, on_step_down, wallclock=time.time):
        """``kick()`` runs the cycle soon; ``on_step_down()`` is called when this node
        stops leading (the recovery in progress, if any, must stop), and so is every
        callable in ``step_down_hooks`` (the takeover runner's: its run is cancelled).
        ``wallclock()``: seconds since the epoch, the floor of a new term."""
        self.view = view
        self.membership = membership
        self.lock = lock
        self.leader_capable = leader_capable
        self.leader_timeout = leader_timeout
        self.clock = clock
        self.start_mono = start_mono
        self._kick = kick
        self._on_step_down = on_step_down
        self.step_down_hooks = []
        #: callables(pid or None) told the process that holds the cluster lock when it is
        #: taken (None when let go): the guard kills it when it fences this node
        self.lock_hooks = []
        self.wallclock = wallclock
        #: the term of this node's leadership (None: it does not lead); see
        #: :func:`pyctdb.rules.election.next_term`
        self.term = None
        self._newest_term = 0  # the newest leader term this node has seen
        self._bad_terms = set()  # (pnn, instance) whose malformed term was logged
        self._decision = None
        self._waiting_since = None
        self._settled_latch = False
        self._minority_since = clock()
        self._led_with_quorum = False
        self._campaign_task = None
        self._last_campaign = -1e9
        #: when a contended lock is tried again (the cycle wakes for it)
        self._retry_at = None
        self._lock_check_task = None
        self._last_lock_check = clock()
        self._last_lock_msg = (None, None, -1e9)

    @property
    def led_with_quorum(self) -> bool:
        """This node has led with a majority of the nodes connected (False for a
        leader that took over without one: the lone survivor of a two-node cluster)."""
        return self._led_with_quorum

    # -- the election --------------------------------------------------------------------
    def _settled(self, now) -> bool:
        """The start-up grace is over: ``2 x KeepaliveInterval`` after start, or once every
        peer has been heard or this node has joined. Once over, it stays over: a node that
        has heard its peers must not wait again when one of them (the leader) dies."""
        if not self._settled_latch and (
                now - self.start_mono >= 2 * self.membership.keepalive_interval
                or self.view.is_joined() or self.membership.heard_all()):
            self._settled_latch = True
        return self._settled_latch

    def election_input(self, now) -> election.ElectionInput:
        expired = (self._waiting_since is not None
                   and now - self._waiting_since > self.leader_timeout)
        quorum = self.membership.has_quorum()
        if quorum:
            self._minority_since = None
            if self.view.am_leader:
                self._led_with_quorum = True
        elif self._minority_since is None:
            self._minority_since = now
        # (no need to give a majority a head start when every missing node is known to
        # be gone: its guard closed its links, or it said BYE)
        minority_expired = self._minority_since is not None and (
            now - self._minority_since > self.leader_timeout
            or self.membership.missing_all_released())
        return election.ElectionInput(
            me=self.view.pnn, my_flags=self.view.my_flags,
            my_leader_capable=self.leader_capable, am_leader=self.view.am_leader,
            peers=self.membership.peer_views(), settled=self._settled(now),
            candidate_wait_expired=expired, lock_configured=self.lock is not None,
            quorum=quorum, led_with_quorum=self._led_with_quorum,
            minority_wait_expired=minority_expired)

    async def elect(self, now) -> election.Decision:
        """Decide and act: follow, wait, campaign or step down. Returns the decision."""
        d = election.decide(self.election_input(now))
        key = (d.action, d.leader)
        if key != self._decision:
            level = logging.INFO if d.action != "wait" else logging.DEBUG
            if d.action in ("step_down", "campaign") or (d.action == "follow"
                                                           and d.leader != self.view.leader):
                level = logging.WARNING if d.action == "step_down" else logging.INFO
            log.log(level, "election: %s%s: %s", d.action,
                    f" node {d.leader}" if d.leader is not None and d.action != "campaign"
                    else "", d.reason)
            self._decision = key
        if d.action in ("wait", "campaign"):
            if self._waiting_since is None:
                self._waiting_since = now
        else:
            self._waiting_since = None

        if d.action == "lead" and self.term is not None and self.newest_term() > self.term:
            # a node has seen a newer term than this (legitimate) leader's: a node that
            # restarted with a clock behind, say. Its takes would be refused: go above it.
            self._new_term(f"a node has seen term {self._newest_term}")
        if d.action == "step_down":
            await self.step_down(d.reason)
            self.view.leader = d.leader
        elif d.action == "follow":
            self.view.leader = d.leader
        elif d.action == "wait":
            self.view.leader = None
        elif d.action == "campaign":
            self.view.leader = None
            self._maybe_campaign(now, d.reason)
        return d

    # -- terms ---------------------------------------------------------------------------
    def newest_term(self) -> int:
        """The newest leader term this node has seen: its own, and those its peers'
        STATE name (each publishes the newest it has seen). Never goes back."""
        for p in self.membership.peers.values():
            if not p.state or "term" not in p.state:
                continue
            t = election.state_term(p.state)
            if t is None:
                if (p.pnn, p.instance) not in self._bad_terms:
                    self._bad_terms.add((p.pnn, p.instance))
                    log.warning("node %d: malformed term %r in its STATE (ignored)",
                                p.pnn, p.state.get("term"))
            elif t > self._newest_term:
                self._newest_term = t
        if self.term is not None and self.term > self._newest_term:
            self._newest_term = self.term
        return self._newest_term

    def _new_term(self, why):
        """Start a new term of this node's leadership (above every term seen)."""
        old = self.term
        self.term = election.next_term(self.newest_term(), self.wallclock() * 1000)
        self._newest_term = self.term
        if old is not None:
            log.log(NOTICE, "leader term %d replaces term %d: %s", self.term, old, why)

    # -- becoming the leader -------------------------------------------------------------
    def _maybe_campaign(self, now, reason):
        if self._campaign_task is not None and not self._campaign_task.done():
            return
        if now - self._last_campaign < min(CAMPAIGN_RETRY, self.membership.keepalive_interval):
            return
        self._last_campaign = now
        self._retry_at = None
        self._campaign_task = tasks.spawn(self._campaign(reason), name="campaign")

    def next_wake(self):
        """When the cycle must run for the campaign (a contended lock tried again), or
        None."""
        return self._retry_at

    async def _campaign(self, reason):
        if self.lock is not None:
            result, detail = await self.lock.try_take()
            if result != TAKEN:
                lvl = logging.INFO if result == CONTENDED else logging.ERROR
                now = self.clock()
                if (detail, lvl) != self._last_lock_msg[:2] or now - self._last_lock_msg[2] > 30:
                    log.log(lvl, "not leading: cannot take the cluster lock: %s", detail)
                    self._last_lock_msg = (detail, lvl, now)
                if result == CONTENDED:  # try again soon, not a whole tick later: a
                    # leader that lost the majority lets go of it about now
                    self._retry_at = now + CAMPAIGN_RETRY
                    self._kick()
                return
            # The world may have changed while we waited for the lock.
            d = election.decide(self.election_input(self.clock()))
            if d.action not in ("campaign",):
                await self.lock.release()
                log.info("released the cluster lock again: %s", d.reason)
                return
        self._new_term("elected")
        self._lock_holder(getattr(self.lock, "holder_pid", None))
        self.view.am_leader = True
        self.view.leader = self.view.pnn
        self._led_with_quorum = self.membership.has_quorum()
        self.view.generation = None  # forces a recovery on the next cycle
        self._last_lock_check = self.clock()
        log.log(NOTICE, "this node is now the LEADER (%s), term %d%s", reason, self.term,
                f"; holding cluster lock {self.lock.description}" if self.lock else
                "; no cluster lock configured")
        self._kick()

    # -- leading -------------------------------------------------------------------------
    async def step_down(self, reason):
        if not self.view.am_leader:
            return
        self.view.am_leader = False
        ended, self.term = self.term, None
        self._on_step_down()
        for hook in self.step_down_hooks:
            try:
                hook(ended)
            except Exception:
                log.exception("step-down hook %r failed", hook)
        self._led_with_quorum = False
        self.view.generation = None
        self.view.recmode = RECMODE_ACTIVE
        if self.lock is not None:
            await self.lock.release()
            self._lock_holder(None)
        log.warning("this node is no longer the leader: %s", reason)

    def _lock_holder(self, pid):
        for hook in self.lock_hooks:
            try:
                hook(pid)
            except Exception:
                log.exception("lock hook %r failed", hook)

    async def watch_lock(self, now) -> bool:
        """The leader's cluster lock: False (and this node steps down) once it is lost;
        every 5 s a check that the lock file is still the one locked (in the
        background: it may wait on the cluster filesystem). Each cycle, and while a
        recovery runs."""
        if self.lock is None:
            return True
        if not self.lock.held:
            await self.step_down("the cluster lock was lost")
            return False
        if now - self._last_lock_check > LOCK_CHECK_INTERVAL and (
                self._lock_check_task is None or self._lock_check_task.done()):
            self._last_lock_check = now
            self._lock_check_task = tasks.spawn(self._check_lock(), name="lock-check")
        return True

    async def _check_lock(self):
        if not await self.lock.still_held():
            log.error("the cluster lock %s is no longer held (file removed or replaced, or "
                      "helper died): stepping down", self.lock.description)
            await self.step_down("cluster lock lost")
            self._kick()

    async def stop_tasks(self):
        """Stop campaigning and checking the lock."""
        for t in (self._campaign_task, self._lock_check_task):
            if t:
                t.cancel()
                await asyncio.gather(t, return_exceptions=True)

    async def release(self):
        """Let go of the cluster lock (shutting down)."""
        if self.lock is not None:
            await self.lock.release()
        self.view.am_leader = False
        self.term = None
