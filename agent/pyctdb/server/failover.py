"""Public address failover: the leader decides who hosts which address, nodes obey.

Leader side (a *takeover run*, in a background task):

1. ask every connected node for its configured public addresses and what it hosts
   (control ``get_public_ips``);
2. compute the allocation with :func:`pyctdb.ipalloc.allocate` (pure; CTDB's LCP2,
   deterministic or non-deterministic algorithm and its NoIPFailback/NoIPTakeover);
3. **release before take**: tell every node that holds an address it should no longer hold
   to release it, and wait for all of them; an address whose release failed on a node that
   is still connected is not given to anyone this round, so it is never on two nodes;
4. tell the new holders to take their addresses;
5. log one line with what moved and why.

A run happens whenever the generation, a node's flags or a node's address list changes,
and every ``CONSISTENCY_INTERVAL`` seconds anyway.

Node side: ``take_ip`` adds the address with pyroute2 on the first usable configured
interface, announces it (gratuitous ARP / unsolicited NA) and sends tickle ACKs for the
connections the address had elsewhere; ``release_ip`` removes it and resets its
connections. Every node checks each cycle (off the loop) that exactly the addresses it was
told to host are on its interfaces, and repairs and logs any difference, e.g. an address
removed or added by hand. Every node also tells the others, when they change, which TCP
connections its addresses have, so whoever takes an address over can tickle them.

Every node records the addresses it hosts (address, prefix, interface) in a small state
file next to its API socket (:func:`hosted_ips_path`; ``/run/pyctdb/pyctdbd.hosted-ips``
by default): written before an address is added and after it is removed, so it never
misses one that is on an interface. ``pyctdbd --drop-public-ips`` (after a killed agent)
removes those as well as the ``public_addresses`` file's, which covers addresses added at
runtime (``addip``); an agent that starts removes the ones a dead predecessor left.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import time

from pyctdb.rules import nodeflags

log = logging.getLogger("pyctdb.failover")

CONSISTENCY_INTERVAL = 2.0  # seconds between node-side interface checks
TAKEOVER_REFRESH = 10.0  # seconds between leader takeover runs when nothing changed
TICKLE_INTERVAL = 1.0  # seconds between scans of this node's connections
CONTROL_TIMEOUT = 2.0

ALGORITHMS = {0: "det", 1: "nondet", 2: "lcp2"}


def _sort_key(addr):
    ip = ipaddress.ip_address(addr)
    return (ip.version, int(ip))


# -- the record of hosted addresses --------------------------------------------------------
def interface_moves(assigned, configured, up):
    """Which hosted addresses must change interface, as CTDB's ``updateip``:
    ``assigned`` {address: interface it is on}, ``configured`` {address: PublicAddress},
    ``up`` the interfaces that are up. An address whose interface is no longer listed for
    it, or is down while another listed one is up, moves to the first listed interface
    that is up. Returns [(address, old interface, new interface)] in address order."""
    moves = []
    for addr in sorted(assigned, key=_sort_key):
        pa = configured.get(addr)
        old = assigned[addr]
        if pa is None or (old in pa.interfaces and old in up):
            continue
        new = next((i for i in pa.interfaces if i in up), None)
        if new is not None and new != old:
            moves.append((addr, old, new))
    return moves


def hosted_ips_path(socket_path):
    """The state file for an agent serving ``socket_path``: in the socket's directory (a
    runtime directory: it survives the agent, not a reboot), named after the socket, so
    agents with different sockets never share one."""
    base = socket_path[:-len(".socket")] if socket_path.endswith(".socket") else socket_path
    return base + ".hosted-ips"


def read_hosted(path):
    """{address: (prefix, interface)} recorded in ``path``; {} when there is no file.
    Raises ValueError for a file that is not one of ours."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read: {exc}") from None
    try:
        return {str(ipaddress.ip_address(e["address"])): (int(e["prefix"]), str(e["interface"]))
                for e in data["addresses"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a hosted addresses file ({exc})") from None


def write_hosted(path, entries):
    """Write {address: (prefix, interface)} to ``path`` atomically (a new file renamed
    over the old one); an empty record removes the file."""
    if not entries:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    data = {"pid": os.getpid(), "addresses": [
        {"address": a, "prefix": p, "interface": i}
        for a, (p, i) in sorted(entries.items(), key=lambda kv: _sort_key(kv[0]))]}
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.write("\n")
    os.replace(tmp, path)


class Failover:
    def __init__(self, cluster, config, tunables, events=None, hosted_file=None):
        self.cluster = cluster
        self.events = events
        self.config = config
        self.tunables = tunables
        self.disabled = bool(config.failover_disabled)
        self.configured = {pa.address: pa for pa in config.public_addresses}
        self.ips_version = 1
        self.assigned = {}  # address -> interface it is (to be) on
        self.tickles = {}  # address -> [(lip, lport, rip, rport)] as last reported
        self._my_conns = {}
        self._netlock = asyncio.Lock()
        self._executor = None
        self._tasks = set()
        self._takeover_task = None
        self._takeover_key = None
        self._last_takeover = -1e9
        self._last_check = -1e9
        self._last_tickle_scan = -1e9
        self._startup_cleaned = False
        self._leaderless_since = None
        self._takeover_lock = asyncio.Lock()
        #: addresses removed from this node's list (delip, reloadips) while it still hosted
        #: them: kept until released, so the release knows prefix and interfaces
        self._removed = {}
        #: the state file of hosted addresses (None: not recorded) and what it says:
        #: address -> (prefix, interface). At start, what a dead predecessor recorded; the
        #: first interface check removes those this node does not host.
        self.hosted_file = hosted_file
        self._recorded = {}
        if hosted_file is not None:
            try:
                self._recorded = read_hosted(hosted_file)
            except ValueError as exc:
                log.error("%s", exc)
            if self._recorded:
                log.warning("%s: %d addresses recorded by a previous agent: %s", hosted_file,
                            len(self._recorded), ", ".join(sorted(self._recorded, key=_sort_key)))
        self.last_allocation = {}  # leader: address -> pnn of the last run
        self.last_run = None  # leader: summary of the last run
        cluster.extra_state["ips_version"] = self.ips_version
        cluster.control_handlers.update({
            "get_public_ips": self._ctl_get_public_ips,
            "release_ip": self._ctl_release_ip,
            "take_ip": self._ctl_take_ip,
            "tickles": self._ctl_tickles,
            "move_ip": self._ctl_move_ip,
            "run_event": self._ctl_run_event,
            "add_public_ip": self._ctl_add_public_ip,
            "del_public_ip": self._ctl_del_public_ip,
            "reload_public_ips": self._ctl_reload_public_ips,
            "ipreallocate": self._ctl_ipreallocate,
        })
        cluster.cycle_hooks.append(self.on_cycle)
        # CTDB's startrecovery / recovered events, on every member, around each recovery;
        # the takeover run of a recovery starts after startrecovery, beside the databases'
        # recovery (the hooks after this one)
        cluster.recovery_hooks.append(self._start_recovery)
        cluster.recovered_hooks.append(
            lambda c, members: self._recovery_event(c, members, "recovered"))

    # -- helpers -------------------------------------------------------------------------
    def _spawn(self, coro, name=None):
        t = asyncio.create_task(coro, name=name)
        self._tasks.add(t)
        t.add_done_callback(self._task_done)
        return t

    def _task_done(self, t):
        self._tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            exc = t.exception()
            log.error("%s failed: %s", t.get_name(), exc, exc_info=exc)

    async def stop(self):
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _net(self, fn, *args):
        """Run a blocking network operation in this node's one netops thread: pyroute2's
        netlink socket must stay in the thread that created it."""
        if self._executor is None:
            import concurrent.futures
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="netops")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _usable_iface(self, pa):
        from pyctdb.server import netops
        for iface in pa.interfaces:
            if netops.iface_is_up(iface):
                return iface
        return None

    async def _record(self, addr, entry):
        """Record ``addr`` as hosted here (``entry`` = (prefix, interface)) or not (None),
        in the netops thread: called with ``_netlock`` held, before an add and after a
        removal, so the file never lacks an address that is on an interface."""
        if self.hosted_file is None:
            return
        if entry is None:
            if self._recorded.pop(addr, None) is None:
                return
        elif self._recorded.get(addr) == entry:
            return
        else:
            self._recorded[addr] = entry
        try:
            await self._net(write_hosted, self.hosted_file, dict(self._recorded))
        except OSError as exc:
            log.error("cannot write %s: %s", self.hosted_file, exc)

    # -- the cycle -----------------------------------------------------------------------
    def on_cycle(self, now):
        if self.disabled:
            return
        c = self.cluster
        # A node that has had no leader for RecoveryDropAllIPs seconds lets go of its
        # addresses (as CTDB does): the rest of the cluster has probably taken them over.
        if c.leader is None or not c.is_joined():
            if self._leaderless_since is None:
                self._leaderless_since = now
            limit = float(self.tunables.get("RecoveryDropAllIPs"))
            if self.assigned and limit > 0 and now - self._leaderless_since > limit:
                log.warning("no leader for %.0fs (RecoveryDropAllIPs): releasing all %d "
                            "public addresses", now - self._leaderless_since, len(self.assigned))
                for addr in list(self.assigned):
                    self._spawn(self._ctl_release_ip(c.pnn, {"address": addr}), "drop-ip")
                self._leaderless_since = now
        else:
            self._leaderless_since = None
        if (self.configured or self._recorded) and now - self._last_check >= CONSISTENCY_INTERVAL and (
                c.is_joined() or not self._startup_cleaned):
            self._last_check = now
            self._spawn(self._consistency_check(), "ip-check")
        if self._my_conns or self.assigned:
            if now - self._last_tickle_scan >= TICKLE_INTERVAL:
                self._last_tickle_scan = now
                self._spawn(self._scan_connections(), "tickle-scan")
        if not (c.am_leader and c.recmode == 0 and c.generation is not None):
            self._takeover_key = None
            return
        key = self._key()
        if key != self._takeover_key or now - self._last_takeover >= TAKEOVER_REFRESH:
            if self._takeover_task is None or self._takeover_task.done():
                reason = "periodic check" if key == self._takeover_key else "cluster changed"
                self._takeover_key = key
                self._last_takeover = now
                self._takeover_task = self._spawn(self.takeover_run(reason), "takeover")
            else:
                self._takeover_key = None  # run again when the current run finishes

    def _key(self):
        c = self.cluster
        nodes = [(c.pnn, c.my_flags, self.ips_version)]
        for p in c.peers.values():
            if p.link_up and p.state is not None:
                nodes.append((p.pnn, c.peer_flags(p), p.state.get("ips_version")))
        t = self.tunables
        return (c.generation, tuple(sorted(nodes)), t.get("IPAllocAlgorithm"),
                t.get("NoIPFailback"), t.get("NoIPTakeover"))

    # -- leader: takeover run ------------------------------------------------------------
    def _node_flags(self, unreachable):
        c = self.cluster
        flags = []
        for n in c.nodes:
            if n.deleted:
                flags.append(nodeflags.DELETED | nodeflags.DISCONNECTED)
            elif n.pnn == c.pnn:
                flags.append(c.my_flags)
            else:
                fl = c.peer_flags(c.peers[n.pnn])
                if fl & nodeflags.UNKNOWN:
                    fl = (fl & ~nodeflags.UNKNOWN) | nodeflags.DISCONNECTED
                flags.append(fl)
            if n.pnn in unreachable:
                flags[-1] |= nodeflags.DISCONNECTED
        return flags

    async def takeover_run(self, reason="requested", moves=None):
        """One takeover run. ``moves``: {address: pnn} to force (moveip). Runs one at a
        time: a run asked for (moveip, ipreallocate) waits for the one under way."""
        async with self._takeover_lock:
            return await self._takeover_run(reason, moves)

    async def _takeover_run(self, reason, moves):
        from pyctdb.rules import ipalloc
        c = self.cluster
        t0 = time.monotonic()
        targets = [c.pnn] + [p.pnn for p in c.peers.values() if p.link_up]
        infos = await asyncio.gather(*(c.control(p, "get_public_ips", timeout=CONTROL_TIMEOUT)
                                       for p in targets), return_exceptions=True)
        known, unreachable = {}, set()
        for pnn, info in zip(targets, infos):
            if isinstance(info, Exception):
                unreachable.add(pnn)
                log.warning("takeover: node %d did not report its addresses: %s", pnn, info)
            else:
                known[pnn] = info
        configured, holders = {}, {}
        for pnn, info in known.items():
            for a in info["configured"]:
                configured.setdefault(a["address"], set()).add(pnn)
            for addr in info["hosted"]:
                holders.setdefault(addr, []).append(pnn)
        ips, extra_release = [], []
        for addr in sorted(set(configured) | set(holders), key=_sort_key):
            hs = sorted(holders.get(addr, []))
            cur = hs[0] if hs else -1
            for other in hs[1:]:
                extra_release.append((addr, other))  # on two nodes: keep one
            if addr not in configured:
                extra_release.append((addr, cur))
                continue
            if moves and addr in moves:
                cur = moves[addr]
            ips.append(ipalloc.PublicIP(addr, cur, frozenset(configured[addr])))
        t = self.tunables
        algorithm = ALGORITHMS.get(int(t.get("IPAllocAlgorithm")), "lcp2")
        result = ipalloc.allocate(
            ips, self._node_flags(unreachable), algorithm=algorithm,
            no_ip_failback=bool(t.get("NoIPFailback")),
            no_ip_takeover=bool(t.get("NoIPTakeover")))
        if moves:
            for addr, pnn in moves.items():
                result[addr] = pnn
        old = {ip.address: (holders.get(ip.address) or [-1])[0] for ip in ips}
        releases = [(addr, pnn) for addr, pnn in old.items()
                    if pnn != -1 and result.get(addr, -1) != pnn] + extra_release
        moving = bool(releases) or any(pnn != -1 and old.get(addr, -1) != pnn
                                       for addr, pnn in result.items())
        if moving:  # CTDB: startipreallocate on every node before addresses move
            await self.event_on(known, "startipreallocate")
        # 1. release everywhere, and wait
        rel = await asyncio.gather(*(c.control(pnn, "release_ip", {"address": addr},
                                               timeout=CONTROL_TIMEOUT)
                                     for addr, pnn in releases), return_exceptions=True)
        blocked, conns = set(), {}
        for (addr, pnn), r in zip(releases, rel):
            if isinstance(r, Exception):
                peer = c.peers.get(pnn)
                if pnn == c.pnn or (peer is not None and peer.link_up):
                    blocked.add(addr)
                    log.error("takeover: node %d failed to release %s (%s): not moving it "
                              "this round", pnn, addr, r)
            else:
                conns.setdefault(addr, []).extend(r.get("connections", []))
        # 2. take
        takes = [(addr, pnn) for addr, pnn in result.items()
                 if pnn != -1 and old.get(addr, -1) != pnn and addr not in blocked]
        tk = await asyncio.gather(*(c.control(pnn, "take_ip", {
            "address": addr, "connections": conns.get(addr, [])}, timeout=CONTROL_TIMEOUT)
            for addr, pnn in takes), return_exceptions=True)
        failed = [(addr, pnn, r) for (addr, pnn), r in zip(takes, tk) if isinstance(r, Exception)]
        for addr, pnn, r in failed:
            log.error("takeover: node %d failed to take %s: %s", pnn, addr, r)
        if failed or blocked:
            self._takeover_key = None  # try again next cycle
        if moving:
            await self.event_on(known, "ipreallocated")
        self.last_allocation = {a: p for a, p in result.items()}
        moved = [f"{a} {old.get(a, -1)}->{p}" for a, p in takes]
        dropped = [f"{a} {p}->-1" for a, p in releases if result.get(a, -1) == -1]
        ms = (time.monotonic() - t0) * 1000
        summary = (f"takeover ({reason}, {algorithm}): {len(result)} addresses, "
                   f"{len(moved) + len(dropped)} moved in {ms:.1f} ms"
                   + (": " + ", ".join(moved + dropped) if moved or dropped else ""))
        self.last_run = {"time": time.time(), "reason": reason, "algorithm": algorithm,
                         "duration_ms": ms, "moves": moved + dropped,
                         "unreachable": sorted(unreachable)}
        if moved or dropped or failed:
            log.warning("%s", summary)
        else:
            log.debug("%s", summary)
        return self.last_run

    # -- node side: controls -------------------------------------------------------------
    async def _ctl_get_public_ips(self, src, args):
        return {"configured": [{"address": pa.address, "prefix": pa.prefix,
                                "interfaces": list(pa.interfaces)}
                               for pa in self.configured.values()],
                "hosted": sorted(self.assigned, key=_sort_key)}

    async def _ctl_release_ip(self, src, args):
        from pyctdb.server import netops
        addr = args["address"]
        pa = self.configured.get(addr) or self._removed.get(addr)
        if addr in self.assigned and pa is not None:
            await self._event("releaseip", self.assigned[addr], addr, pa.prefix)
        async with self._netlock:
            # (it leaves ``assigned`` only once it is off the interface: a shutdown waits
            # for an empty ``assigned`` before it lets the process exit)
            iface = self.assigned.get(addr)
            conns = netops.tcp_connections([addr])
            removed = failed = False
            for cand in ([iface] if iface else []) + (list(pa.interfaces) if pa else []):
                try:
                    if await self._net(netops.del_address, cand, addr,
                                       pa.prefix if pa else (32 if ":" not in addr else 128)):
                        removed = True
                        break
                except netops.NetError:
                    failed = True
                    continue
            killed = await self._net(netops.kill_local_connections, addr)
            self.assigned.pop(addr, None)
            if removed or not failed:  # (else it may still be there: keep it recorded)
                await self._record(addr, None)
        log.warning("released %s%s%s", addr, f" from {iface}" if iface else "",
                    f", reset {killed} connections" if killed else "")
        self.tickles.pop(addr, None)
        self._my_conns.pop(addr, None)
        if addr not in self.configured:
            self._removed.pop(addr, None)
        return {"released": removed, "connections": [list(x) for x in conns]}

    async def _ctl_take_ip(self, src, args):
        from pyctdb.server import netops
        addr = args["address"]
        pa = self.configured.get(addr)
        if pa is None:
            raise ValueError(f"{addr} is not one of this node's public addresses")
        async with self._netlock:
            iface = await self._net(self._usable_iface, pa)
            if iface is None:
                raise ValueError(f"no usable interface for {addr} (configured: "
                                 f"{','.join(pa.interfaces)})")
            await self._record(addr, (pa.prefix, iface))
            try:
                await self._net(netops.add_address, iface, addr, pa.prefix)
            except Exception:
                if addr not in self.assigned:
                    await self._record(addr, None)
                raise
            self.assigned[addr] = iface
            await self._net(netops.announce, iface, addr)
        await self._event("takeip", iface, addr, pa.prefix)
        conns = {tuple(x) for x in args.get("connections", [])}
        conns |= {tuple(x) for x in self.tickles.get(addr, [])}
        if conns:
            self._spawn(self._tickle(conns), "tickle")
        log.warning("took %s on %s%s", addr, iface,
                    f", tickling {len(conns)} connections" if conns else "")
        return {"taken": True, "iface": iface}

    async def _tickle(self, conns):
        from pyctdb.server import netops
        for lip, lport, rip, rport in conns:
            try:
                await self._net(netops.send_tickle, lip, int(lport), rip, int(rport))
            except OSError as exc:
                log.warning("tickle to %s:%s failed: %s", rip, rport, exc)

    async def _event(self, event, *args):
        if self.events is None:
            return None
        try:
            return await self.events.run(event, *args)
        except Exception as exc:
            log.error("event %s: %s", event, exc)
            return None

    async def event_on(self, pnns, event):
        """Run ``event`` on the nodes ``pnns`` (this one included) and wait for them; a
        node that fails or does not answer is logged, never fatal."""
        pnns = list(pnns)
        res = await asyncio.gather(*(self.cluster.control(p, "run_event", {"event": event},
                                                          timeout=CONTROL_TIMEOUT)
                                     for p in pnns), return_exceptions=True)
        for p, r in zip(pnns, res):
            if isinstance(r, Exception):
                log.warning("event %s on node %d: %s", event, p, r)

    async def _recovery_event(self, cluster, members, event):
        await self.event_on(members, event)

    async def _start_recovery(self, cluster, members):
        """The leader's first recovery hook: ``startrecovery`` on every member, then a
        takeover run in the background. Public addresses do not depend on the databases,
        so the addresses of a node that left move while the databases recover (the
        recovery hooks that follow this one) instead of after them."""
        await self.event_on(members, "startrecovery")
        if not self.disabled and cluster.am_leader:
            self._last_takeover = cluster.clock()
            self._takeover_task = self._spawn(
                self.takeover_run(f"recovery of {sorted(members)}"), "takeover")

    async def _ctl_run_event(self, src, args):
        res = await self._event(args["event"], *args.get("args", []))
        return {"status": res["status"] if res else "NONE"}

    async def _ctl_tickles(self, src, args):
        for addr, conns in args.get("tickles", {}).items():
            self.tickles[addr] = [tuple(x) for x in conns]
        return {}

    async def _ctl_move_ip(self, src, args):
        """On the leader: move one address to a node now."""
        c = self.cluster
        if not c.am_leader:
            raise ValueError("this node is not the leader")
        if self.disabled:
            raise ValueError("failover is disabled ([failover] disabled = true)")
        try:
            addr, pnn = str(ipaddress.ip_address(args["address"])), int(args["pnn"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"usage: move_ip address=IP pnn=PNN (got {args!r})") from None
        info = await c.control(pnn, "get_public_ips", timeout=CONTROL_TIMEOUT)
        if addr not in {a["address"] for a in info["configured"]}:
            raise ValueError(f"node {pnn} CANNOT host IP address {addr}")
        args = {"address": addr, "pnn": pnn}
        run = await self.takeover_run(f"moveip {args['address']} to node {args['pnn']}",
                                      moves={args["address"]: int(args["pnn"])})
        return run

    # -- runtime changes of this node's address list: addip, delip, reloadips -----------
    # As in CTDB they change the running list only; the public_addresses file is never
    # written (reloadips re-reads it). Each change bumps ``ips_version`` in this node's
    # STATE, which makes the leader do a takeover run; the API also asks the leader for
    # one at once (ipreallocate) and waits for it.
    def _changed_list(self, what):
        self.ips_version += 1
        self.cluster.extra_state["ips_version"] = self.ips_version
        log.warning("public addresses: %s", what)
        self.cluster.kick()

    @staticmethod
    def _pa_dict(pa):
        return {"address": pa.address, "prefix": pa.prefix, "interfaces": list(pa.interfaces)}

    def _forget(self, addr):
        """Take ``addr`` off this node's list. While it is still here it stays known (for
        its release): the next takeover run releases it, as it does any address a node
        hosts but does not list; if none does so in time, this node releases it itself."""
        pa = self.configured.pop(addr)
        if addr in self.assigned:
            self._removed[addr] = pa
            self._spawn(self._release_removed(addr), "release-removed")
        return pa

    async def _release_removed(self, addr, grace=5.0):
        t0 = time.monotonic()
        while time.monotonic() - t0 < grace:
            if addr not in self.assigned or addr in self.configured:
                return
            await asyncio.sleep(0.1)
        if addr in self.assigned and addr not in self.configured:
            log.warning("public address %s is no longer listed and no takeover run "
                        "released it: releasing it", addr)
            await self._ctl_release_ip(self.cluster.pnn, {"address": addr})

    async def _ctl_add_public_ip(self, src, args):
        """addip on this node. ``check``: only say whether it would change anything."""
        from pyctdb.common.config import public_address
        pa = public_address(args.get("address"), args.get("prefix"), args.get("interfaces"))
        res = {"pnn": self.cluster.pnn, **self._pa_dict(pa)}
        old = self.configured.get(pa.address)
        if old is not None:
            return {**res, "changed": False, "existing": self._pa_dict(old)}
        if not args.get("check"):
            self.configured[pa.address] = pa
            self._removed.pop(pa.address, None)
            self._changed_list(f"added {pa} (addip, not written to the public_addresses "
                               "file)")
        return {**res, "changed": True}

    async def _ctl_del_public_ip(self, src, args):
        """delip on this node: the address leaves this node's list; if this node hosts it,
        it is released and moves to a node that lists it, if any."""
        try:
            addr = str(ipaddress.ip_address(args.get("address")))
        except (TypeError, ValueError):
            raise ValueError(f"invalid IP address {args.get('address')!r}") from None
        pa = self.configured.get(addr)
        res = {"pnn": self.cluster.pnn, "address": addr, "hosted": addr in self.assigned}
        if pa is None:
            return {**res, "changed": False}
        if not args.get("check"):
            self._forget(addr)
            self._changed_list(f"removed {pa} (delip{', hosted here: releasing it' if res['hosted'] else ''})")
        return {**res, **self._pa_dict(pa), "changed": True}

    async def _ctl_reload_public_ips(self, src, args):
        """reloadips on this node: re-read the public_addresses file and apply the
        difference. An address whose prefix or interfaces changed is released first if
        hosted here, so that it is taken again as the file now says."""
        from pyctdb.errors import ConfigError
        from pyctdb.common.config import read_public_addresses
        try:
            new = {pa.address: pa for pa in read_public_addresses(self.config.config_dir)}
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        added = [a for a in new if a not in self.configured]
        removed = [a for a in self.configured if a not in new]
        changed = [a for a in new if a in self.configured and self.configured[a] != new[a]]
        res = {"pnn": self.cluster.pnn, "added": sorted(added, key=_sort_key),
               "removed": sorted(removed, key=_sort_key),
               "changed": sorted(changed, key=_sort_key)}
        if args.get("check") or not (added or removed or changed):
            return res
        for a in changed:
            # another prefix: released, taken again as the file now says; other
            # interfaces only: it stays on this node and moves interface (updateip)
            if a in self.assigned and new[a].prefix != self.configured[a].prefix:
                await self._ctl_release_ip(self.cluster.pnn, {"address": a})
        for a in removed:
            self._forget(a)
        self.configured = dict(new)
        for a in new:
            self._removed.pop(a, None)
        await self._update_interfaces()
        self._changed_list("reloaded the public_addresses file: "
                           + ", ".join(f"{k} {v}" for k, v in
                                       (("added", added), ("removed", removed),
                                        ("changed", changed)) if v))
        return res

    async def _ctl_ipreallocate(self, src, args):
        """On the leader: a takeover run now (waiting for one under way first)."""
        c = self.cluster
        if not c.am_leader:
            raise ValueError("this node is not the leader")
        if self.disabled:
            return {"skipped": "failover is disabled"}
        if c.recmode != 0 or c.generation is None:
            raise ValueError("the cluster is in recovery")
        return await self.takeover_run(str(args.get("reason") or "ipreallocate"))

    # -- node side: periodic work --------------------------------------------------------
    async def _consistency_check(self):
        from pyctdb.server import netops
        async with self._netlock:
            try:
                present = await self._net(netops.all_addresses)
            except Exception as exc:
                log.error("cannot read interface addresses: %s", exc)
                return
            for addr, pa in self.configured.items():
                on = present.get(addr)
                if addr in self.assigned and on is None:
                    iface = self.assigned[addr]
                    try:
                        await self._record(addr, (pa.prefix, iface))
                        await self._net(netops.add_address, iface, addr, pa.prefix)
                        await self._net(netops.announce, iface, addr)
                        log.warning("consistency: %s should be on %s but was missing: added "
                                    "it back", addr, iface)
                    except netops.NetError as exc:
                        log.error("consistency: cannot restore %s: %s", addr, exc)
                elif addr not in self.assigned and on is not None:
                    try:
                        await self._net(netops.del_address, on, addr, pa.prefix)
                        log.warning("consistency: %s was on %s but this node does not host "
                                    "it: removed it", addr, on)
                        await self._record(addr, None)
                    except netops.NetError as exc:
                        log.error("consistency: cannot remove %s: %s", addr, exc)
            # recorded but neither hosted nor listed here: left by a previous agent (an
            # addip'ed address, which a restart forgets) or by a failed removal
            for addr, (prefix, iface) in list(self._recorded.items()):
                if addr in self.assigned or addr in self.configured:
                    continue
                on = present.get(addr)
                try:
                    if on is not None:
                        await self._net(netops.del_address, on, addr, prefix)
                        log.warning("consistency: %s (recorded in %s) was on %s but this "
                                    "node does not host it: removed it", addr,
                                    self.hosted_file, on)
                    await self._record(addr, None)
                except netops.NetError as exc:
                    log.error("consistency: cannot remove %s: %s", addr, exc)
            for addr in list(self._recorded):
                if addr in self.configured and addr not in self.assigned \
                        and addr not in present:
                    await self._record(addr, None)
            self._startup_cleaned = True
        await self._update_interfaces()

    async def _update_interfaces(self):
        """Move hosted addresses whose interface went down or is no longer listed to
        another listed interface that is up (:func:`interface_moves`), then run CTDB's
        ``updateip OLD-IFACE NEW-IFACE IP MASKBITS`` event for each."""
        from pyctdb.server import netops
        moved = []
        async with self._netlock:
            ifaces = {i for a in self.assigned if a in self.configured
                      for i in self.configured[a].interfaces} | set(self.assigned.values())
            up = set()
            for i in ifaces:
                if await self._net(netops.iface_is_up, i):
                    up.add(i)
            for addr, old, new in interface_moves(self.assigned, self.configured, up):
                pa = self.configured[addr]
                try:
                    await self._record(addr, (pa.prefix, new))
                    await self._net(netops.add_address, new, addr, pa.prefix)
                except netops.NetError as exc:
                    await self._record(addr, (pa.prefix, old))
                    log.error("cannot move %s from %s to %s: %s", addr, old, new, exc)
                    continue
                try:
                    await self._net(netops.del_address, old, addr, pa.prefix)
                except netops.NetError as exc:
                    log.warning("moving %s to %s: not removed from %s: %s", addr, new,
                                old, exc)
                self.assigned[addr] = new
                await self._net(netops.announce, new, addr)
                moved.append((addr, old, new, pa.prefix))
        for addr, old, new, prefix in moved:
            log.warning("updateip: %s moved from %s to %s", addr, old, new)
            await self._event("updateip", old, new, addr, prefix)

    async def _scan_connections(self):
        from pyctdb.server import netops
        addrs = list(self.assigned)
        conns = await asyncio.to_thread(netops.tcp_connections, addrs)
        per = {a: [] for a in addrs}
        for x in conns:
            per.setdefault(x[0], []).append(list(x))
        if per == self._my_conns:
            return
        self._my_conns = per
        c = self.cluster
        for p in c.peers.values():
            if p.link_up:
                self._spawn(self._send_tickles(p.pnn, per))

    async def _send_tickles(self, pnn, per):
        try:
            await self.cluster.control(pnn, "tickles", {"tickles": per}, timeout=CONTROL_TIMEOUT)
        except Exception:
            pass

    async def evacuate(self, timeout=10.0):
        """Graceful shutdown: mark this node STOPPED so the leader moves its addresses to
        other nodes, and wait (at most ``timeout`` s) until it hosts none. Clients are
        moved before the agent goes, instead of after it is found gone."""
        c = self.cluster
        if not self.assigned:
            return True
        others = [p for p in c.peers.values()
                  if p.link_up and p.state is not None and nodeflags.is_active(c.peer_flags(p))]
        if not others:
            log.warning("shutdown: no other active node to take %d addresses",
                        len(self.assigned))
            return False
        n = len(self.assigned)
        c.my_flags |= nodeflags.STOPPED
        c.kick()
        t0 = time.monotonic()
        while self.assigned and time.monotonic() - t0 < timeout:
            await asyncio.sleep(0.02)
        if self.assigned:
            log.error("shutdown: %d addresses still here after %.0fs", len(self.assigned),
                      timeout)
            return False
        log.warning("shutdown: moved %d addresses to other nodes in %.0f ms", n,
                    (time.monotonic() - t0) * 1000)
        return True

    # -- queries -------------------------------------------------------------------------
    def local_ips(self):
        return [{"address": a, "prefix": pa.prefix, "interfaces": list(pa.interfaces),
                 "hosted": a in self.assigned, "iface": self.assigned.get(a)}
                for a, pa in sorted(self.configured.items(), key=lambda kv: _sort_key(kv[0]))]
