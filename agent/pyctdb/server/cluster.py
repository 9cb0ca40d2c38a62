"""Membership, node flags and leadership: the cluster layer.

One :class:`Cluster` per agent: the object the other parts of the agent hold. It wires
up the components that do the work, each with one job —

* :class:`~pyctdb.server.membership.Membership`: the peers, their links and states, the
  keepalive, the nodes list (it owns the transport);
* :class:`~pyctdb.server.controls.Controls`: requests to other nodes and their replies;
* :class:`~pyctdb.server.leadership.Leadership`: the election acted on, the cluster lock;
* :class:`~pyctdb.server.recovery_driver.RecoveryDriver`: the generation (the leader's
  recovery, a follower's adoption);
* :class:`~pyctdb.server.nodeadmin.NodeAdmin`: this node's administrative flags —

which share what this node holds true of the cluster in one
:class:`~pyctdb.server.clusterview.ClusterView`, and runs the cycle that drives them.
Each cycle ends with a :class:`CycleReport` (what the node is, what it decided and what
it did), logged at NOTICE when it says something new.

Everything here runs on the event loop and never blocks: taking the cluster lock runs in
a worker thread (or helper process) in a background task.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass

from pyctdb.common.logsetup import NOTICE
from pyctdb.errors import ControlError
from pyctdb.protocol import frames
from pyctdb.rules import election
from pyctdb.rules import nodeflags
from pyctdb.server import tasks
from pyctdb.server.clusterview import RECMODE_ACTIVE, RECMODE_NORMAL, ClusterView
from pyctdb.server.controls import Controls
from pyctdb.server.leadership import Leadership
from pyctdb.server.membership import Membership, nodes_digest
from pyctdb.server.nodeadmin import NodeAdmin
from pyctdb.server.recovery_driver import RecoveryDriver

# RECMODE_* and nodes_digest: where the rest of the agent has always found them
__all__ = ["Cluster", "CycleReport", "RECMODE_ACTIVE", "RECMODE_NORMAL", "nodes_digest"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CycleReport:
    """What one cycle of the cluster layer found and did: this node's ``role`` after it,
    the election's ``decision`` and its ``reason``, and the ``actions`` it took."""

    role: str
    decision: str
    reason: str
    actions: tuple = ()

    def key(self):
        """What makes a cycle without actions news: role, decision and reason."""
        return (self.role, self.decision, self.reason)

    def __str__(self):
        text = f"cycle: {self.role}, decided {self.decision} ({self.reason})"
        return text + (f"; did: {'; '.join(self.actions)}" if self.actions else "")


class Cluster:
    """The cluster layer of one agent: holds its components (membership, controls,
    leadership, the recovery driver, node administration), runs the cycle that drives
    them, and answers the rest of the agent (status, controls); the daemon sets the
    recovery steps and cycle tasks of the other components, in one place."""

    ADMIN = NodeAdmin.ADMIN

    def __init__(self, config, me, tunables, lock=None, clock=time.monotonic):
        self.config = config
        self.pnn = me.pnn
        self.address = me.address
        self.tunables = tunables
        self.lock = lock
        self.clock = clock
        self.leader_capable = bool(config.leader_capability)
        self.lmaster_capable = bool(config.lmaster_capability)
        flags = 0
        if config.start_as_stopped:
            flags |= nodeflags.STOPPED
        if config.start_as_disabled:
            flags |= nodeflags.PERMANENTLY_DISABLED
        self.view = ClusterView(self.pnn, my_flags=flags)
        self.start_time = time.time()
        self.start_mono = clock()
        self.joined = asyncio.Event()
        self.on_joined = []  # callables run once, when this node first joins
        #: sync callables(now) run at the end of every cycle, in this order: set once by
        #: the daemon (:meth:`set_cycle_tasks`)
        self.cycle_tasks = ()
        #: extra fields other components add to this node's STATE
        self.extra_state = {}
        #: the health checks that find a problem: {source: problem} (set_health)
        self.health_problems = {}
        self._kick = asyncio.Event()
        self._running = False
        self._main_task = None
        self._actions = []  # what the current cycle did, for its report
        self._last_report = None

        #: name -> callable: more parts of :meth:`status` (the fencing's, from the daemon)
        self.status_parts = {}
        self.membership = Membership(config, me, tunables, clock,
                                     state_payload=self._state_fields, on_change=self.kick)
        self.controls = Controls(self.pnn, self.membership.instance,
                                 send=self.membership.transport.send,
                                 is_connected=self.membership.is_connected)
        self.driver = RecoveryDriver(self.view, self.membership, clock=clock,
                                     lmaster_capable=self.lmaster_capable,
                                     keep_up=self._keep_up, kick=self.kick, step_arg=self)
        self.leadership = Leadership(
            self.view, self.membership, lock, leader_capable=self.leader_capable,
            leader_timeout=float(config.leader_timeout), clock=clock,
            start_mono=self.start_mono, kick=self.kick, on_step_down=self.driver.wake)
        self.node_admin = NodeAdmin(self.view, clock, self.kick)
        # The components talk through these, and nothing else:
        self.membership.frame_handlers[frames.MsgType.CONTROL] = self.controls.on_control
        self.membership.frame_handlers[frames.MsgType.REPLY] = self.controls.on_reply
        self.membership.link_lost += [self.controls.on_link_lost, self.driver.wake]
        for part in (self.membership, self.driver):
            self.controls.control_handlers.update(part.control_handlers)

    # -- what the rest of the agent reads (the components' state) ------------------------
    instance = property(lambda self: self.membership.instance)
    transport = property(lambda self: self.membership.transport)
    peers = property(lambda self: self.membership.peers)
    nodes = property(lambda self: self.membership.nodes)
    digest = property(lambda self: self.membership.digest)
    #: MsgType -> sync callable(src_pnn, payload) for frame types other components own
    #: (messaging: MESSAGE); run on the event loop, after the stale-instance check
    frame_handlers = property(lambda self: self.membership.frame_handlers)
    def set_recovery_steps(self, during, after):
        """What the leader's recovery runs, in order (the daemon says it once, in one
        place): ``during`` while the cluster is in recovery mode, ``after`` once the new
        generation is in place. Each is an async callable ``(cluster, members)``."""
        self.driver.steps_during = tuple(during)
        self.driver.steps_after = tuple(after)

    def set_cycle_tasks(self, tasks):
        """What every cycle runs after the election, in order: sync callables ``(now)``
        (the daemon says it once, in one place). A task returns a short sentence of what
        it started, for the cycle's report, or None."""
        self.cycle_tasks = tuple(tasks)

    #: op -> async handler(src_pnn, args) -> result (JSON-able); see control()
    control_handlers = property(lambda self: self.controls.control_handlers)
    last_recovery_started = property(lambda self: self.driver.last_recovery_started)
    last_recovery_finished = property(lambda self: self.driver.last_recovery_finished)
    am_leader = property(lambda self: self.view.am_leader)
    leader = property(lambda self: self.view.leader)
    generation = property(lambda self: self.view.generation)
    vnnmap = property(lambda self: self.view.vnnmap)
    members = property(lambda self: self.view.members)
    recmode = property(lambda self: self.view.recmode)
    #: this node's leader term (None: not leading); see Leadership.newest_term
    term = property(lambda self: self.leadership.term)
    newest_term = property(lambda self: self.leadership.newest_term)
    on_step_down = property(lambda self: self.leadership.step_down_hooks.append)

    @property
    def my_flags(self) -> int:
        return self.view.my_flags

    @my_flags.setter
    def my_flags(self, flags):  # (the monitor: UNHEALTHY; failover: STOPPED)
        self.view.my_flags = flags

    @property
    def keepalive_interval(self) -> float:
        return self.membership.keepalive_interval

    @property
    def keepalive_window(self) -> float:
        return self.membership.keepalive_window

    @property
    def leader_timeout(self) -> float:
        return self.leadership.leader_timeout

    def peer_flags(self, peer) -> int:
        return self.membership.peer_flags(peer)

    def has_quorum(self) -> bool:
        return self.membership.has_quorum()

    def election_input(self, now) -> election.ElectionInput:
        return self.leadership.election_input(now)

    def is_joined(self) -> bool:
        return self.view.is_joined()

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self):
        self._running = True
        await self.transport.start()
        self._main_task = tasks.spawn(self._run(), name="cluster")
        log.info("node %d (%s) started: %d nodes, cluster lock %s", self.pnn, self.address,
                 len(self.nodes), self.lock.description if self.lock else "NOT CONFIGURED "
                 "(election alone decides: unsafe against split brain)")

    async def stop(self, released=False):
        """Stop: BYE to the peers (``released``: this node's addresses are gone, so
        they may move at once), let go of the cluster lock."""
        self._running = False
        self._kick.set()
        if self._main_task:
            self._main_task.cancel()
            await asyncio.gather(self._main_task, return_exceptions=True)
        await self.leadership.stop_tasks()
        await self.controls.stop()
        await self.transport.stop(bye_payload={"pnn": self.pnn, "instance": self.instance,
                                               "released": released})
        await self.leadership.release()

    def kick(self):
        """Run the cycle soon (something it acts on changed)."""
        self._kick.set()

    def set_health(self, source, problem=None) -> bool:
        """One health check's finding (``source``: the monitor event, a database
        directory...): a ``problem`` (one sentence) makes this node UNHEALTHY, None
        clears that check's; UNHEALTHY while any check has one. Whether the flag
        changed (the caller logs it)."""
        if problem is None:
            self.health_problems.pop(source, None)
        else:
            self.health_problems[source] = problem
        old = self.my_flags
        new = (old | nodeflags.UNHEALTHY if self.health_problems
               else old & ~nodeflags.UNHEALTHY)
        if new != old:
            self.my_flags = new
            self.kick()
        return new != old

    # -- requests of the rest of the agent -----------------------------------------------
    async def control(self, pnn, op, args=None, timeout=5.0):
        """Ask node ``pnn`` to run ``op``; return its result or raise ControlError.

        To this node itself the handler is called directly."""
        return await self.controls.call(pnn, op, args, timeout)

    def held_down(self) -> dict:
        """{pnn: until when} of the down nodes whose addresses may not move yet (see
        :meth:`Membership.held`)."""
        return self.membership.held(self.clock())

    def reload_nodes(self, new_nodes):
        """Apply a new nodes list (see :meth:`Membership.reload_nodes`)."""
        return self.membership.reload_nodes(new_nodes)

    def request_recovery(self, reason):
        """On the leader: run a recovery at the next cycle even if nothing changed."""
        self.driver.request(reason)

    async def ask_recovery(self, reason):
        """Ask the leader (this node or another) for a recovery; returns its PNN."""
        if self.am_leader:
            self.request_recovery(reason)
            return self.pnn
        if self.leader is None:
            raise ControlError(self.pnn, "no leader: a recovery runs once one is elected")
        res = await self.control(self.leader, "recover", {"reason": reason})
        return res["leader"]

    def admin(self, action, ban_seconds=None) -> dict:
        """Set or clear one of this node's administrative flags (see
        :meth:`NodeAdmin.admin`)."""
        return self.node_admin.admin(action, ban_seconds)

    # -- the cycle -----------------------------------------------------------------------
    async def _run(self):
        while self._running:
            try:
                await asyncio.wait_for(self._kick.wait(), self._next_wake(self.clock()))
            except asyncio.TimeoutError:
                pass
            self._kick.clear()
            try:
                await self._cycle()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("error in cluster cycle (continuing)")
                await asyncio.sleep(0.1)

    async def _cycle(self):
        now = self.clock()
        self._actions = actions = []
        was_leader = self.view.am_leader
        if self.node_admin.expire_ban(now):
            actions.append("ban period over")
        self._drop_silent(now)
        decision = await self.leadership.elect(now)
        done = None
        if self.view.am_leader:
            if await self.leadership.watch_lock(now):
                done = await self.driver.lead(now)
        else:
            done = self.driver.follow()
        if was_leader and not self.view.am_leader:
            actions.append("stepped down")
        if done:
            actions.append(done)
        if self._update_joined():
            actions.append("joined the cluster")
        for task in self.cycle_tasks:
            try:
                did = task(now)
            except Exception:
                log.exception("cycle task %s failed", getattr(task, "__qualname__", task))
            else:
                if did:
                    actions.append(did)
        self.membership.broadcast_state(now)
        self._report(decision, actions)

    def _report(self, d, actions):
        """Log the cycle's report at NOTICE when it says something new: it took actions,
        or its role, decision or reason differ from the last report's. Repeats go to
        DEBUG."""
        v = self.view
        role = ("leader" if v.am_leader else
                f"follower of node {v.leader}" if v.leader is not None else "no leader")
        decision = d.action + (f" node {d.leader}" if d.leader is not None
                               and d.action in ("follow", "step_down") else "")
        report = CycleReport(role, decision, d.reason, tuple(actions))
        news = report.actions or self._last_report is None \
            or report.key() != self._last_report.key()
        log.log(NOTICE if news else logging.DEBUG, "%s", report)
        self._last_report = report
        return report

    def _next_wake(self, now) -> float:
        """Seconds until the cycle must run anyway — the one place its timing is
        decided: the tick, min(KeepaliveInterval/2, 0.25); just after the first
        connected peer would count as silent, so that a silent peer is dropped as soon
        as it is, not up to a tick later; when a contended cluster lock is tried
        again; on the leader, when a down node is fenced (its addresses may move)."""
        wait = min(self.keepalive_interval / 2, 0.25)
        silent = self.membership.silent_deadline()
        if silent is not None:
            wait = min(wait, silent - now)
        retry = self.leadership.next_wake()
        if retry is not None and retry > now:
            wait = min(wait, retry - now)
        if self.view.am_leader:  # (a fenced node's addresses move as soon as they may)
            for until in self.membership.held(now).values():
                wait = min(wait, until - now + 0.002)
        return max(0.001, wait)

    async def _keep_up(self, now) -> float:
        """What the cycle does every tick, done too while a recovery blocks it: drop
        silent peers, send the keepalive when due, and as leader watch the cluster lock.
        Returns the seconds until it is due again."""
        self._drop_silent(now)
        self.membership.broadcast_state(now)  # sends when a keepalive is due
        if self.view.am_leader:  # (a lost lock: stepped down, then the recovery aborts)
            await self.leadership.watch_lock(now)
        return self._next_wake(now)

    def _drop_silent(self, now):
        for pnn in self.membership.drop_silent(now):
            self._actions.append(f"dropped silent node {pnn}")

    def _update_joined(self) -> bool:
        """The first time this node has joined: set :attr:`joined`, run
        :attr:`on_joined`; True then."""
        if not self.is_joined() or self.joined.is_set():
            return False
        self.joined.set()
        log.log(NOTICE, "node %d joined the cluster: leader %d, generation %d",
                self.pnn, self.leader, self.generation)
        for cb in self.on_joined:
            try:
                cb()
            except Exception:
                log.exception("on_joined callback failed")
        return True

    def _state_fields(self) -> dict:
        """This node's STATE but the ``connected`` list (which membership adds)."""
        v = self.view
        return {
            "pnn": self.pnn, "instance": self.instance, "flags": v.my_flags,
            "leader": v.leader, "is_leader": v.am_leader,
            "generation": v.generation, "recmode": v.recmode,
            "vnnmap": list(v.vnnmap), "members": list(v.members),
            "lmaster_capable": self.lmaster_capable, "leader_capable": self.leader_capable,
            "term": self.leadership.newest_term(),
            **self.extra_state,
        }

    # -- queries (for the API) -----------------------------------------------------------
    def status(self) -> dict:
        nodes = []
        my_leader = self.leader
        healthy = my_leader is not None and self.recmode == RECMODE_NORMAL
        num_deleted = 0
        for n in self.nodes:
            if n.deleted:
                num_deleted += 1
                fl, leader, gen = nodeflags.DELETED, None, None
            elif n.pnn == self.pnn:
                fl, leader, gen = self.my_flags, self.leader, self.generation
            else:
                p = self.peers[n.pnn]
                fl = self.peer_flags(p)
                st = p.state if p.link_up else None
                leader = st.get("leader") if st else None
                gen = st.get("generation") if st else None
            if not n.deleted:
                if fl != 0 or leader != my_leader:
                    healthy = False
            nodes.append({
                "pnn": n.pnn, "address": n.address, "flags": fl,
                "flag_names": nodeflags.flag_names(fl), "state": nodeflags.pretty(fl),
                "this_node": n.pnn == self.pnn, "deleted": n.deleted, "leader": leader,
                "generation": gen})
        return {
            "pnn": self.pnn, "num_nodes": len(self.nodes), "num_deleted": num_deleted,
            "nodes": nodes, "generation": self.generation, "vnnmap": list(self.vnnmap),
            "recovery_mode": "NORMAL" if self.recmode == RECMODE_NORMAL else "RECOVERY",
            "recovery_mode_value": self.recmode, "leader": self.leader,
            "joined": self.is_joined(), "healthy": healthy,
            "cluster_lock": {"configured": self.lock is not None,
                             "lock": self.lock.description if self.lock else None,
                             "held": bool(self.lock and self.lock.held)},
            "uptime": self.uptime(),
            "transport": {"authenticated": self.transport.authenticated},
            **{name: part() for name, part in self.status_parts.items()},
        }

    def uptime(self) -> dict:
        return {"pnn": self.pnn, "current_time": time.time(), "start_time": self.start_time,
                "last_recovery_started": self.last_recovery_started,
                "last_recovery_finished": self.last_recovery_finished}

    def pid(self):
        return os.getpid()
