"""Node operations on public addresses: list them, move one, add and delete them at
run time, reload a node's public_addresses file, and ask for a takeover run."""

from __future__ import annotations

import asyncio
import ipaddress
import os

from pyctdb.errors import ApiError, ControlError
from pyctdb.server import netops


class IpOperations:
    """Public addresses for clients: what each node has and hosts, and their changes,
    each followed by a takeover run on the leader."""

    def __init__(self, cluster, failover, controls):
        self.cluster = cluster
        self.failover = failover
        self.controls = controls
        #: link states set with ``ctdb setifacelink`` {interface: up}: shown by ``ctdb
        #: ifaces``; hosting follows the kernel's link state (see iface_link)
        self.link_states = {}

    async def takeover_run(self, reason):
        """Ask the leader for a takeover run and wait for it. Returns the run's summary,
        ``{"skipped": why}`` when there is nothing to ask, or ``{"error": ...}``."""
        c = self.cluster
        if self.failover is None or self.failover.disabled:
            return {"skipped": "failover is disabled"}
        if c.leader is None:
            return {"skipped": "no leader: the next leader's takeover run applies it"}
        try:
            return await c.control(c.leader, "ipreallocate", {"reason": reason},
                                   timeout=20.0)
        except ControlError as exc:
            return {"error": str(exc), "code": exc.code}

    async def ipreallocate(self):
        """A takeover run now; ApiError with the leader's code when it failed (EAGAIN:
        the cluster is in recovery, or runs are disabled for now: try again)."""
        res = await self.takeover_run("ipreallocate")
        if "error" in res:
            raise ApiError(res.get("code") or "EIO", res["error"])
        return res

    async def addip(self, address, prefix, interfaces, pnn=None, check=False):
        target = self.controls.target(pnn)
        res = await self.controls.on_node(target, "add_public_ip", {
            "address": address, "prefix": prefix, "interfaces": interfaces,
            "check": bool(check)})
        if res["changed"] and not check:
            res["takeover"] = await self.takeover_run(f"addip {res['address']} on node "
                                                      f"{target}")
        return res

    async def delip(self, address, pnn=None, check=False):
        target = self.controls.target(pnn)
        res = await self.controls.on_node(target, "del_public_ip",
                                          {"address": address, "check": bool(check)})
        if res["changed"] and not check:
            res["takeover"] = await self.takeover_run(f"delip {res['address']} on node "
                                                      f"{target}")
        return res

    async def reloadips(self, pnns=None, check=False):
        """Re-read the public_addresses file on ``pnns`` (a list, ``"all"``, or None for
        this node), then one takeover run."""
        c = self.cluster
        if pnns is None:
            targets = [c.pnn]
        elif pnns == "all":
            targets = [n.pnn for n in c.nodes if not n.deleted]
        elif isinstance(pnns, list) and pnns:
            targets = [self.controls.target(p) for p in pnns]
        else:
            raise ApiError("EINVAL", "pnns must be a non-empty list of PNNs or \"all\"")
        results = await asyncio.gather(*(self.controls.on_node(p, "reload_public_ips",
                                                               {"check": bool(check)})
                                         for p in targets), return_exceptions=True)
        nodes, failed = [], []
        for p, r in zip(targets, results):
            if isinstance(r, ApiError):
                failed.append({"pnn": p, "code": r.code, "error": r.message})
            elif isinstance(r, Exception):
                raise r
            else:
                nodes.append(r)
        res = {"nodes": nodes, "failed": failed}
        if not check and any(n["added"] or n["removed"] or n["changed"] for n in nodes):
            res["takeover"] = await self.takeover_run(
                "reloadips on node" + ("s " if len(targets) > 1 else " ")
                + ",".join(map(str, targets)))
        return res

    async def ip(self, all=False):
        """Public addresses and who hosts them, as this node learns from the cluster.

        ``all``: every address known to any connected node; otherwise this node's."""
        c = self.cluster
        targets = [c.pnn] + ([p.pnn for p in c.peers.values() if p.link_up] if all else [])
        infos = await asyncio.gather(*(c.control(p, "get_public_ips", timeout=3.0)
                                       for p in targets), return_exceptions=True)
        ips = {}
        for pnn, info in zip(targets, infos):
            if isinstance(info, ControlError) or isinstance(info, Exception):
                continue
            for a in info["configured"]:
                e = ips.setdefault(a["address"], {"address": a["address"], "pnn": -1,
                                                  "prefix": a["prefix"], "nodes": []})
                e["nodes"].append(pnn)
                if pnn == c.pnn:
                    e["interfaces"] = a["interfaces"]
                    e["prefix"] = a["prefix"]
            for addr in info["hosted"]:
                e = ips.setdefault(addr, {"address": addr, "pnn": -1, "nodes": []})
                e["pnn"] = pnn
        if not all:
            mine = {a["address"] for a in (infos[0]["configured"]
                                           if not isinstance(infos[0], Exception) else [])}
            # this node's view of who hosts its addresses comes from the cluster
            others = [p.pnn for p in c.peers.values() if p.link_up]
            more = await asyncio.gather(*(c.control(p, "get_public_ips", timeout=3.0)
                                          for p in others), return_exceptions=True)
            for pnn, info in zip(others, more):
                if isinstance(info, Exception):
                    continue
                for addr in info["hosted"]:
                    if addr in ips:
                        ips[addr]["pnn"] = pnn
            ips = {k: v for k, v in ips.items() if k in mine}
        order = sorted(ips, key=lambda a: (ipaddress.ip_address(a).version,
                                           int(ipaddress.ip_address(a))))
        return {"pnn": c.pnn, "all": bool(all), "ips": [ips[a] for a in order]}

    async def moveip(self, address, pnn):
        c = self.cluster
        self.controls.target(pnn)
        if c.leader is None:
            raise ApiError("ENOTCONN", "no leader: cannot move addresses now")
        return await self.controls.on_node(c.leader, "move_ip",
                                           {"address": address, "pnn": pnn}, timeout=20.0)

    # -- tickles and announcements (CTDB's gettickles, addtickle, deltickle, gratarp) ----
    def _public(self, address):
        if self.failover is None or self.failover.addresses.lookup(address) is None:
            raise ApiError("ENOENT", f"{address} is not a public address of node "
                                     f"{self.cluster.pnn}")

    def tickles(self, address, port=0):
        """The TCP connections known for public address ``address`` (to its port
        ``port``; 0: every port): [((client address, port), (address, port))]."""
        self._public(address)
        return [((rip, int(rport)), (lip, int(lport)))
                for lip, lport, rip, rport in self.failover.tickles.connections(address, port)]

    def add_tickle(self, client, server):
        """Register the connection of ``client`` to public address ``server`` (each
        ``(address, port)``): tickled by whoever takes the address over."""
        self._public(server[0])
        self.failover.tickles.register((server[0], server[1], client[0], client[1]))

    def del_tickle(self, client, server):
        if self.failover is not None:
            self.failover.tickles.unregister((server[0], server[1], client[0], client[1]))

    async def gratarp(self, address, iface):
        """Announce ``address`` from interface ``iface`` (gratuitous ARP, or an unsolicited
        neighbour advertisement for IPv6), as ``ctdb gratarp`` asks ctdbd to."""
        if self.failover is None:
            raise ApiError("EINVAL", "this agent runs without failover")
        if not iface or "/" in iface or not os.path.exists(f"/sys/class/net/{iface}"):
            raise ApiError("ENOENT", f"no interface {iface!r} on node {self.cluster.pnn}")
        await self.failover.net.run(netops.announce, iface, address)

    def interfaces(self):
        """The interfaces this node's public addresses list."""
        if self.failover is None:
            return set()
        return {i for pa in self.failover.addresses.configured.values() for i in pa.interfaces}

    def set_iface_link(self, iface, up):
        """``ctdb setifacelink IFACE up|down`` (CTDB's 10.interface calls it at each
        monitor with what it found): recorded and shown; an interface no public address
        lists is refused, as ctdbd refuses it."""
        if iface not in self.interfaces():
            raise ApiError("ENOENT", f"interface {iface!r} is not an interface of node "
                                     f"{self.cluster.pnn}'s public addresses")
        self.link_states[iface] = bool(up)

    def iface_link(self, iface, kernel_up):
        """An interface's link state as ``ctdb ifaces`` shows it: down if either the
        kernel or the last ``setifacelink`` says so."""
        return bool(kernel_up) and self.link_states.get(iface, True)

