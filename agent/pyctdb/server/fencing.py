"""Address fencing on this node: it serves its public addresses only while its lease
holds (:mod:`pyctdb.rules.lease`), and its guard (:mod:`pyctdb.server.guard`) drops
them when the agent cannot.

:class:`Fencing` computes the lease from the peers' acknowledgements, drops every hosted
address the moment the lease ends (a timer, not the cycle: a recovery may hold the
cycle), refuses ``take_ip`` without a lease, and gives the guard its deadline with each
keepalive: the lease's end, and at most KeepaliveInterval x KeepaliveLimit after the last
frame this node sent (the peers drop this node as silent then). When the guard has dropped the
addresses (the agent was paused), the agent's own record of them is brought in line.
"""

from __future__ import annotations

import asyncio
import logging

from pyctdb.common.logsetup import NOTICE
from pyctdb.rules import lease
from pyctdb.server import tasks
from pyctdb.server.guard import STOPPING
from pyctdb.server.membership import FENCE_MARGIN

log = logging.getLogger(__name__)

#: Seconds the guard waits past the node's bound before it fences a silent agent: a
#: little tolerance for an agent starved of CPU, well inside the leader's FENCE_MARGIN
#: (the guard's own work takes some 15 ms).
GUARD_GRACE = 0.1
assert GUARD_GRACE < FENCE_MARGIN / 2


class Fencing:
    """This node's lease, and what it does when it ends (see the module doc)."""

    def __init__(self, cluster, local, guard=None):
        """``local``: the node's :class:`~pyctdb.server.localips.LocalAddresses`;
        ``guard``: its :class:`~pyctdb.server.guard.Guard` (None: no guard)."""
        self.cluster = cluster
        self.local = local
        self.guard = guard
        self._timer = None
        self._tasks = set()
        self._had_lease = False
        self._last_keepalive = cluster.clock()
        m = cluster.membership
        m.on_ack.append(self.update)
        m.link_lost.append(lambda pnn, reason: self.update())
        m.on_keepalive.append(self._keepalive)
        local.may_host = self.may_host
        cluster.status_parts["fencing"] = self.describe
        if guard is not None:
            m.guarded = lambda: guard.running
            cluster.transport.link_sockets = guard

    def expiry(self):
        """When the lease ends: None (unbounded), a time, or ``lease.NO_LEASE``."""
        c = self.cluster
        m = c.membership
        unbounded = c.am_leader and (c.leadership.lock is None
                                     or not c.leadership.led_with_quorum)
        acks, released = m.lease_inputs(float(c.leader_timeout) - FENCE_MARGIN)
        return lease.expiry(total=1 + len(m.peers), acks=acks, window=m.keepalive_window,
                            released_until=released, unbounded=unbounded)

    def may_host(self) -> bool:
        end = self.expiry()
        return end is None or end > self.cluster.clock()

    def update(self):
        """The lease may have changed: (re)arm the timer at its end, or act now."""
        end = self.expiry()
        now = self.cluster.clock()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if end is None or end > now:
            self._had_lease = True
            if end is not None:
                self._timer = asyncio.get_running_loop().call_later(end - now + 0.001,
                                                                    self.update)
            return
        if self._had_lease:
            self._had_lease = False
            log.log(NOTICE, "lease ended: this node hears no majority of the nodes%s and "
                    "does not lead holding the cluster lock",
                    "" if end == lease.NO_LEASE else
                    f" since {now - end + self.cluster.membership.keepalive_window:.2f}s")
        if self.local.assigned:
            tasks.spawn(self.local.drop_all("this node's lease ended"), "fence",
                        owner=self._tasks)

    def _keepalive(self, sent_at):
        self._last_keepalive = sent_at
        self.update()
        if self.guard is not None:
            # (the peers count any frame as heard: so does the deadline, to be no stricter;
            # an ended lease is this live agent's to act on, not the guard's)
            end = self.expiry()
            self.guard.deadline(GUARD_GRACE + (
                self.bound() if end is None or end > self.cluster.clock()
                else sent_at + self.cluster.membership.keepalive_window))

    def bound(self):
        """Until when this node may serve at most (CLOCK_MONOTONIC; None: no bound): the
        time its peers would drop it as silent (the last frame it sent + the keepalive
        window) or its lease's end if sooner. The gate of the client fast path stays
        within it (server/db/gate.py), and so does the guard's deadline."""
        window = self.cluster.membership.keepalive_window
        deadline = max(self._last_keepalive, self.cluster.transport.last_sent) + window
        end = self.expiry()
        if end is not None:
            deadline = min(deadline, end)
        return deadline

    def renew_interval(self) -> float:
        """How often the gate is renewed: a third of the keepalive window, at most 1 s."""
        return min(1.0, self.cluster.membership.keepalive_window / 3)

    def describe(self) -> dict:
        """The ``fencing`` part of the node's status."""
        end = self.expiry()
        now = self.cluster.clock()
        guard = self.guard
        return {"guard": bool(guard and guard.running),
                "guard_pid": guard.proc.pid if guard and guard.running else None,
                "lease": ("unbounded" if end is None else
                          "valid" if end > now else "none"),
                "lease_remaining": (None if end is None else
                                    round(max(0.0, end - now), 3)),
                "bound_remaining": round(self.bound() - now, 3)}

    def guard_dropped(self, addresses, why):
        """The guard removed this node's addresses (this agent was paused or wedged, or
        it stops): forget them here too."""
        log.log(logging.INFO if why == STOPPING else logging.ERROR,
                "the guard removed this node's public addresses (%s): %s", why,
                ", ".join(addresses) or "none were on the interfaces")
        if self.local.assigned:
            tasks.spawn(self.local.drop_all("the guard fenced this node"), "fence",
                        owner=self._tasks)

    async def stop(self):
        if self._timer is not None:
            self._timer.cancel()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
