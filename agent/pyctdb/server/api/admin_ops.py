"""Node operations that administer the cluster: a node's administrative state (ban,
disable, stop and their reverse), a recovery on demand, the nodes list reloaded."""

from __future__ import annotations

import asyncio
import logging
import time

from pyctdb.common.config import nodes_changes, read_nodes
from pyctdb.errors import ApiError, ConfigError, ControlError
from pyctdb.server.cluster import nodes_digest

log = logging.getLogger(__name__)


class AdminOperations:
    """Administers this node or another (``pnn``) through the ``admin`` control, whose
    node side it serves too; runs ``recover`` and ``reloadnodes``."""

    def __init__(self, cluster, controls):
        self.cluster = cluster
        self.controls = controls
        # `pyctdb -n PNN disable` etc.: the API of one node administers another
        cluster.control_handlers["admin"] = self._ctl_admin

    async def _ctl_admin(self, src, args):
        action = args.get("action")
        if action not in self.cluster.ADMIN:
            raise ValueError(f"unknown administrative action {action!r}")
        seconds = args.get("seconds")
        if action == "ban" and (isinstance(seconds, bool) or not isinstance(
                seconds, (int, float)) or seconds <= 0):
            raise ValueError("seconds must be a positive number")
        if src != self.cluster.pnn:
            log.warning("node %d asks this node to %s", src, action)
        return self.cluster.admin(action, ban_seconds=seconds)

    async def act(self, action, pnn=None):
        """``action`` (disable, enable, stop, continue, unban) on node ``pnn``."""
        return await self.controls.on_node(self.controls.target(pnn), "admin",
                                           {"action": action})

    async def ban(self, seconds, pnn=None):
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
            raise ApiError("EINVAL", "seconds must be a positive number")
        return await self.controls.on_node(self.controls.target(pnn), "admin",
                                           {"action": "ban", "seconds": seconds})

    async def recover(self):
        """CTDB's ``ctdb recover``: the leader runs a recovery now; returns once the
        cluster has a new generation."""
        c = self.cluster
        before = c.generation
        try:
            leader = await c.ask_recovery("pyctdb recover")
        except ControlError as exc:
            raise ApiError("EAGAIN", exc.message) from None
        deadline = time.monotonic() + 30.0
        while c.generation in (before, None) or c.recmode != 0:
            if time.monotonic() > deadline:
                raise ApiError("ETIMEDOUT", "no new generation within 30 s")
            await asyncio.sleep(0.05)
        return {"leader": leader, "generation": c.generation}

    async def reloadnodes(self, check=False):
        """CTDB's ``ctdb reloadnodes``: read this node's nodes list again and have every
        connected node apply it (each checks that its own file says the same). Nodes are
        added at the end and deleted by commenting them out; a node must be disconnected
        (its agent stopped) before it is deleted."""
        c = self.cluster
        try:
            new = read_nodes(c.config)
        except ConfigError as exc:
            raise ApiError("EINVAL", str(exc)) from None
        changes, errors = nodes_changes(c.nodes, new)
        for pnn, what in changes:
            if what != "DELETED":
                continue
            if pnn == c.pnn:
                errors.append(f"this node ({pnn}) is deleted in the new list: run "
                              "reloadnodes on a node that stays")
            elif c.peers.get(pnn) is not None and c.peers[pnn].link_up:
                errors.append(f"node {pnn} is still connected: stop its agent before "
                              "deleting it")
        if errors:
            raise ApiError("EINVAL", "; ".join(errors))
        nodes = [{"pnn": p, "change": w} for p, w in changes]
        digest = nodes_digest(new)
        if digest == c.digest or check:
            return {"changed": digest != c.digest, "nodes": nodes, "reloaded": [],
                    "failed": {}}
        targets = [c.pnn] + sorted(p.pnn for p in c.peers.values() if p.link_up)
        res = await asyncio.gather(*(c.control(p, "reload_nodes", {"digest": digest},
                                               timeout=10.0) for p in targets),
                                   return_exceptions=True)
        failed = {str(p): (r.message if hasattr(r, "message") else str(r))
                  for p, r in zip(targets, res) if isinstance(r, Exception)}
        return {"changed": True, "nodes": nodes,
                "reloaded": [p for p, r in zip(targets, res) if not isinstance(r, Exception)],
                "failed": failed}
