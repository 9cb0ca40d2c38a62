"""The event scripts' failover events (takeip, releaseip, updateip, startipreallocate,
ipreallocated, startrecovery, recovered), run here or on a set of nodes."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)

EVENT_TIMEOUT = 2.0  # seconds for another node to answer run_event
#: CTDB's event script that adds and removes public addresses itself
INTERFACE_SCRIPT = "10.interface"


class FailoverEvents:
    """Runs an event on this node (``run``; a failure is logged, never raised) or on
    several nodes at once (``on_nodes``), and serves the ``run_event`` control that the
    latter sends. ``events`` is the node's EventRunner (None: no event scripts)."""

    def __init__(self, cluster, events):
        self.cluster = cluster
        self.events = events
        cluster.control_handlers["run_event"] = self._ctl_run_event

    def script_adds_addresses(self) -> bool:
        """Whether CTDB's ``10.interface`` is enabled here: it adds the address at
        ``takeip`` and removes it at ``releaseip`` itself (``ip addr add`` fails for an
        address already there), so pyctdb leaves that to it."""
        if self.events is None:
            return False
        return any(name == INTERFACE_SCRIPT and on for name, _p, on in self.events.scripts())

    async def run(self, event, *args):
        if self.events is None:
            return None
        try:
            return await self.events.run(event, *args)
        except Exception as exc:
            log.error("event %s: %s", event, exc)
            return None

    async def on_nodes(self, pnns, event):
        """Run ``event`` on the nodes ``pnns`` (this one included) and wait for them; a
        node that fails or does not answer is logged, never fatal."""
        pnns = list(pnns)
        res = await asyncio.gather(*(self.cluster.control(p, "run_event", {"event": event},
                                                          timeout=EVENT_TIMEOUT)
                                     for p in pnns), return_exceptions=True)
        for p, r in zip(pnns, res):
            if isinstance(r, Exception):
                log.warning("event %s on node %d: %s", event, p, r)

    async def _ctl_run_event(self, src, args):
        res = await self.run(args["event"], *args.get("args", []))
        return {"status": res["status"] if res else "NONE"}
