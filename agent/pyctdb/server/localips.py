"""Node side of failover: the public addresses this node hosts, added and removed as the
leader says (controls ``get_public_ips``, ``take_ip``, ``release_ip``).

``take_ip`` adds the address with pyroute2 on the first usable configured interface,
announces it (gratuitous ARP / unsolicited NA) and sends tickle ACKs for the connections
the address had elsewhere; ``release_ip`` removes it and resets its connections.

Fencing at the receiver: ``take_ip`` and ``release_ip`` carry the leader's term, and
are refused (ESTALE) when this node has seen a newer leader term: a leader that has
stepped down, or does not know yet that it has been replaced, can neither add an
address here nor remove one the new leader placed here. (Orders without a term, this
node's own releases and those of older agents, are obeyed.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time

from pyctdb.rules import election
from pyctdb.rules.takeover import sort_key
from pyctdb.server import netops, tasks

log = logging.getLogger(__name__)

SLOW_NETOPS = 0.2  # seconds: a network operation that takes longer is logged (INFO)


class NetThread:
    """Runs blocking network operations in this node's one netops thread: pyroute2's
    netlink socket must stay in the thread that created it."""

    def __init__(self):
        self._executor = None

    async def run(self, fn, *args):
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="netops")
        queued = time.monotonic()
        started = []

        def timed():
            started.append(time.monotonic())
            return fn(*args)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, timed)
        finally:
            done = time.monotonic()
            if done - queued > SLOW_NETOPS:
                start = started[0] if started else done
                log.info("netops %s took %.0f ms (%.0f ms queued)", getattr(
                    fn, "__name__", fn), (done - start) * 1000, (start - queued) * 1000)

    def shutdown(self):
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


class LocalAddresses:
    """The public addresses on this node's interfaces: ``assigned`` {address: interface
    it is (to be) on}, changed only under ``netlock`` and recorded in the hosted file;
    serves ``get_public_ips``, ``take_ip`` and ``release_ip``."""

    def __init__(self, cluster, addresses, net, record, tickles, events):
        self.cluster = cluster
        self.addresses = addresses  # PublicAddressList
        self.net = net  # NetThread
        self.record = record  # HostedRecord
        self.tickles = tickles  # Tickles
        self.events = events  # FailoverEvents
        self.assigned = {}
        self.netlock = asyncio.Lock()
        self._tasks = set()
        #: whether this node may host addresses now (its lease: :mod:`pyctdb.server.fencing`)
        self.may_host = lambda: True
        #: callables told ``(address)`` once an address is released here (CTDB's socket
        #: tells its clients: CTDB_SRVID_RELEASE_IP)
        self.on_released = []
        cluster.control_handlers.update({
            "get_public_ips": self._ctl_get_public_ips,
            "release_ip": self._ctl_release_ip,
            "take_ip": self._ctl_take_ip,
        })

    async def release(self, addr):
        """Release ``addr`` here, as the leader would have this node do."""
        return await self._ctl_release_ip(self.cluster.pnn, {"address": addr})

    @staticmethod
    def _usable_iface(pa):
        for iface in pa.interfaces:
            if netops.iface_is_up(iface):
                return iface
        return None

    @classmethod
    def _add_on_usable(cls, pa, addr):
        """(In the netops thread: one job, not one per step.) Add ``addr`` on the first
        usable interface and announce it; the interface, or None (none usable)."""
        iface = cls._usable_iface(pa)
        if iface is not None:
            netops.add_address(iface, addr, pa.prefix)
            netops.announce(iface, addr)
        return iface

    async def _take_by_script(self, addr, iface, prefix):
        """(Under ``netlock``.) The takeip event adds ``addr`` (CTDB's 10.interface is
        enabled); then it is checked and announced. ValueError when it is not there:
        the take failed (the event's failure is in the log). An address already there
        (taken again) is only announced: 10.interface would fail to add it twice."""
        res = None
        if not await self.net.run(self._present, iface, addr):
            res = await self.events.run("takeip", iface, addr, prefix)
        if not await self.net.run(self._present, iface, addr):
            self.assigned.pop(addr, None)
            await self.record.set(addr, None)
            raise ValueError(f"the takeip event did not add {addr} to {iface} ("
                             f"{(res or {}).get('status', 'no result')}): not taken")
        # (the address is on the interface from here on)
        await self.net.run(netops.announce, iface, addr)

    @staticmethod
    def _present(iface, addr):
        return addr in netops.addresses(iface)

    @staticmethod
    def _remove(addr, candidates, prefix):
        """(In the netops thread: one job.) The connections of ``addr``, then ``addr``
        removed from the first of ``candidates`` that has it: ``(connections, removed,
        failed)``."""
        conns = netops.tcp_connections([addr])
        removed = failed = False
        for cand in candidates:
            try:
                if netops.del_address(cand, addr, prefix):
                    removed = True
                    break
            except netops.NetError:
                failed = True
        return conns, removed, failed

    async def _ctl_get_public_ips(self, src, args):
        return {"configured": [{"address": pa.address, "prefix": pa.prefix,
                                "interfaces": list(pa.interfaces)}
                               for pa in self.addresses.configured.values()],
                "hosted": sorted(self.assigned, key=sort_key)}

    async def _ctl_release_ip(self, src, args):
        addr = args["address"]
        self._check_term(src, "release", addr, args.get("term"))
        pa = self.addresses.lookup(addr)
        t0 = time.monotonic()
        if addr in self.assigned and pa is not None:
            await self.events.run("releaseip", self.assigned[addr], addr, pa.prefix)
        t1 = time.monotonic()
        async with self.netlock:
            t2 = time.monotonic()
            # (it leaves ``assigned`` only once it is off the interface: a shutdown waits
            # for an empty ``assigned`` before it lets the process exit)
            iface = self.assigned.get(addr)
            conns, removed, failed = await self.net.run(
                self._remove, addr, ([iface] if iface else []) + (list(pa.interfaces) if pa else []),
                pa.prefix if pa else (32 if ":" not in addr else 128))
            self.assigned.pop(addr, None)
            if removed or not failed:  # (else it may still be there: keep it recorded)
                await self.record.set(addr, None)
        if conns:  # (after the answer: the new holder's tickles move the clients)
            tasks.spawn(self._reset_connections(addr, len(conns)), "reset-connections",
                        owner=self._tasks)
        log.warning("released %s%s%s", addr, f" from {iface}" if iface else "",
                    f", resetting {len(conns)} connections" if conns else "")
        log.debug("release %s: releaseip event %.0f ms, waited for the netops lock %.0f ms, "
                  "netops %.0f ms", addr, (t1 - t0) * 1000, (t2 - t1) * 1000,
                  (time.monotonic() - t2) * 1000)
        self.tickles.forget(addr)
        if addr not in self.addresses.configured:
            self.addresses.removed.pop(addr, None)
        self._told_released(addr)
        return {"released": removed, "connections": [list(x) for x in conns]}

    def _told_released(self, addr):
        for cb in self.on_released:
            try:
                cb(addr)
            except Exception:  # (a listener's bug must not fail the release)
                log.exception("release of %s: a listener failed", addr)

    async def drop_all(self, why):
        """Fencing: remove every hosted address now (netlink first, the releaseip
        events after), whatever the leader says. Returns the addresses removed."""
        dropped = []
        async with self.netlock:
            for addr, iface in sorted(self.assigned.items(), key=lambda kv: sort_key(kv[0])):
                pa = self.addresses.lookup(addr)
                prefix = pa.prefix if pa else (32 if ":" not in addr else 128)
                try:
                    await self.net.run(netops.del_address, iface, addr, prefix)
                except netops.NetError as exc:
                    log.error("fencing: %s", exc)
                    continue
                del self.assigned[addr]
                await self.record.set(addr, None)
                self.tickles.forget(addr)
                self._told_released(addr)
                dropped.append((addr, iface, prefix))
        if dropped:
            log.error("fencing: %s: removed %s", why,
                      ", ".join(f"{a} from {i}" for a, i, _ in dropped))
        for addr, _, _ in dropped:
            await self._reset_connections(addr)
        for addr, iface, prefix in dropped:
            try:
                await self.events.run("releaseip", iface, addr, prefix)
            except Exception as exc:  # (the address is gone whatever the script says)
                log.error("releaseip %s after fencing: %s", addr, exc)
        return [a for a, _, _ in dropped]

    @staticmethod
    async def _reset_connections(addr, count=None):
        """Reset this host's TCP connections from ``addr`` (``ss -K``), as a child
        process the event loop waits for (not the netops thread: a release or a take
        must not queue behind it)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *netops.reset_command(addr), stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL)
            await asyncio.wait_for(proc.wait(), 5)
        except (OSError, asyncio.TimeoutError) as exc:
            log.warning("cannot reset the connections of %s: %s", addr, exc or "timeout")
        else:
            log.debug("reset %s connections of %s", count if count is not None else "the",
                      addr)

    def _check_term(self, src, verb, addr, term):
        why = election.order_refused(f"{verb}_ip", term, self.cluster.newest_term())
        if why is not None:
            log.warning("node %d asked to %s %s: %s", src, verb, addr, why)
            raise election.StaleTerm(why)

    async def _ctl_take_ip(self, src, args):
        addr = args["address"]
        term = args.get("term")
        self._check_term(src, "take", addr, term)
        if not self.may_host():
            raise election.StaleTerm(
                f"this node may not host {addr}: it has no lease (it hears neither a "
                "majority of the nodes nor holds the cluster lock)")
        pa = self.addresses.configured.get(addr)
        if pa is None:
            raise ValueError(f"{addr} is not one of this node's public addresses")
        async with self.netlock:
            self._check_term(src, "take", addr, term)  # (a newer leader may have come meanwhile)
            # recorded before it is added (the interface it will most likely be on: the
            # record is for removing it, which finds it wherever it is)
            presumed = self.assigned.get(addr) or (pa.interfaces[0] if pa.interfaces else "")
            await self.record.set(addr, (pa.prefix, presumed))
            by_script = self.events.script_adds_addresses()
            try:
                if by_script:
                    iface = await self.net.run(self._usable_iface, pa)
                else:
                    iface = await self.net.run(self._add_on_usable, pa, addr)
            except Exception:
                if addr not in self.assigned:
                    await self.record.set(addr, None)
                raise
            if iface is None:
                if addr not in self.assigned:
                    await self.record.set(addr, None)
                raise ValueError(f"no usable interface for {addr} (configured: "
                                 f"{','.join(pa.interfaces)})")
            self.assigned[addr] = iface
            if iface != presumed:
                await self.record.set(addr, (pa.prefix, iface))
            if by_script:  # (CTDB's 10.interface adds it: then it is announced, as ctdbd)
                await self._take_by_script(addr, iface, pa.prefix)
        if not by_script:
            await self.events.run("takeip", iface, addr, pa.prefix)
        conns = self.tickles.for_take(addr, args.get("connections", []))
        if conns:
            self.tickles.send_acks(conns)
        log.warning("took %s on %s%s", addr, iface,
                    f", tickling {len(conns)} connections" if conns else "")
        return {"taken": True, "iface": iface}
