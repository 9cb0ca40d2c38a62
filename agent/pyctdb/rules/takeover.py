"""The takeover plan: which node releases and which node takes each public address,
decided without touching a node or the network.

Modelled on CTDB's ``ctdb/server/ctdb_takeover_helper.c``, whose stages sit around the
pure allocation of :mod:`pyctdb.rules.ipalloc`:

1. *collect*: what every reachable node reported (control ``get_public_ips``: the
   addresses it lists, with their interfaces, and the ones it hosts) becomes the list of
   addresses with their current node and the nodes that list them; an address on two
   nodes stays on the lowest-numbered one, an address no node lists is released;
2. *allocate*: :func:`pyctdb.rules.ipalloc.allocate` with the node flags of
   :func:`allocation_flags` (an unreachable node counts as disconnected) and the
   tunables; forced moves (``moveip``) override its result;
3. *plan*: :func:`plan_takeover` returns a :class:`TakeoverPlan`: releases (all done and
   waited for before any take), takes, and the addresses left unassigned, with why;
4. *after the releases*: an address whose release failed on a node that is still
   connected is blocked, not taken by anyone this round, so it is never on two nodes
   (:meth:`TakeoverPlan.blocking`, :meth:`TakeoverPlan.takes_after`).

**No take from a silent node** (address fencing): a node whose link is up but that did
not answer (``silent``) may still serve its addresses. The addresses that no answering
node hosts and that may be on a silent node (the ``presumed`` holder of the leader's
last run in this term is silent, or the leader does not know the holder) are *kept*:
not allocated, not taken, until the silent node answers again or is dropped as
DISCONNECTED by the keepalive rule (then it is not ``silent`` but gone, and its
addresses move). Only a DISCONNECTED node's addresses move to others.

**moveip** is a plan of its own (:func:`plan_move`), as CTDB's ``ctdb moveip`` is no
takeover run: one address released wherever it is and taken by the node named, nothing
else allocated, no ``startipreallocate`` before it.

The node side's own decision, which interface a hosted address belongs on, is
:func:`interface_moves` (CTDB's ``updateip``).

The leader executes the plan (:mod:`pyctdb.server.failover`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from pyctdb.errors import PyctdbError
from pyctdb.rules import ipalloc, nodeflags

#: IPAllocAlgorithm tunable value -> algorithm name of :func:`ipalloc.allocate`
ALGORITHMS = {0: "det", 1: "nondet", 2: "lcp2"}

# why a release is planned
MOVED = "moves to another node"
UNASSIGNED = "it stays with nobody"
DUPLICATE = "also on a lower-numbered node"
UNLISTED = "listed by no node"

# why an address stays unassigned
NO_ELIGIBLE_NODE = "no node that lists it is active and enabled"
NO_TAKEOVER = "NoIPTakeover: it may not move to another node"
NOT_PLACED = "the allocation placed it nowhere"


def kept_reason(holder, silent) -> str:
    """Why an address is kept where it may be: its ``holder`` (None: unknown) or one
    of the ``silent`` nodes may still serve it."""
    if holder is not None:
        return f"holder {holder} did not answer"
    nodes = sorted(silent)
    return (f"holder unknown: node{'s' if len(nodes) > 1 else ''} "
            f"{', '.join(map(str, nodes))} did not answer")


def sort_key(addr):
    """Address order: IPv4 before IPv6, then by value."""
    ip = ipaddress.ip_address(addr)
    return (ip.version, int(ip))


def algorithm_name(value) -> str:
    """The algorithm for an IPAllocAlgorithm tunable value (unknown values: LCP2)."""
    return ALGORITHMS.get(int(value), "lcp2")


def allocation_flags(nodes, me, my_flags, peer_flags, unreachable) -> list:
    """One flags word per node of ``nodes`` (in their order) for the allocation: a
    deleted node is DELETED|DISCONNECTED; this node (``me``) has ``my_flags``; another
    has ``peer_flags[pnn]``, with UNKNOWN (state not yet reported) read as DISCONNECTED;
    a node in ``unreachable`` (it did not report its addresses) is DISCONNECTED too."""
    flags = []
    for n in nodes:
        if n.deleted:
            flags.append(nodeflags.DELETED | nodeflags.DISCONNECTED)
        elif n.pnn == me:
            flags.append(my_flags)
        else:
            fl = peer_flags[n.pnn]
            if fl & nodeflags.UNKNOWN:
                fl = (fl & ~nodeflags.UNKNOWN) | nodeflags.DISCONNECTED
            flags.append(fl)
        if n.pnn in unreachable:
            flags[-1] |= nodeflags.DISCONNECTED
    return flags


def interface_moves(assigned, configured, up):
    """Which hosted addresses must change interface, as CTDB's ``updateip``:
    ``assigned`` {address: interface it is on}, ``configured`` {address: PublicAddress},
    ``up`` the interfaces that are up. An address whose interface is no longer listed for
    it, or is down while another listed one is up, moves to the first listed interface
    that is up. Returns [(address, old interface, new interface)] in address order."""
    moves = []
    for addr in sorted(assigned, key=sort_key):
        pa = configured.get(addr)
        old = assigned[addr]
        if pa is None or (old in pa.interfaces and old in up):
            continue
        new = next((i for i in pa.interfaces if i in up), None)
        if new is not None and new != old:
            moves.append((addr, old, new))
    return moves


@dataclass(frozen=True)
class Release:
    """Node ``pnn`` lets go of ``address`` (``why``: MOVED, UNASSIGNED, DUPLICATE or
    UNLISTED)."""

    address: str
    pnn: int
    why: str


@dataclass(frozen=True)
class Take:
    """Node ``pnn`` adds ``address`` (from node ``previous``, -1: from nobody) on the first
    of ``interfaces`` (what that node lists for it) that is up there."""

    address: str
    pnn: int
    previous: int
    interfaces: tuple = ()


@dataclass(frozen=True)
class TakeoverPlan:
    """One takeover run's decision: ``releases`` (in this order, all before any take),
    ``takes`` (in this order), ``allocation`` {address: pnn} (-1: nobody) as the run
    leaves it, ``previous`` {address: pnn} before it, ``unassigned`` {address: why}
    for the addresses nobody hosts after it, and ``kept`` {address: why} for those
    left where a silent node may serve them (neither allocated nor taken; in
    ``allocation`` with their presumed holder when it is known, absent otherwise)."""

    algorithm: str
    allocation: dict
    previous: dict
    releases: tuple = ()
    takes: tuple = ()
    unassigned: dict = field(default_factory=dict)
    kept: dict = field(default_factory=dict)

    @property
    def moving(self) -> bool:
        """Whether any address moves (then the startipreallocate and ipreallocated
        events run on every node around the run)."""
        return bool(self.releases) or bool(self.takes)

    @staticmethod
    def blocking(failures, connected):
        """The failed releases [(Release, error)] that block their address: those on a
        node in ``connected`` (this node included), where the address may still be. A
        node that is gone has lost its addresses with it."""
        return [(r, err) for r, err in failures if r.pnn in connected]

    def takes_after(self, blocked):
        """The takes once the releases are done: none of a ``blocked`` address."""
        return [t for t in self.takes if t.address not in blocked]

    def changes(self, takes):
        """The run's moves as logged: ``ADDRESS OLD->NEW`` for the ``takes`` done, then
        ``ADDRESS PNN->-1`` for each release that leaves its address with nobody."""
        moved = [f"{t.address} {t.previous}->{t.pnn}" for t in takes]
        dropped = [f"{r.address} {r.pnn}->-1" for r in self.releases
                   if self.allocation.get(r.address, -1) == -1]
        return moved + dropped


def _held_by_silent(addr, silent, presumed):
    """The silent node that may serve ``addr``, which no answering node hosts: its
    presumed holder if silent, None if unknown (no ``presumed`` map, or no entry), or
    False when it cannot be on a silent node."""
    if not silent:
        return False
    if presumed is None or addr not in presumed:
        return None
    holder = presumed[addr]
    return holder if holder in silent else False


def _collect(reports, moves, silent=frozenset(), presumed=None):
    """Stage 1: the addresses to allocate (:class:`ipalloc.PublicIP`, address order),
    the releases of addresses on two nodes or listed by none, who hosts each address (in
    the order of ``reports``), each (address, pnn)'s listed interfaces, and the
    addresses kept for a ``silent`` node {address: presumed holder or None}."""
    listed, holders, interfaces = {}, {}, {}
    for pnn, info in reports.items():
        for a in info["configured"]:
            listed.setdefault(a["address"], set()).add(pnn)
            interfaces[(a["address"], pnn)] = tuple(a.get("interfaces", ()))
        for addr in info["hosted"]:
            holders.setdefault(addr, []).append(pnn)
    ips, extra, kept = [], [], {}
    for addr in sorted(set(listed) | set(holders), key=sort_key):
        hs = sorted(holders.get(addr, []))
        cur = hs[0] if hs else -1
        for other in hs[1:]:
            extra.append(Release(addr, other, DUPLICATE))  # on two nodes: keep one
        if addr not in listed:
            extra.append(Release(addr, cur, UNLISTED))
            continue
        if not hs:
            held = _held_by_silent(addr, silent, presumed)
            if held is not False:  # (None: unknown holder, maybe a silent node)
                kept[addr] = held
                continue
        if moves and addr in moves:
            cur = moves[addr]
        ips.append(ipalloc.PublicIP(addr, cur, frozenset(listed[addr])))
    return ips, extra, holders, listed, interfaces, kept


def _why_unassigned(addr, listed, node_flags, no_ip_takeover):
    eligible = [p for p in listed.get(addr, ()) if p < len(node_flags)
                and nodeflags.is_active(node_flags[p])
                and not node_flags[p] & nodeflags.DISABLED]
    if not eligible:
        return NO_ELIGIBLE_NODE
    return NO_TAKEOVER if no_ip_takeover else NOT_PLACED


def plan_takeover(reports, node_flags, *, algorithm="lcp2", no_ip_failback=False,
                  no_ip_takeover=False, moves=None, silent=frozenset(),
                  presumed=None) -> TakeoverPlan:
    """The takeover plan for the nodes' ``reports`` {pnn: {"configured": [{"address",
    "prefix", "interfaces"}], "hosted": [address]}} (the nodes that answered, this node
    first), ``node_flags`` one per node (:func:`allocation_flags`), the allocation
    ``algorithm`` and tunables, and ``moves`` {address: pnn} to force (moveip).

    ``silent``: the nodes whose link is up but that did not answer (their flags in
    ``node_flags`` say DISCONNECTED, so they are given nothing). ``presumed``
    {address: pnn}: who the leader's last run in this term left each address with (None:
    no run yet in this term). An address no answering node hosts whose presumed holder
    is silent, or whose holder is unknown while a node is silent, is kept (see the
    module doc), even against ``moves``."""
    ips, extra, holders, listed, interfaces, kept = _collect(reports, moves, silent,
                                                             presumed)
    allocation = ipalloc.allocate(ips, node_flags, algorithm=algorithm,
                                  no_ip_failback=bool(no_ip_failback),
                                  no_ip_takeover=bool(no_ip_takeover))
    if moves:
        for addr, pnn in moves.items():
            if addr not in kept:
                allocation[addr] = pnn
    previous = {ip.address: (holders.get(ip.address) or [-1])[0] for ip in ips}
    releases = [Release(addr, pnn, UNASSIGNED if allocation.get(addr, -1) == -1 else MOVED)
                for addr, pnn in previous.items()
                if pnn != -1 and allocation.get(addr, -1) != pnn] + extra
    takes = [Take(addr, pnn, previous.get(addr, -1), interfaces.get((addr, pnn), ()))
             for addr, pnn in allocation.items()
             if pnn != -1 and previous.get(addr, -1) != pnn]
    unassigned = {addr: _why_unassigned(addr, listed, node_flags, no_ip_takeover)
                  for addr, pnn in allocation.items() if pnn == -1}
    unassigned.update({r.address: UNLISTED for r in extra if r.why == UNLISTED})
    for addr, holder in kept.items():
        if holder is not None:
            allocation[addr] = holder
    return TakeoverPlan(algorithm=algorithm, allocation=allocation, previous=previous,
                        releases=tuple(releases), takes=tuple(takes), unassigned=unassigned,
                        kept={a: kept_reason(h, silent) for a, h in kept.items()})


class MoveRefused(PyctdbError):
    """A ``moveip`` that cannot be done as asked (the message says why)."""


def plan_move(reports, node_flags, address, target, *, silent=frozenset(),
              presumed=None) -> TakeoverPlan:
    """The plan of ``moveip ADDRESS TARGET`` over the nodes' ``reports`` (as for
    :func:`plan_takeover`): release ``address`` on every node that hosts it but
    ``target``, then take it on ``target``; every other address stays where it is.

    Raises :class:`MoveRefused` when ``target`` did not answer, does not list the address
    (CTDB's "Node N CANNOT host IP address A"), is not active and enabled, or when no
    answering node hosts the address and a ``silent`` node may (address fencing: it
    may still serve it)."""
    if target not in reports:
        raise MoveRefused(f"node {target} did not report its public addresses")
    listed = {a["address"]: tuple(a.get("interfaces", ()))
              for a in reports[target]["configured"]}
    if address not in listed:
        raise MoveRefused(f"Node {target} CANNOT host IP address {address}")
    flags = node_flags[target] if target < len(node_flags) else nodeflags.DISCONNECTED
    if not nodeflags.is_active(flags) or flags & nodeflags.DISABLED:
        raise MoveRefused(f"node {target} cannot host addresses now "
                          f"({nodeflags.pretty(flags)})")
    holders = sorted(pnn for pnn, info in reports.items() if address in info["hosted"])
    if not holders:
        held = _held_by_silent(address, silent, presumed)
        if held is not False:
            raise MoveRefused(f"{address} may still be served by "
                              f"{kept_reason(held, silent)}: not moved")
    previous = holders[0] if holders else -1
    allocation = {addr: pnn for pnn, info in reports.items() for addr in info["hosted"]}
    allocation[address] = target
    releases = tuple(Release(address, h, MOVED) for h in holders if h != target)
    takes = () if target in holders else (Take(address, target, previous,
                                               listed[address]),)
    return TakeoverPlan(algorithm="moveip", allocation=allocation,
                        previous={address: previous}, releases=releases, takes=takes)
