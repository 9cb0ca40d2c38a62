"""The record of the public addresses a node hosts: a small state file next to the API
socket (:func:`hosted_ips_path`; ``/run/pyctdb/pyctdbd.hosted-ips`` by default) with
each address, its prefix and its interface.

It is written before an address is added and after it is removed, so it never misses
one that is on an interface. ``pyctdbd --drop-public-ips`` (after a killed agent)
removes those as well as the ``public_addresses`` file's, which covers addresses added at
runtime (``addip``); an agent that starts removes the ones a dead predecessor left.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os

from pyctdb.rules.takeover import sort_key
from pyctdb.server import netops

log = logging.getLogger(__name__)


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
        for a, (p, i) in sorted(entries.items(), key=lambda kv: sort_key(kv[0]))]}
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.write("\n")
    os.replace(tmp, path)


def drop_addresses(public, hosted_file, rewrite=False, kill_connections=True):
    """Remove from this host's interfaces every address of ``public`` ({address:
    prefix}: the public_addresses file's) and every address recorded in ``hosted_file``
    (what the agent hosted, runtime additions included), with their connections.
    Returns ``(removed, errors)``: ["address/prefix on iface"], [messages]. With
    ``rewrite``, the record then keeps only what could not be removed (the guard leaves
    it to the agent: both writing it would race). ``kill_connections``: reset the
    removed addresses' TCP connections too (``ss -K``: a process each; the guard does
    it after it has closed the links)."""
    errors = []
    try:
        recorded = read_hosted(hosted_file)
    except ValueError as exc:
        recorded = {}
        errors.append(str(exc))
    todo = dict(public)
    todo.update({a: prefix for a, (prefix, _iface) in recorded.items()})
    removed, left = [], {}
    if not todo:
        return removed, errors
    present = netops.all_addresses()
    for addr, prefix in sorted(todo.items(), key=lambda kv: sort_key(kv[0])):
        iface = present.get(addr)
        if iface is None:
            continue
        try:
            netops.del_address(iface, addr, prefix)
            if kill_connections:
                netops.kill_local_connections(addr)
            removed.append(f"{addr}/{prefix} from {iface}")
        except netops.NetError as exc:
            errors.append(str(exc))
            if addr in recorded:
                left[addr] = recorded[addr]
    if rewrite and recorded:
        try:
            write_hosted(hosted_file, left)
        except OSError as exc:
            errors.append(f"cannot write {hosted_file}: {exc}")
    return removed, errors


class HostedRecord:
    """Keeps this node's hosted-addresses file (``path``; None: nothing is recorded)
    true to what is on its interfaces: ``entries`` {address: (prefix, interface)}.

    At start ``entries`` is what a dead predecessor recorded; the first interface check
    removes those this node does not host. ``run(fn, *args)`` runs a blocking call in
    the netops thread (:class:`pyctdb.server.localips.NetThread`)."""

    def __init__(self, path, run):
        self.path = path
        self._run = run
        self.entries = {}
        if path is None:
            return
        try:
            self.entries = read_hosted(path)
        except ValueError as exc:
            log.error("%s", exc)
        if self.entries:
            log.warning("%s: %d addresses recorded by a previous agent: %s", path,
                        len(self.entries), ", ".join(sorted(self.entries, key=sort_key)))

    async def set(self, addr, entry):
        """Record ``addr`` as hosted here (``entry`` = (prefix, interface)) or not (None),
        in the netops thread: called with the netops lock held, before an add and after
        a removal, so the file never lacks an address that is on an interface."""
        if self.path is None:
            return
        if entry is None:
            if self.entries.pop(addr, None) is None:
                return
        elif self.entries.get(addr) == entry:
            return
        else:
            self.entries[addr] = entry
        try:
            await self._run(write_hosted, self.path, dict(self.entries))
        except OSError as exc:
            log.error("cannot write %s: %s", self.path, exc)
