"""This node's list of public addresses and its runtime changes: addip, delip, reloadips.

As in CTDB they change the running list only; the public_addresses file is never
written (reloadips re-reads it). Each change bumps ``ips_version`` in this node's STATE,
which makes the leader do a takeover run; the API also asks the leader for one at once
(ipreallocate) and waits for it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time

from pyctdb.common.config import public_address, read_public_addresses
from pyctdb.errors import ConfigError
from pyctdb.rules.takeover import sort_key

log = logging.getLogger(__name__)


class PublicAddressList:
    """The public addresses this node may host: ``configured`` {address: PublicAddress},
    ``removed`` (taken off the list while still hosted here: kept until released, so
    the release knows prefix and interfaces) and ``version`` (bumped at each change,
    published in this node's STATE as ``ips_version``)."""

    def __init__(self, cluster, config):
        self.cluster = cluster
        self.configured = {pa.address: pa for pa in config.public_addresses}
        self.removed = {}
        self.version = 1
        cluster.extra_state["ips_version"] = self.version

    def lookup(self, addr):
        """The PublicAddress of ``addr``, listed or being removed; None if neither."""
        return self.configured.get(addr) or self.removed.get(addr)

    def changed(self, what):
        """The list changed (``what``, logged): a new version, and a cycle now so that the
        leader sees it."""
        self.version += 1
        self.cluster.extra_state["ips_version"] = self.version
        log.warning("public addresses: %s", what)
        self.cluster.kick()


def _pa_dict(pa):
    return {"address": pa.address, "prefix": pa.prefix, "interfaces": list(pa.interfaces)}


class PublicAddressAdmin:
    """The controls that change this node's address list at runtime: ``add_public_ip``
    (addip), ``del_public_ip`` (delip) and ``reload_public_ips`` (reloadips). An address
    that leaves the list while hosted here is released by the next takeover run, or by
    this node itself if none does so in time."""

    def __init__(self, cluster, config, addresses, local, check, spawn):
        self.cluster = cluster
        self.config = config
        self.addresses = addresses
        self.local = local  # LocalAddresses: what is hosted here, and releases
        self.check = check  # InterfaceCheck: interface moves after a reload
        self._spawn = spawn
        cluster.control_handlers.update({
            "add_public_ip": self._ctl_add_public_ip,
            "del_public_ip": self._ctl_del_public_ip,
            "reload_public_ips": self._ctl_reload_public_ips,
        })

    def _forget(self, addr):
        """Take ``addr`` off this node's list. While it is still here it stays known (for
        its release): the next takeover run releases it, as it does any address a node
        hosts but does not list; if none does so in time, this node releases it itself."""
        pa = self.addresses.configured.pop(addr)
        if addr in self.local.assigned:
            self.addresses.removed[addr] = pa
            self._spawn(self._release_removed(addr), "release-removed")
        return pa

    async def _release_removed(self, addr, grace=5.0):
        assigned, t0 = self.local.assigned, time.monotonic()
        while time.monotonic() - t0 < grace:
            if addr not in assigned or addr in self.addresses.configured:
                return
            await asyncio.sleep(0.1)
        if addr in assigned and addr not in self.addresses.configured:
            log.warning("public address %s is no longer listed and no takeover run "
                        "released it: releasing it", addr)
            await self.local.release(addr)

    async def _ctl_add_public_ip(self, src, args):
        """addip on this node. ``check``: only say whether it would change anything."""
        pa = public_address(args.get("address"), args.get("prefix"), args.get("interfaces"))
        res = {"pnn": self.cluster.pnn, **_pa_dict(pa)}
        old = self.addresses.configured.get(pa.address)
        if old is not None:
            return {**res, "changed": False, "existing": _pa_dict(old)}
        if not args.get("check"):
            self.addresses.configured[pa.address] = pa
            self.addresses.removed.pop(pa.address, None)
            self.addresses.changed(f"added {pa} (addip, not written to the "
                                   "public_addresses file)")
        return {**res, "changed": True}

    async def _ctl_del_public_ip(self, src, args):
        """delip on this node: the address leaves this node's list; if this node hosts it,
        it is released and moves to a node that lists it, if any."""
        try:
            addr = str(ipaddress.ip_address(args.get("address")))
        except (TypeError, ValueError):
            raise ValueError(f"invalid IP address {args.get('address')!r}") from None
        pa = self.addresses.configured.get(addr)
        res = {"pnn": self.cluster.pnn, "address": addr, "hosted": addr in self.local.assigned}
        if pa is None:
            return {**res, "changed": False}
        if not args.get("check"):
            self._forget(addr)
            self.addresses.changed(
                f"removed {pa} (delip{', hosted here: releasing it' if res['hosted'] else ''})")
        return {**res, **_pa_dict(pa), "changed": True}

    async def _ctl_reload_public_ips(self, src, args):
        """reloadips on this node: re-read the public_addresses file and apply the
        difference. An address whose prefix or interfaces changed is released first if
        hosted here, so that it is taken again as the file now says."""
        try:
            new = {pa.address: pa for pa in read_public_addresses(self.config.config_dir)}
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        configured = self.addresses.configured
        added = [a for a in new if a not in configured]
        removed = [a for a in configured if a not in new]
        changed = [a for a in new if a in configured and configured[a] != new[a]]
        res = {"pnn": self.cluster.pnn, "added": sorted(added, key=sort_key),
               "removed": sorted(removed, key=sort_key),
               "changed": sorted(changed, key=sort_key)}
        if args.get("check") or not (added or removed or changed):
            return res
        for a in changed:
            # another prefix: released, taken again as the file now says; other
            # interfaces only: it stays on this node and moves interface (updateip)
            if a in self.local.assigned and new[a].prefix != self.addresses.configured[a].prefix:
                await self.local.release(a)
        for a in removed:
            self._forget(a)
        self.addresses.configured = dict(new)
        for a in new:
            self.addresses.removed.pop(a, None)
        await self.check.update_interfaces()
        self.addresses.changed("reloaded the public_addresses file: "
                               + ", ".join(f"{k} {v}" for k, v in
                                           (("added", added), ("removed", removed),
                                            ("changed", changed)) if v))
        return res
