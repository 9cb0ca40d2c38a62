"""Tickles: the TCP connections of public addresses, shared so that whoever takes an
address over can reset its clients' connections at once (CTDB's tickle ACKs, see
:mod:`pyctdb.server.netops`).

Every node scans the connections of the addresses it hosts and, when they change, tells
the other nodes (control ``tickles``); a node that takes an address sends a tickle ACK
for each connection it had elsewhere.
"""

from __future__ import annotations

import logging

from pyctdb.server import netops

log = logging.getLogger(__name__)

SEND_TIMEOUT = 2.0  # seconds for another node to accept this node's connections


class Tickles:
    """The connection lists: ``known`` {address: [(lip, lport, rip, rport)]} as other
    nodes last reported them, ``mine`` {address: [[lip, lport, rip, rport]]} of the
    addresses hosted here (sent to the others when it changes); and the tickle ACKs
    after a take. ``hosted()`` lists the addresses hosted here; ``run(fn, *args)`` runs
    a blocking call in the netops thread."""

    def __init__(self, cluster, hosted, run, spawn):
        self.cluster = cluster
        self._hosted = hosted
        self._run = run
        self._spawn = spawn
        self.known = {}
        self.mine = {}
        cluster.control_handlers["tickles"] = self._ctl_tickles

    def forget(self, addr):
        """``addr`` is no longer hosted here."""
        self.known.pop(addr, None)
        self.mine.pop(addr, None)

    def for_take(self, addr, conns):
        """The connections to tickle when ``addr`` is taken: ``conns`` (from its release)
        and those other nodes reported for it."""
        out = {tuple(x) for x in conns}
        out |= {tuple(x) for x in self.known.get(addr, [])}
        return out

    def send_acks(self, conns):
        """Tickle ``conns`` (in the background)."""
        self._spawn(self._tickle(conns), "tickle")

    async def _tickle(self, conns):
        for lip, lport, rip, rport in conns:
            try:
                await self._run(netops.send_tickle, lip, int(lport), rip, int(rport))
            except OSError as exc:
                log.warning("tickle to %s:%s failed: %s", rip, rport, exc)

    async def scan(self):
        """Read the connections of the addresses hosted here; if they changed, send them
        to every connected node."""
        addrs = self._hosted()
        conns = await self._run(netops.tcp_connections, addrs)
        per = {a: [] for a in addrs}
        for x in conns:
            per.setdefault(x[0], []).append(list(x))
        if per == self.mine:
            return
        self.mine = per
        for p in self.cluster.peers.values():
            if p.link_up:
                self._spawn(self._send(p.pnn, per))

    async def _send(self, pnn, per):
        try:
            await self.cluster.control(pnn, "tickles", {"tickles": per}, timeout=SEND_TIMEOUT)
        except Exception:
            pass

    async def _ctl_tickles(self, src, args):
        for addr, conns in args.get("tickles", {}).items():
            self.known[addr] = [tuple(x) for x in conns]
        return {}
