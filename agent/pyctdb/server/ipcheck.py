"""The node's interface check: every node checks each cycle (off the loop) that exactly
the addresses it was told to host are on its interfaces, and repairs and logs any
difference, e.g. an address removed or added by hand; hosted addresses whose interface
went down or is no longer listed move to another listed interface (CTDB's updateip)."""

from __future__ import annotations

import logging

from pyctdb.rules.takeover import interface_moves
from pyctdb.server import netops

log = logging.getLogger(__name__)


class InterfaceCheck:
    """Makes this node's interfaces match what it hosts (``local.assigned``) and lists
    (``addresses.configured``): restores missing addresses, removes stray ones (also
    those a previous agent recorded), moves addresses between interfaces.
    ``startup_cleaned`` tells whether the first check has run."""

    def __init__(self, addresses, local, record, events):
        self.addresses = addresses  # PublicAddressList
        self.local = local  # LocalAddresses
        self.record = record  # HostedRecord
        self.events = events  # FailoverEvents
        self.startup_cleaned = False

    async def run(self):
        """One consistency check, then the interface moves."""
        local, record, net = self.local, self.record, self.local.net
        async with local.netlock:
            try:
                present = await net.run(netops.all_addresses)
            except Exception as exc:
                log.error("cannot read interface addresses: %s", exc)
                return
            for addr, pa in self.addresses.configured.items():
                on = present.get(addr)
                if addr in local.assigned and on is None:
                    if not local.may_host():
                        # (fenced: the lease ended, or the guard removed them while this
                        # agent was paused; another node may serve it now)
                        log.warning("consistency: %s is missing and this node has no "
                                    "lease: not adding it back", addr)
                        continue
                    iface = local.assigned[addr]
                    try:
                        await record.set(addr, (pa.prefix, iface))
                        await net.run(netops.add_address, iface, addr, pa.prefix)
                        await net.run(netops.announce, iface, addr)
                        log.warning("consistency: %s should be on %s but was missing: added "
                                    "it back", addr, iface)
                    except netops.NetError as exc:
                        log.error("consistency: cannot restore %s: %s", addr, exc)
                elif addr not in local.assigned and on is not None:
                    try:
                        await net.run(netops.del_address, on, addr, pa.prefix)
                        log.warning("consistency: %s was on %s but this node does not host "
                                    "it: removed it", addr, on)
                        await record.set(addr, None)
                    except netops.NetError as exc:
                        log.error("consistency: cannot remove %s: %s", addr, exc)
            # recorded but neither hosted nor listed here: left by a previous agent (an
            # addip'ed address, which a restart forgets) or by a failed removal
            for addr, (prefix, iface) in list(record.entries.items()):
                if addr in local.assigned or addr in self.addresses.configured:
                    continue
                on = present.get(addr)
                try:
                    if on is not None:
                        await net.run(netops.del_address, on, addr, prefix)
                        log.warning("consistency: %s (recorded in %s) was on %s but this "
                                    "node does not host it: removed it", addr,
                                    record.path, on)
                    await record.set(addr, None)
                except netops.NetError as exc:
                    log.error("consistency: cannot remove %s: %s", addr, exc)
            for addr in list(record.entries):
                if addr in self.addresses.configured and addr not in local.assigned \
                        and addr not in present:
                    await record.set(addr, None)
            self.startup_cleaned = True
        await self.update_interfaces()

    async def update_interfaces(self):
        """Move hosted addresses whose interface went down or is no longer listed to
        another listed interface that is up (:func:`interface_moves`), then run CTDB's
        ``updateip OLD-IFACE NEW-IFACE IP MASKBITS`` event for each."""
        local, record, net, addresses = self.local, self.record, self.local.net, self.addresses
        moved = []
        async with local.netlock:
            ifaces = {i for a in local.assigned if a in addresses.configured
                      for i in addresses.configured[a].interfaces} | set(local.assigned.values())
            up = set()
            for i in ifaces:
                if await net.run(netops.iface_is_up, i):
                    up.add(i)
            for addr, old, new in interface_moves(local.assigned, addresses.configured, up):
                pa = addresses.configured[addr]
                try:
                    await record.set(addr, (pa.prefix, new))
                    await net.run(netops.add_address, new, addr, pa.prefix)
                except netops.NetError as exc:
                    await record.set(addr, (pa.prefix, old))
                    log.error("cannot move %s from %s to %s: %s", addr, old, new, exc)
                    continue
                try:
                    await net.run(netops.del_address, old, addr, pa.prefix)
                except netops.NetError as exc:
                    log.warning("moving %s to %s: not removed from %s: %s", addr, new,
                                old, exc)
                local.assigned[addr] = new
                await net.run(netops.announce, new, addr)
                moved.append((addr, old, new, pa.prefix))
        for addr, old, new, prefix in moved:
            log.warning("updateip: %s moved from %s to %s", addr, old, new)
            await self.events.run("updateip", old, new, addr, prefix)
