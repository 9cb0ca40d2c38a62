"""Public address failover: the leader decides who hosts which address, nodes obey.

Leader side (a *takeover run*, in a background task, :class:`TakeoverRunner`):

1. ask every connected node for its configured public addresses and what it hosts
   (control ``get_public_ips``);
2. decide the run as a :class:`pyctdb.rules.takeover.TakeoverPlan` (pure: the allocation
   of :func:`pyctdb.rules.ipalloc.allocate`, CTDB's LCP2, deterministic or
   non-deterministic algorithm and its NoIPFailback/NoIPTakeover, around it);
3. **release before take**: tell every node that holds an address it should no longer hold
   to release it, and wait for all of them; an address whose release failed on a node that
   is still connected is not given to anyone this round, so it is never on two nodes;
4. tell the new holders to take their addresses;
5. log one line with what moved and why.

A run happens whenever the generation, a node's flags or a node's address list changes,
and every ``TAKEOVER_REFRESH`` seconds anyway.

Address fencing: a run belongs to the leadership term it started in
(:attr:`Cluster.term`). Before every control that changes something (each
``release_ip``, ``take_ip``, each event) the runner checks that this node still leads in
that term, and abandons the run otherwise; stepping down cancels the run under way. The
takes carry the term, and a node that has seen a newer term refuses them. A node whose
link is up but that did not answer keeps its addresses (the plan keeps them,
:mod:`pyctdb.rules.takeover`): only a node dropped as DISCONNECTED loses them.

Node side, in components of their own: the addresses on this node's interfaces
(:mod:`pyctdb.server.localips`: ``take_ip``, ``release_ip``), the record of them in a
state file (:mod:`pyctdb.server.hosted`), the check each cycle that the interfaces hold
exactly those (:mod:`pyctdb.server.ipcheck`), the address list's runtime changes
(:mod:`pyctdb.server.publicips`: addip, delip, reloadips), the connections to tickle after
a takeover (:mod:`pyctdb.server.tickles`) and the failover events
(:mod:`pyctdb.server.ipevents`). :class:`Failover` builds and drives them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time

from pyctdb.common.logsetup import NOTICE
from pyctdb.errors import ControlError
from pyctdb.rules import election, nodeflags, takeover
from pyctdb.server import tasks
from pyctdb.server.hosted import HostedRecord
from pyctdb.server.ipcheck import InterfaceCheck
from pyctdb.server.ipevents import FailoverEvents
from pyctdb.server.localips import LocalAddresses, NetThread
from pyctdb.server.publicips import PublicAddressAdmin, PublicAddressList
from pyctdb.server.tickles import Tickles

log = logging.getLogger(__name__)

CONSISTENCY_INTERVAL = 2.0  # seconds between node-side interface checks
TAKEOVER_REFRESH = 10.0  # seconds between leader takeover runs when nothing changed
TICKLE_INTERVAL = 1.0  # seconds between scans of this node's connections
CONTROL_TIMEOUT = 2.0


class TakeoverRunner:
    """The leader's takeover runs: starts one when the cluster changed or the last one
    is old (``on_cycle``), gathers the nodes' reports, has the plan decided
    (:func:`pyctdb.rules.takeover.plan_takeover`) and executes it, within one leadership
    term (see the module doc); serves ``move_ip`` and ``ipreallocate``.
    ``last_allocation`` and ``last_run`` describe the last run."""

    def __init__(self, cluster, tunables, addresses, events, spawn, disabled):
        self.cluster = cluster
        self.tunables = tunables
        self.addresses = addresses  # PublicAddressList: this node's ips_version
        self.events = events  # FailoverEvents
        self._spawn = spawn
        self.disabled = disabled
        self._lock = asyncio.Lock()
        self._task = None
        self._key = None
        self._last = -1e9
        self.last_allocation = {}  # address -> pnn of the last run
        self.last_run = None  # summary of the last run
        self._allocation_term = None  # the term of last_allocation
        self._runs = set()  # the runs under way or waiting (cancelled on step-down)
        cluster.on_step_down(self._stepped_down)
        self._disabled_until = None  # (CLOCK_MONOTONIC) no runs before: ctdb reloadips
        cluster.control_handlers.update({
            "move_ip": self._ctl_move_ip,
            "ipreallocate": self._ctl_ipreallocate,
            "disable_takeover_runs": self._ctl_disable_takeover_runs,
        })

    # -- when -----------------------------------------------------------------------------
    def on_cycle(self, now):
        """The leader starts a takeover run when the cluster changed (and every
        TAKEOVER_REFRESH seconds anyway); returns what the cycle's report says of it
        (None for a periodic run: routine)."""
        c = self.cluster
        if not (c.am_leader and c.recmode == 0 and c.generation is not None):
            self._key = None
            return None
        if self.runs_disabled(now):
            return None
        key = self._state_key()
        if key != self._key or now - self._last >= TAKEOVER_REFRESH:
            if self._task is None or self._task.done():
                reason = "periodic check" if key == self._key else "cluster changed"
                self._key = key
                self._last = now
                self._task = self._spawn_run(reason)
                return None if reason == "periodic check" else f"takeover run ({reason})"
            self._key = None  # run again when the current run finishes
        return None

    def start(self, reason, now):
        """A run now, in the background (a recovery's)."""
        self._last = now
        self._task = self._spawn_run(reason)

    def _state_key(self):
        c = self.cluster
        nodes = [(c.pnn, c.my_flags, self.addresses.version)]
        for p in c.peers.values():
            if p.link_up and p.state is not None:
                nodes.append((p.pnn, c.peer_flags(p), p.state.get("ips_version")))
        t = self.tunables
        return (c.generation, tuple(sorted(nodes)), t.get("IPAllocAlgorithm"),
                t.get("NoIPFailback"), t.get("NoIPTakeover"),
                tuple(sorted(c.held_down())))

    def _stepped_down(self, term):
        """This node no longer leads (term ``term`` ended): cancel every run of it."""
        for task in list(self._runs):
            task.cancel()
        self._key = None

    # -- the run --------------------------------------------------------------------------
    async def run(self, reason="requested", moves=None):
        """One takeover run, of the term this node leads in now. ``moves``: {address:
        pnn} to force (moveip). Runs one at a time: a run asked for (moveip,
        ipreallocate) waits for the one under way. A run whose term ends is abandoned
        before its next change (logged once at NOTICE) and raises StaleTerm (ESTALE)."""
        return await self._in_term(self._run, reason, moves)

    async def move(self, address, pnn):
        """moveip: ``address`` released wherever it is and taken by node ``pnn``, in the
        term this node leads in now, after the run under way (:func:`takeover.plan_move`;
        CTDB's ``ctdb moveip``: no other address moves and no startipreallocate event
        comes first; ipreallocated follows in the background, as CTDB 4.20 sends it). Raises ControlError when
        the move is refused or a release or the take fails, StaleTerm as :meth:`run`."""
        return await self._in_term(self._move, address, pnn)

    async def _in_term(self, fn, *args):
        """``fn(*args, term)`` under the run lock, in the current term (see :meth:`run`)."""
        term = self.cluster.term
        try:
            self._check_term(term)
            async with self._lock:
                return await fn(*args, term)
        except election.StaleTerm:
            self._abandoned(term)
            raise
        except asyncio.CancelledError:
            if not (self.cluster.am_leader and self.cluster.term == term):
                self._abandoned(term)  # (else the agent is stopping)
            raise

    def _abandoned(self, term):
        log.log(NOTICE, "takeover run of term %s abandoned: no longer leader", term)
        self._key = None

    async def _background(self, reason):
        try:
            await self.run(reason)
        except election.StaleTerm:
            pass  # (logged)

    def _spawn_run(self, reason):
        """A run in a task of its own, cancelled when this node steps down."""
        task = self._spawn(self._background(reason), "takeover")
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)
        return task

    def _check_term(self, term):
        """Raise StaleTerm unless this node still leads in ``term``."""
        c = self.cluster
        if term is None or not c.am_leader or c.term != term:
            raise election.StaleTerm(f"takeover run of term {term}: no longer leader")

    async def _term_control(self, pnn, op, args, term):
        """One control of the run that changes something, sent only while ``term``
        lasts."""
        self._check_term(term)
        return await self.cluster.control(pnn, op, args, timeout=CONTROL_TIMEOUT)

    async def _event(self, term, pnns, event):
        self._check_term(term)
        await self.events.on_nodes(pnns, event)

    def _node_flags(self, unreachable):
        c = self.cluster
        peer_flags = {n.pnn: c.peer_flags(c.peers[n.pnn]) for n in c.nodes
                      if not n.deleted and n.pnn != c.pnn}
        return takeover.allocation_flags(c.nodes, c.pnn, c.my_flags, peer_flags, unreachable)

    async def _reports(self):
        """{pnn: get_public_ips answer} of the nodes that answered (this node first),
        the set of those that did not, and of those among them whose link is still up
        (silent: they may still serve their addresses), with the nodes that are down but
        not fenced yet (:meth:`Membership.held`)."""
        c = self.cluster
        targets = [c.pnn] + [p.pnn for p in c.peers.values() if p.link_up]
        infos = await asyncio.gather(*(c.control(p, "get_public_ips", timeout=CONTROL_TIMEOUT)
                                       for p in targets), return_exceptions=True)
        known, unreachable = {}, set()
        for pnn, info in zip(targets, infos):
            if isinstance(info, Exception):
                unreachable.add(pnn)
                log.warning("takeover: node %d did not report its addresses: %s", pnn, info)
            else:
                known[pnn] = info
        silent = {p for p in unreachable
                  if p == c.pnn or (p in c.peers and c.peers[p].link_up)}
        # (down, but not fenced yet: their guard drops their addresses at their deadline)
        silent |= set(c.held_down())
        return known, unreachable, silent

    async def _release(self, plan, term):
        """Every planned release, waited for: the addresses blocked (release failed on a
        node still connected) and the connections the released addresses had."""
        c = self.cluster
        self._check_term(term)
        rel = await asyncio.gather(*(self._term_control(r.pnn, "release_ip",
                                                        {"address": r.address, "term": term},
                                                        term)
                                     for r in plan.releases), return_exceptions=True)
        self._check_term(term)
        connected = {c.pnn} | {p.pnn for p in c.peers.values() if p.link_up}
        failures, conns = [], {}
        for r, res in zip(plan.releases, rel):
            if isinstance(res, Exception):
                failures.append((r, res))
            else:
                conns.setdefault(r.address, []).extend(res.get("connections", []))
        blocked = set()
        for r, err in plan.blocking(failures, connected):
            blocked.add(r.address)
            log.error("takeover: node %d failed to release %s (%s): not moving it "
                      "this round", r.pnn, r.address, err)
        return blocked, conns

    async def _take(self, takes, conns, term):
        """Every take, waited for; returns [(Take, error)] of those that failed."""
        self._check_term(term)
        tk = await asyncio.gather(*(self._term_control(t.pnn, "take_ip", {
            "address": t.address, "connections": conns.get(t.address, []), "term": term},
            term)
            for t in takes), return_exceptions=True)
        self._check_term(term)
        failed = [(t, r) for t, r in zip(takes, tk) if isinstance(r, Exception)]
        for t, r in failed:
            log.error("takeover: node %d failed to take %s: %s", t.pnn, t.address, r)
        return failed

    async def _move(self, addr, pnn, term):
        c = self.cluster
        reason = f"moveip {addr} to node {pnn}"
        if c.held_down():  # (a node that may still serve addresses and cannot be asked:
            return await self._run(reason, {addr: pnn}, term)  # the full run keeps them)
        t0 = time.monotonic()
        known, unreachable, silent = await self._reports()
        self._check_term(term)
        try:
            plan = takeover.plan_move(
                known, self._node_flags(unreachable), addr, pnn, silent=silent,
                presumed=self.last_allocation if self._allocation_term == term else None)
        except takeover.MoveRefused as exc:
            raise ControlError(c.pnn, str(exc), "EINVAL") from None
        blocked, conns = await self._release(plan, term)
        failed = await self._take(plan.takes_after(blocked), conns, term)
        if blocked or failed:
            self._key = None  # (a full run next cycle puts every address somewhere)
            why = f"node {failed[0][0].pnn} failed to take it: {failed[0][1]}" if failed \
                else "a node that may still hold it failed to release it"
            raise ControlError(c.pnn, f"{addr} not moved to node {pnn}: {why}", "EIO")
        if plan.moving:
            task = self._spawn(self._ipreallocated(term, list(known)), "ipreallocated")
            self._runs.add(task)  # (cancelled on step-down, as runs are)
            task.add_done_callback(self._runs.discard)
        if self._allocation_term == term:
            self.last_allocation[addr] = pnn
        return self._ran(plan, plan.takes, reason, unreachable, term, t0, failed)

    async def _ipreallocated(self, term, pnns):
        """A move's ipreallocated event, after its answer (its term may end meanwhile)."""
        try:
            await self._event(term, pnns, "ipreallocated")
        except election.StaleTerm:
            pass
        except Exception as exc:  # (the address moved; the event is the scripts' affair)
            log.error("ipreallocated after a move: %s", exc)

    async def _run(self, reason, moves, term):
        t0 = time.monotonic()
        known, unreachable, silent = await self._reports()
        self._check_term(term)
        t = self.tunables
        plan = takeover.plan_takeover(
            known, self._node_flags(unreachable),
            algorithm=takeover.algorithm_name(t.get("IPAllocAlgorithm")),
            no_ip_failback=bool(t.get("NoIPFailback")),
            no_ip_takeover=bool(t.get("NoIPTakeover")), moves=moves, silent=silent,
            presumed=self.last_allocation if self._allocation_term == term else None)
        for addr, why in plan.kept.items():
            log.warning("takeover: not moving %s: %s (it moves once the node is "
                        "DISCONNECTED and fenced)", addr, why)
        if plan.moving:  # CTDB: startipreallocate on every node before addresses move
            await self._event(term, known, "startipreallocate")
        blocked, conns = await self._release(plan, term)  # 1. release everywhere, and wait
        takes = plan.takes_after(blocked)  # 2. take
        failed = await self._take(takes, conns, term)
        if failed or blocked:
            self._key = None  # try again next cycle (kept addresses: not before the
            # silent node is dropped, which is a change, or the next periodic run)
        if plan.moving:
            await self._event(term, known, "ipreallocated")
        self.last_allocation = dict(plan.allocation)
        self._allocation_term = term
        return self._ran(plan, takes, reason, unreachable, term, t0, failed)

    def _ran(self, plan, takes, reason, unreachable, term, t0, failed):
        """The run's one line (WARNING when something moved or failed) and last_run."""
        changes = plan.changes(takes)
        ms = (time.monotonic() - t0) * 1000
        summary = (f"takeover ({reason}, {plan.algorithm}): {len(plan.allocation)} addresses, "
                   f"{len(changes)} moved in {ms:.1f} ms"
                   + (": " + ", ".join(changes) if changes else ""))
        self.last_run = {"time": time.time(), "reason": reason, "algorithm": plan.algorithm,
                         "duration_ms": ms, "moves": changes,
                         "unreachable": sorted(unreachable), "term": term,
                         "kept": dict(plan.kept)}
        if changes or failed:
            log.warning("%s", summary)
        else:
            log.debug("%s", summary)
        return self.last_run

    # -- controls ---------------------------------------------------------------------------
    async def _ctl_move_ip(self, src, args):
        """On the leader: move one address to a node now."""
        c = self.cluster
        if not c.am_leader:
            raise ControlError(c.pnn, "this node is not the leader", "EAGAIN")
        if self.disabled:
            raise ControlError(c.pnn, "failover is disabled ([failover] disabled = true)",
                               "EINVAL")
        try:
            addr, pnn = str(ipaddress.ip_address(args["address"])), int(args["pnn"])
        except (KeyError, TypeError, ValueError):
            raise ControlError(c.pnn, f"usage: move_ip address=IP pnn=PNN (got {args!r})",
                               "EINVAL") from None
        return await self.move(addr, pnn)

    def runs_disabled(self, now=None) -> bool:
        """Whether takeover runs are disabled now (CTDB's disable_takeover_runs)."""
        if self._disabled_until is None:
            return False
        if (time.monotonic() if now is None else now) < self._disabled_until:
            return True
        self._disabled_until = None
        self._key = None  # (the first cycle after runs a takeover run if anything changed)
        return False

    async def _ctl_disable_takeover_runs(self, src, args):
        """On the leader: no takeover run for ``seconds`` (0: runs allowed again)."""
        c = self.cluster
        if not c.am_leader:
            raise ControlError(c.pnn, "this node is not the leader", "EAGAIN")
        seconds = float(args["seconds"])
        if seconds > 0:
            self._disabled_until = time.monotonic() + seconds
            log.log(NOTICE, "takeover runs disabled for %.0f s (asked by node %d)", seconds,
                    src)
        elif self._disabled_until is not None:
            self._disabled_until = None
            self._key = None
            log.log(NOTICE, "takeover runs enabled again (asked by node %d)", src)
        return {"pnn": c.pnn, "until": self._disabled_until}

    async def _ctl_ipreallocate(self, src, args):
        """On the leader: a takeover run now (waiting for one under way first)."""
        c = self.cluster
        if not c.am_leader:
            raise ControlError(c.pnn, "this node is not the leader", "EAGAIN")
        if self.disabled:
            return {"skipped": "failover is disabled"}
        if c.recmode != 0 or c.generation is None:
            raise ControlError(c.pnn, "the cluster is in recovery", "EAGAIN")
        if self.runs_disabled():
            raise ControlError(c.pnn, "takeover runs are disabled for now", "EAGAIN")
        return await self.run(str(args.get("reason") or "ipreallocate"))


class Failover:
    """Public address failover on this node: builds its components (see the module doc),
    is driven by the cluster's cycle and recovery steps (wired in the daemon), lets go
    of all addresses after ``RecoveryDropAllIPs`` seconds without a leader, and moves
    them away before a graceful shutdown (``evacuate``)."""

    def __init__(self, cluster, config, tunables, events=None, hosted_file=None):
        self.cluster = cluster
        self.config = config
        self.tunables = tunables
        self.disabled = bool(config.failover_disabled)
        self._tasks = set()
        self._last_check = -1e9
        self._last_tickle_scan = -1e9
        self._leaderless_since = None
        self.net = NetThread()
        self.addresses = PublicAddressList(cluster, config)
        #: the state file of hosted addresses (None: not recorded). At start, what a dead
        #: predecessor recorded; the first interface check removes those this node does
        #: not host.
        self.record = HostedRecord(hosted_file, self.net.run)
        self.events = FailoverEvents(cluster, events)
        self.tickles = Tickles(cluster, lambda: list(self.local.assigned), self.net.run,
                               self._spawn)
        self.local = LocalAddresses(cluster, self.addresses, self.net, self.record,
                                    self.tickles, self.events)
        self.check = InterfaceCheck(self.addresses, self.local, self.record, self.events)
        self.admin = PublicAddressAdmin(cluster, config, self.addresses, self.local,
                                        self.check, self._spawn)
        self.takeovers = TakeoverRunner(cluster, tunables, self.addresses, self.events,
                                        self._spawn, self.disabled)

    def _spawn(self, coro, name=None):
        return tasks.spawn(coro, name, owner=self._tasks)

    async def stop(self):
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.net.shutdown()

    # -- what other parts read --------------------------------------------------------------
    @property
    def assigned(self):
        """{address: interface} hosted here."""
        return self.local.assigned

    @property
    def configured(self):
        """{address: PublicAddress} this node lists."""
        return self.addresses.configured

    @property
    def last_allocation(self):
        return self.takeovers.last_allocation

    @property
    def last_run(self):
        return self.takeovers.last_run

    async def takeover_run(self, reason="requested", moves=None):
        """One takeover run (on the leader): :meth:`TakeoverRunner.run`."""
        return await self.takeovers.run(reason, moves)

    def local_ips(self):
        return [{"address": a, "prefix": pa.prefix, "interfaces": list(pa.interfaces),
                 "hosted": a in self.assigned, "iface": self.assigned.get(a)}
                for a, pa in sorted(self.configured.items(),
                                    key=lambda kv: takeover.sort_key(kv[0]))]

    # -- the cycle --------------------------------------------------------------------------
    def on_cycle(self, now):
        """A cycle task: drop addresses without a leader, the interface check and the
        connection scan when due, the leader's takeover runs; returns what the cycle's
        report says (a takeover run started), or None."""
        if self.disabled:
            return None
        c = self.cluster
        self._drop_when_leaderless(now)
        if (self.configured or self.record.entries) \
                and now - self._last_check >= CONSISTENCY_INTERVAL \
                and (c.is_joined() or not self.check.startup_cleaned):
            self._last_check = now
            self._spawn(self.check.run(), "ip-check")
        if self.tickles.mine or self.assigned:
            if now - self._last_tickle_scan >= TICKLE_INTERVAL:
                self._last_tickle_scan = now
                self._spawn(self.tickles.scan(), "tickle-scan")
        return self.takeovers.on_cycle(now)

    def _drop_when_leaderless(self, now):
        """A node that has had no leader for RecoveryDropAllIPs seconds lets go of its
        addresses (as CTDB does): the rest of the cluster has probably taken them over."""
        c = self.cluster
        if c.leader is None or not c.is_joined():
            if self._leaderless_since is None:
                self._leaderless_since = now
            limit = float(self.tunables.get("RecoveryDropAllIPs"))
            if self.assigned and limit > 0 and now - self._leaderless_since > limit:
                log.warning("no leader for %.0fs (RecoveryDropAllIPs): releasing all %d "
                            "public addresses", now - self._leaderless_since, len(self.assigned))
                for addr in list(self.assigned):
                    self._spawn(self.local.release(addr), "drop-ip")
                self._leaderless_since = now
        else:
            self._leaderless_since = None

    async def start_recovery(self, cluster, members):
        """The leader's first recovery step: ``startrecovery`` on every member, then a
        takeover run in the background. Public addresses do not depend on the databases,
        so the addresses of a node that left move while the databases recover (the
        recovery steps that follow this one) instead of after them."""
        await self.events.on_nodes(members, "startrecovery")
        if not self.disabled and cluster.am_leader:
            self.takeovers.start(f"recovery of {sorted(members)}", cluster.clock())

    async def recovered(self, cluster, members):
        """A recovery step once the new generation is in place: CTDB's ``recovered``
        event on every member."""
        await self.events.on_nodes(members, "recovered")

    async def evacuate(self, timeout=10.0):
        """Graceful shutdown: mark this node STOPPED so the leader moves its addresses to
        other nodes, and wait (at most ``timeout`` s) until it hosts none. Clients are
        moved before the agent goes, instead of after it is found gone."""
        c = self.cluster
        if not self.assigned:
            return True
        others = [p for p in c.peers.values()
                  if p.link_up and p.state is not None and nodeflags.is_active(c.peer_flags(p))]
        if not others:
            log.warning("shutdown: no other active node to take %d addresses",
                        len(self.assigned))
            return False
        n = len(self.assigned)
        c.my_flags |= nodeflags.STOPPED
        c.kick()
        t0 = time.monotonic()
        while self.assigned and time.monotonic() - t0 < timeout:
            await asyncio.sleep(0.02)
        if self.assigned:
            log.error("shutdown: %d addresses still here after %.0fs", len(self.assigned),
                      timeout)
            return False
        log.warning("shutdown: moved %d addresses to other nodes in %.0f ms", n,
                    (time.monotonic() - t0) * 1000)
        return True
