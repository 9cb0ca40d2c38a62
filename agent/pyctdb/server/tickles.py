"""Tickles: the TCP connections of public addresses, shared so that whoever takes an
address over can reset its clients' connections at once (CTDB's tickle ACKs, see
:mod:`pyctdb.server.netops`).

Every node scans the connections of the addresses it hosts and, when they change, tells
the other nodes (control ``tickles``); a node that takes an address sends a tickle ACK
for each connection it had elsewhere. Connections can also be registered, as CTDB's
clients register them (smbd's TCP_CLIENT, ``ctdb addtickle``; ``ctdb deltickle`` and
the client's end remove them): they are sent with the scanned ones, and ``ctdb
gettickles`` lists both.
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
        #: {address: {(lip, lport, rip, rport)}} registered on this node
        self.registered = {}
        cluster.control_handlers["tickles"] = self._ctl_tickles

    def register(self, conn):
        """Add a connection ``(lip, lport, rip, rport)`` (lip: the public address);
        sent to the other nodes with the next scan."""
        self.registered.setdefault(conn[0], set()).add(tuple(conn))

    def unregister(self, conn):
        """Remove a connection from every list of its address (no error if unknown)."""
        conn = tuple(conn)
        addr = conn[0]
        self.registered.get(addr, set()).discard(conn)
        if not self.registered.get(addr):
            self.registered.pop(addr, None)
        for table in (self.known, self.mine):
            if addr in table:
                table[addr] = [x for x in table[addr] if tuple(x) != conn]

    def connections(self, addr, port=0):
        """Every connection known for public address ``addr`` (to local port ``port``;
        0: all), sorted: scanned here, reported by other nodes, registered."""
        out = {tuple(x) for x in self.mine.get(addr, [])}
        out |= {tuple(x) for x in self.known.get(addr, [])}
        out |= self.registered.get(addr, set())
        return sorted(x for x in out if not port or int(x[1]) == port)

    def forget(self, addr):
        """``addr`` is no longer hosted here."""
        self.known.pop(addr, None)
        self.mine.pop(addr, None)
        self.registered.pop(addr, None)

    def for_take(self, addr, conns):
        """The connections to tickle when ``addr`` is taken: ``conns`` (from its release)
        and those other nodes reported for it."""
        out = {tuple(x) for x in conns}
        out |= {tuple(x) for x in self.known.get(addr, [])}
        out |= self.registered.get(addr, set())
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
        for a in addrs:  # (and those registered, not seen: CTDB keeps them too)
            seen = {tuple(x) for x in per[a]}
            per[a] += [list(x) for x in sorted(self.registered.get(a, ())) if x not in seen]
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
