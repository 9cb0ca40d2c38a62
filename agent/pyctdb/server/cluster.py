"""Membership, node flags and leadership: the cluster layer.

One :class:`Cluster` per agent. It owns the transport, keeps each peer's link and last
reported state, runs the election every cycle (:mod:`pyctdb.election` decides; this module
acts), holds the cluster lock while leading, and as leader runs a recovery (new
generation and vnn map) whenever the set of active nodes changes.

Everything here runs on the event loop and never blocks: taking the cluster lock runs in
a worker thread (or helper process) in a background task.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import secrets
import time
from dataclasses import dataclass, field

from pyctdb import __version__
from pyctdb.rules import election
from pyctdb.rules import nodeflags
from pyctdb.protocol import frames
from pyctdb.server.clusterlock import CONTENDED, TAKEN
from pyctdb.server.transport import Transport
from pyctdb.errors import ControlError

log = logging.getLogger("pyctdb.cluster")

RECMODE_NORMAL = 0
RECMODE_ACTIVE = 1
INVALID_GENERATION = 1  # as CTDB: never handed out
CAMPAIGN_RETRY = 0.1  # seconds between two tries to take a contended cluster lock


def nodes_digest(nodes) -> str:
    text = "\n".join(n.address if not n.deleted else "#" for n in nodes)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Peer:
    pnn: int
    address: str
    link_up: bool = False
    instance: str = ""
    state: dict = None
    last_heard: float = 0.0
    down_since: float = field(default_factory=time.monotonic)


class Cluster:
    def __init__(self, config, me, tunables, lock=None, clock=time.monotonic):
        self.config = config
        self.pnn = me.pnn
        self.address = me.address
        self.tunables = tunables
        self.lock = lock
        self.clock = clock
        self.instance = secrets.token_hex(8)
        self.nodes = list(config.nodes)
        self.digest = nodes_digest(self.nodes)
        self.peers = {n.pnn: Peer(n.pnn, n.address) for n in self.nodes
                      if not n.deleted and n.pnn != self.pnn}
        self.my_flags = 0
        if config.start_as_stopped:
            self.my_flags |= nodeflags.STOPPED
        if config.start_as_disabled:
            self.my_flags |= nodeflags.PERMANENTLY_DISABLED
        self.leader_capable = bool(config.leader_capability)
        self.lmaster_capable = bool(config.lmaster_capability)

        self.am_leader = False
        self.leader = None
        self.generation = None
        self.vnnmap = []
        self.members = []
        self.recmode = RECMODE_ACTIVE
        self.start_time = time.time()
        self.start_mono = clock()
        self.last_recovery_started = None
        self.last_recovery_finished = None
        self.recovery_hooks = []  # async callables(cluster, members), run by the leader
        # ... and these once the new generation is in place (recovery mode NORMAL)
        self.recovered_hooks = []
        self.joined = asyncio.Event()
        self.on_joined = []  # callables run once, when this node first joins

        self._kick = asyncio.Event()
        #: a link went down or this node stepped down: wakes the leader's recovery watch
        self._watch_wake = asyncio.Event()
        self._running = False
        self._decision = None
        self._campaign_task = None
        self._last_campaign = -1e9
        self._lock_check_task = None
        self._last_lock_check = clock()
        self._waiting_since = None
        self._settled_latch = False
        self._minority_since = clock()
        self._led_with_quorum = False
        self._last_lock_msg = (None, None, -1e9)
        self._last_sent = None
        self._last_sent_at = -1e9
        self._main_task = None
        #: op -> async handler(src_pnn, args) -> result (JSON-able); see control()
        self.control_handlers = {"ping": self._ctl_ping, "recover": self._ctl_recover,
                                 "reload_nodes": self._ctl_reload_nodes}
        self._recovery_wanted = None  # why a recovery was asked for (request_recovery)
        self._req_ids = iter(range(1, 2 ** 62))
        self._pending = {}  # req_id -> (pnn, Future)
        self._control_tasks = set()
        #: sync callables(now) run at the end of every cycle (failover, later databases)
        self.cycle_hooks = []
        #: extra fields other components add to this node's STATE
        self.extra_state = {}
        #: MsgType -> sync callable(src_pnn, payload) for frame types other components
        #: own (messaging: MESSAGE); run on the event loop, after the stale-instance check
        self.frame_handlers = {}
        self.transport = Transport(
            pnn=self.pnn, address=self.address, port=config.port,
            nodes={n.pnn: n.address for n in self.nodes if not n.deleted},
            hello=self._hello, on_frame=self._on_frame, on_link_up=self._on_link_up,
            on_link_down=self._on_link_down)

    # -- tunables ------------------------------------------------------------------------
    @property
    def keepalive_interval(self) -> float:
        return float(self.tunables.get("KeepaliveInterval"))

    @property
    def keepalive_window(self) -> float:
        return self.keepalive_interval * int(self.tunables.get("KeepaliveLimit"))

    @property
    def leader_timeout(self) -> float:
        return float(self.config.leader_timeout)

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self):
        self._running = True
        await self.transport.start()
        self._main_task = asyncio.create_task(self._run(), name="cluster")
        log.info("node %d (%s) started: %d nodes, cluster lock %s", self.pnn, self.address,
                 len(self.nodes), self.lock.description if self.lock else "NOT CONFIGURED "
                 "(election alone decides: unsafe against split brain)")

    async def stop(self):
        self._running = False
        self._kick.set()
        if self._main_task:
            self._main_task.cancel()
            await asyncio.gather(self._main_task, return_exceptions=True)
        for t in (self._campaign_task, self._lock_check_task):
            if t:
                t.cancel()
                await asyncio.gather(t, return_exceptions=True)
        await self.transport.stop(bye_payload={"pnn": self.pnn, "instance": self.instance})
        if self.lock is not None:
            await self.lock.release()
        self.am_leader = False

    def kick(self):
        self._kick.set()

    # -- transport callbacks -------------------------------------------------------------
    def _hello(self):
        return {"pnn": self.pnn, "address": self.address, "instance": self.instance,
                "nodes_digest": self.digest, "agent_version": __version__}

    def _on_link_up(self, pnn, hello):
        peer = self.peers.get(pnn)
        if peer is None:  # deleted by reloadnodes meanwhile
            return
        peer.link_up = True
        peer.instance = hello["instance"]
        peer.state = None
        peer.last_heard = self.clock()
        log.info("node %d (%s) connected", pnn, peer.address)
        self.transport.send(pnn, frames.MsgType.STATE, self._state_payload())
        self.kick()

    def _on_link_down(self, pnn, reason):
        peer = self.peers.get(pnn)
        if peer is None:  # deleted by reloadnodes meanwhile
            return
        was = peer.link_up
        peer.link_up = False
        peer.state = None
        peer.down_since = self.clock()
        if was:
            log.warning("node %d (%s) is DISCONNECTED: %s", pnn, peer.address, reason)
        self._fail_pending(pnn, f"node {pnn} disconnected")
        self._watch_wake.set()
        self.kick()

    def _on_frame(self, pnn, frame):
        peer = self.peers.get(pnn)
        if peer is None:  # deleted by reloadnodes meanwhile
            return
        peer.last_heard = self.clock()
        p = frame.payload
        if p.get("instance") != peer.instance:
            return  # a stale frame from an older process of that node
        if frame.type == frames.MsgType.STATE:
            old = peer.state
            peer.state = p
            if old is None or any(old.get(k) != v for k, v in p.items() if k != "connected"):
                self.kick()
        elif frame.type == frames.MsgType.BYE:
            log.info("node %d is shutting down", pnn)
            self.transport.drop(pnn, "node shut down")
        elif frame.type == frames.MsgType.CONTROL:
            t = asyncio.create_task(self._serve_control(pnn, p))
            self._control_tasks.add(t)
            t.add_done_callback(self._control_tasks.discard)
        elif frame.type == frames.MsgType.REPLY:
            entry = self._pending.get(p["req_id"])
            if entry is not None and entry[0] == pnn and not entry[1].done():
                if p["ok"]:
                    entry[1].set_result(p.get("result"))
                else:
                    entry[1].set_exception(ControlError(pnn, p.get("error") or "failed"))
        else:
            handler = self.frame_handlers.get(frame.type)
            if handler is not None:
                handler(pnn, p)

    # -- controls: request/response between nodes ------------------------------------
    async def control(self, pnn, op, args=None, timeout=5.0):
        """Ask node ``pnn`` to run ``op``; return its result or raise ControlError.

        To this node itself the handler is called directly."""
        if pnn == self.pnn:
            handler = self.control_handlers.get(op)
            if handler is None:
                raise ControlError(pnn, f"unknown control {op!r}")
            return await handler(self.pnn, dict(args or {}))
        peer = self.peers.get(pnn)
        if peer is None or not peer.link_up:
            raise ControlError(pnn, f"node {pnn} is not connected")
        req_id = next(self._req_ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[req_id] = (pnn, fut)
        try:
            if not self.transport.send(pnn, frames.MsgType.CONTROL, {
                    "pnn": self.pnn, "instance": self.instance, "req_id": req_id, "op": op,
                    "args": dict(args or {})}):
                raise ControlError(pnn, f"node {pnn} is not connected")
            try:
                return await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                raise ControlError(pnn, f"control {op} timed out after {timeout}s") from None
        finally:
            self._pending.pop(req_id, None)

    def _fail_pending(self, pnn, reason):
        for req_id, (dst, fut) in list(self._pending.items()):
            if dst == pnn and not fut.done():
                fut.set_exception(ControlError(pnn, reason))

    async def _serve_control(self, pnn, p):
        reply = {"pnn": self.pnn, "instance": self.instance, "req_id": p["req_id"]}
        handler = self.control_handlers.get(p["op"])
        try:
            if handler is None:
                raise ControlError(self.pnn, f"unknown control {p['op']!r}")
            reply.update(ok=True, result=await handler(pnn, p["args"]))
        except ControlError as exc:
            reply.update(ok=False, error=exc.message)
        except Exception as exc:  # a failing handler answers, it does not kill the daemon
            log.exception("control %s from node %d failed", p["op"], pnn)
            reply.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        self.transport.send(pnn, frames.MsgType.REPLY, reply)

    def reload_nodes(self, new_nodes):
        """Apply a new nodes list (``reloadnodes``, CTDB's rules: nodes.changes). New
        nodes are connected to and join as any returning node does; deleted ones are
        disconnected and forgotten. Returns [(pnn, change)]; ValueError (nothing
        changed) if the change is not allowed."""
        from pyctdb.common.config import nodes_changes
        changes, errors = nodes_changes(self.nodes, new_nodes)
        if not errors and (self.pnn, "DELETED") in changes:
            errors = [f"this node ({self.pnn}) is deleted in the new nodes list: stop it "
                      "instead"]
        if errors:
            raise ValueError("; ".join(errors))
        self.nodes = list(new_nodes)
        self.digest = nodes_digest(self.nodes)
        for n in self.nodes:
            if not n.deleted and n.pnn != self.pnn and n.pnn not in self.peers:
                self.peers[n.pnn] = Peer(n.pnn, n.address)
        self.transport.set_nodes({n.pnn: n.address for n in self.nodes if not n.deleted})
        for pnn, what in changes:
            if what == "DELETED":
                self.peers.pop(pnn, None)
        done = [f"{p} {w}" for p, w in changes if w != "unchanged"]
        log.warning("nodes list reloaded: %d nodes%s", len(self.nodes),
                    f" ({', '.join(done)})" if done else ", no change")
        self.kick()
        return changes

    def request_recovery(self, reason):
        """On the leader: run a recovery at the next cycle even if nothing changed
        (CTDB's ``ctdb recover``; the database layer after a transaction that some
        member failed to apply)."""
        self._recovery_wanted = reason
        log.warning("leader: recovery asked for: %s", reason)
        self.kick()

    async def ask_recovery(self, reason):
        """Ask the leader (this node or another) for a recovery; returns its PNN."""
        if self.am_leader:
            self.request_recovery(reason)
            return self.pnn
        if self.leader is None:
            raise ControlError(self.pnn, "no leader: a recovery runs once one is elected")
        res = await self.control(self.leader, "recover", {"reason": reason})
        return res["leader"]

    async def _ctl_reload_nodes(self, src, args):
        """reloadnodes on this node: read the nodes list again; it must be the one the
        asking node read (``digest``), so that every node moves to the same list."""
        from pyctdb.errors import ConfigError
        from pyctdb.common.config import read_nodes
        try:
            new = read_nodes(self.config)
        except ConfigError as exc:
            raise ControlError(self.pnn, str(exc)) from None
        if nodes_digest(new) != args["digest"]:
            raise ControlError(self.pnn, f"the nodes list on node {self.pnn} "
                               f"({self.config.nodes_source}) differs from node {src}'s: "
                               "copy the same file to every node first")
        try:
            changes = self.reload_nodes(new)
        except ValueError as exc:
            raise ControlError(self.pnn, str(exc)) from None
        return {"changes": changes}

    async def _ctl_recover(self, src, args):
        if not self.am_leader:
            raise ControlError(self.pnn, "this node is not the leader")
        self.request_recovery(f"{args.get('reason') or 'recover'} (from node {src})")
        return {"leader": self.pnn}

    async def _ctl_ping(self, src, args):
        return {"pnn": self.pnn, "time": time.time()}

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
        self._expire_ban(now)
        self._drop_silent(now)
        await self._elect(now)
        if self.am_leader:
            await self._lead(now)
        else:
            self._follow()
        self._update_joined()
        for hook in self.cycle_hooks:
            try:
                hook(now)
            except Exception:
                log.exception("cycle hook failed")
        self._broadcast_state(now)

    def _next_wake(self, now) -> float:
        """Seconds until the cycle must run anyway: the tick, min(KeepaliveInterval/2,
        0.25), or just after the first connected peer would count as silent, so that a
        silent peer is dropped as soon as it is, not up to a tick later."""
        tick = min(self.keepalive_interval / 2, 0.25)
        heard = [p.last_heard for p in self.peers.values() if p.link_up]
        if not heard:
            return tick
        return max(0.001, min(tick, min(heard) + self.keepalive_window + 0.002 - now))

    def _drop_silent(self, now):
        """Drop the peers silent for KeepaliveInterval x KeepaliveLimit (the cycle, and
        the leader's watch while a recovery blocks the cycle)."""
        for peer in self.peers.values():
            if peer.link_up and now - peer.last_heard > self.keepalive_window:
                log.warning("node %d (%s) silent for %.1fs (KeepaliveInterval %s x "
                            "KeepaliveLimit %s): dropping it", peer.pnn, peer.address,
                            now - peer.last_heard, self.tunables.get("KeepaliveInterval"),
                            self.tunables.get("KeepaliveLimit"))
                self.transport.drop(peer.pnn, "keepalive timeout")

    def peer_flags(self, peer) -> int:
        if not peer.link_up:
            return nodeflags.DISCONNECTED
        if peer.state is None:
            return nodeflags.UNKNOWN
        return int(peer.state["flags"])

    def _settled(self, now) -> bool:
        """The start-up grace is over: ``2 x KeepaliveInterval`` after start, or once every
        peer has been heard or this node has joined. Once over, it stays over: a node that
        has heard its peers must not wait again when one of them (the leader) dies."""
        if not self._settled_latch and (
                now - self.start_mono >= 2 * self.keepalive_interval or self.is_joined()
                or all(p.link_up and p.state is not None for p in self.peers.values())):
            self._settled_latch = True
        return self._settled_latch

    def election_input(self, now) -> election.ElectionInput:
        views = []
        for p in self.peers.values():
            st = p.state or {}
            views.append(election.PeerView(
                pnn=p.pnn, connected=p.link_up and p.state is not None,
                flags=self.peer_flags(p), claims_leader=bool(st.get("is_leader")),
                leader_capable=bool(st.get("leader_capable", True))))
        expired = (self._waiting_since is not None
                   and now - self._waiting_since > self.leader_timeout)
        quorum = self.has_quorum()
        if quorum:
            self._minority_since = None
            if self.am_leader:
                self._led_with_quorum = True
        elif self._minority_since is None:
            self._minority_since = now
        minority_expired = (self._minority_since is not None
                            and now - self._minority_since > self.leader_timeout)
        return election.ElectionInput(
            me=self.pnn, my_flags=self.my_flags, my_leader_capable=self.leader_capable,
            am_leader=self.am_leader, peers=tuple(views), settled=self._settled(now),
            candidate_wait_expired=expired, lock_configured=self.lock is not None,
            quorum=quorum, led_with_quorum=self._led_with_quorum,
            minority_wait_expired=minority_expired)

    def has_quorum(self) -> bool:
        """More than half of the non-deleted nodes are connected (this one included)."""
        total = 1 + len(self.peers)
        seen = 1 + sum(1 for p in self.peers.values() if p.link_up and p.state is not None)
        return 2 * seen > total

    async def _elect(self, now):
        d = election.decide(self.election_input(now))
        key = (d.action, d.leader)
        if key != self._decision:
            level = logging.INFO if d.action != "wait" else logging.DEBUG
            if d.action in ("step_down", "campaign") or (d.action == "follow"
                                                           and d.leader != self.leader):
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

        if d.action == "lead":
            return
        if d.action == "step_down":
            await self._step_down(d.reason)
            self.leader = d.leader
        elif d.action == "follow":
            self.leader = d.leader
        elif d.action == "wait":
            self.leader = None
        elif d.action == "campaign":
            self.leader = None
            self._maybe_campaign(now, d.reason)

    def _maybe_campaign(self, now, reason):
        if self._campaign_task is not None and not self._campaign_task.done():
            return
        if now - self._last_campaign < min(CAMPAIGN_RETRY, self.keepalive_interval):
            return
        self._last_campaign = now
        self._campaign_task = asyncio.create_task(self._campaign(reason), name="campaign")

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
                    asyncio.get_running_loop().call_later(CAMPAIGN_RETRY, self.kick)
                return
            # The world may have changed while we waited for the lock.
            d = election.decide(self.election_input(self.clock()))
            if d.action not in ("campaign",):
                await self.lock.release()
                log.info("released the cluster lock again: %s", d.reason)
                return
        self.am_leader = True
        self.leader = self.pnn
        self._led_with_quorum = self.has_quorum()
        self.generation = None  # forces a recovery on the next cycle
        self._last_lock_check = self.clock()
        log.warning("this node is now the LEADER (%s)%s", reason,
                    f"; holding cluster lock {self.lock.description}" if self.lock else
                    "; no cluster lock configured")
        self.kick()

    async def _step_down(self, reason):
        if not self.am_leader:
            return
        self.am_leader = False
        self._watch_wake.set()
        self._led_with_quorum = False
        self.generation = None
        self.recmode = RECMODE_ACTIVE
        if self.lock is not None:
            await self.lock.release()
        log.warning("this node is no longer the leader: %s", reason)

    def _active_members(self) -> list:
        members = [self.pnn] if nodeflags.is_active(self.my_flags) else []
        for p in self.peers.values():
            if p.link_up and p.state is not None and nodeflags.is_active(self.peer_flags(p)):
                members.append(p.pnn)
        return sorted(members)

    async def _watch_lock(self, now) -> bool:
        """The leader's cluster lock: False (and this node steps down) once it is lost;
        every 5 s a check that the lock file is still the one locked (in the
        background: it may wait on the cluster filesystem). Each cycle, and while a
        recovery runs (:meth:`_while_watched`)."""
        if self.lock is None:
            return True
        if not self.lock.held:
            await self._step_down("the cluster lock was lost")
            return False
        if now - self._last_lock_check > 5.0 and (
                self._lock_check_task is None or self._lock_check_task.done()):
            self._last_lock_check = now
            self._lock_check_task = asyncio.create_task(self._check_lock())
        return True

    async def _lead(self, now):
        if not await self._watch_lock(now):
            return
        members = self._active_members()
        if members == self.members and self.generation is not None \
                and self.recmode == RECMODE_NORMAL and self._recovery_wanted is None:
            log.debug("leader: generation %d unchanged, members %s", self.generation, members)
            return
        await self._recover(members)

    async def _check_lock(self):
        if not await self.lock.still_held():
            log.error("the cluster lock %s is no longer held (file removed or replaced, or "
                      "helper died): stepping down", self.lock.description)
            await self._step_down("cluster lock lost")
            self.kick()

    async def _recover(self, members):
        old = set(self.members)
        joined = sorted(set(members) - old)
        left = sorted(old - set(members))
        asked, self._recovery_wanted = self._recovery_wanted, None
        self.recmode = RECMODE_ACTIVE
        self.last_recovery_started = time.time()
        t0 = time.monotonic()
        self._broadcast_state(self.clock(), force=True)
        aborted = await self._while_watched(self._run_hooks(self.recovery_hooks, members),
                                            members)
        if aborted is not None:
            log.warning("leader: recovery aborted after %.1f ms: %s%s",
                        (time.monotonic() - t0) * 1000, aborted,
                        "; starting again" if self.am_leader else "")
            self.kick()
            return
        gen = self.generation
        while gen in (None, 0, INVALID_GENERATION, self.generation):
            gen = random.randint(2, 2 ** 31 - 1)
        self.generation = gen
        self.members = members
        lm = {self.pnn: self.lmaster_capable}
        for p in self.peers.values():
            if p.state is not None:
                lm[p.pnn] = bool(p.state.get("lmaster_capable", True))
        self.vnnmap = election.vnnmap_for(members, lm)
        self.recmode = RECMODE_NORMAL
        self.last_recovery_finished = time.time()
        why = []
        if joined:
            why.append(f"joined {joined}")
        if left:
            why.append(f"left {left}")
        if asked:
            why.append(f"asked for: {asked}")
        log.warning("leader: recovery done in %.1f ms: generation %d, members %s%s",
                    (time.monotonic() - t0) * 1000, gen, members,
                    f" ({', '.join(why)})" if why else "")
        self._broadcast_state(self.clock(), force=True)
        failed = await self._while_watched(self._run_hooks(self.recovered_hooks, members))
        if failed is not None:
            log.warning("leader: after the recovery: %s", failed)

    async def _run_hooks(self, hooks, members):
        for hook in hooks:
            await hook(self, members)

    async def _while_watched(self, coro, abort_unless=None):
        """Run ``coro`` (the recovery hooks, which the cycle waits for: seconds for a
        large database) while keeping up what the blocked cycle would do: the keepalive
        (or the other nodes drop this leader), dropping silent peers (or a control to
        a dead member waits for its timeout), and the leader's check of its cluster
        lock. ``abort_unless``: members that must stay
        connected; when one is lost, ``coro`` is cancelled and the reason returned
        (None: it ran to its end). A ControlError from ``coro`` (a member that failed or
        went away) is returned as a reason too; anything else is raised."""
        task = asyncio.create_task(coro, name="recovery")
        reason = None
        try:
            while not task.done():
                now = self.clock()
                self._drop_silent(now)
                self._broadcast_state(now)  # sends when a keepalive is due
                if self.am_leader:  # (a lost lock: stepped down, then aborted below)
                    await self._watch_lock(now)
                if abort_unless is not None:
                    connected = {p.pnn for p in self.peers.values() if p.link_up}
                    reason = election.recovery_abort(abort_unless, self.pnn, connected,
                                                     self.am_leader)
                    if reason is not None:
                        task.cancel()
                        break
                self._watch_wake.clear()
                waiter = asyncio.ensure_future(self._watch_wake.wait())
                try:
                    await asyncio.wait({task, waiter}, timeout=self._next_wake(now),
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
        except asyncio.CancelledError:
            task.cancel()
            raise
        try:
            await task
        except asyncio.CancelledError:
            if reason is None:
                raise
        except ControlError as exc:
            return f"{exc}"
        return reason

    def _follow(self):
        if self.leader is None:
            self.generation = None
            self.recmode = RECMODE_ACTIVE
            return
        peer = self.peers.get(self.leader)
        st = peer.state if peer is not None else None
        if not st or not st.get("is_leader"):
            self.recmode = RECMODE_ACTIVE
            return
        if st["generation"] != self.generation:
            if st["generation"] is not None:
                log.info("following leader %d: generation %d, members %s", self.leader,
                         st["generation"], st["members"])
                self.last_recovery_started = self.last_recovery_started or time.time()
                self.last_recovery_finished = time.time()
        self.generation = st["generation"]
        self.vnnmap = list(st["vnnmap"])
        self.members = list(st["members"])
        self.recmode = st["recmode"] if self.generation is not None else RECMODE_ACTIVE

    def is_joined(self) -> bool:
        return (self.leader is not None and self.generation is not None
                and self.recmode == RECMODE_NORMAL
                and (self.am_leader or self.pnn in self.members
                     or not nodeflags.is_active(self.my_flags)))

    def _update_joined(self):
        if self.is_joined() and not self.joined.is_set():
            self.joined.set()
            log.warning("node %d joined the cluster: leader %d, generation %d",
                        self.pnn, self.leader, self.generation)
            for cb in self.on_joined:
                try:
                    cb()
                except Exception:
                    log.exception("on_joined callback failed")

    def _state_payload(self) -> dict:
        return {
            "pnn": self.pnn, "instance": self.instance, "flags": self.my_flags,
            "leader": self.leader, "is_leader": self.am_leader,
            "generation": self.generation, "recmode": self.recmode,
            "vnnmap": list(self.vnnmap), "members": list(self.members),
            "connected": sorted(p.pnn for p in self.peers.values() if p.link_up),
            "lmaster_capable": self.lmaster_capable, "leader_capable": self.leader_capable,
            **self.extra_state,
        }

    def _broadcast_state(self, now, force=False):
        payload = self._state_payload()
        # A change of the "connected" list alone does not trigger a send (it is news to
        # nobody, and during formation it would multiply the traffic by N); it goes out
        # with the next keepalive.
        changed = self._last_sent is None or any(
            payload[k] != self._last_sent.get(k) for k in payload if k != "connected")
        if force or changed or now - self._last_sent_at >= self.keepalive_interval:
            self.transport.broadcast(frames.MsgType.STATE, payload)
            self._last_sent = payload
            self._last_sent_at = now

    # -- node administration (this node's own flags) ------------------------------------
    ADMIN = {
        "disable": (nodeflags.PERMANENTLY_DISABLED, 0), "enable": (0, nodeflags.PERMANENTLY_DISABLED),
        "stop": (nodeflags.STOPPED, 0), "continue": (0, nodeflags.STOPPED),
        "ban": (nodeflags.BANNED, 0), "unban": (0, nodeflags.BANNED),
    }

    def admin(self, action, ban_seconds=None) -> dict:
        """Set or clear one of this node's administrative flags; returns old and new flags.

        A ban lifts itself after ``ban_seconds``. BANNED and STOPPED nodes are inactive:
        the leader drops them from the generation, and a leader that becomes one steps
        down."""
        set_mask, clear_mask = self.ADMIN[action]
        old = self.my_flags
        self.my_flags = (self.my_flags | set_mask) & ~clear_mask
        if action == "ban":
            self._ban_until = self.clock() + float(ban_seconds)
        elif action == "unban":
            self._ban_until = None
        if self.my_flags != old:
            log.warning("node %d: %s%s: flags %s -> %s", self.pnn, action,
                        f" for {ban_seconds}s" if action == "ban" else "", nodeflags.pretty(old),
                        nodeflags.pretty(self.my_flags))
        self.kick()
        return {"pnn": self.pnn, "old_flags": old, "flags": self.my_flags,
                "state": nodeflags.pretty(self.my_flags), "changed": old != self.my_flags}

    def _expire_ban(self, now):
        until = getattr(self, "_ban_until", None)
        if until is not None and now >= until:
            self._ban_until = None
            if self.my_flags & nodeflags.BANNED:
                self.my_flags &= ~nodeflags.BANNED
                log.warning("node %d: ban period over, no longer BANNED", self.pnn)

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
        }

    def uptime(self) -> dict:
        return {"pnn": self.pnn, "current_time": time.time(), "start_time": self.start_time,
                "last_recovery_started": self.last_recovery_started,
                "last_recovery_finished": self.last_recovery_finished}

    def pid(self):
        return os.getpid()
