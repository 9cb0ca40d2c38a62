"""Network namespaces as test hosts: N hosts and a client on one bridge, no containers.

    lab = NetnsLab(3).create()
    lab.host_ns(0)          # "pct1a2bh0"
    lab.host_address(0)     # "10.231.57.10"
    lab.public_address(j)   # "10.231.57.100+j": free addresses on the same subnet
    lab.exec(lab.client_ns, ["ping", "-c1", addr])
    lab.link(0, up=False)   # cut host 0 off silently (its veth goes down)
    lab.destroy()

The bridge lives in its own namespace, so nothing touches the host's network. Traffic
only ever goes between these namespaces. Needs root and iproute2.
"""

from __future__ import annotations

import random
import secrets
import subprocess


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


class LabAddresses:
    """The addressing of a lab of ``hosts`` hosts on one /24 (``NET``.``subnet``.0):
    hosts at .10+i, public addresses at .100+j, the client at .250, on ``eth0``."""

    NET = "10.231"
    prefix = 24
    iface = "eth0"

    def __init__(self, hosts, subnet=None):
        self.hosts = hosts
        self.tag = "pc" + secrets.token_hex(2)
        self.subnet = subnet if subnet is not None else random.randint(10, 250)
        self.client_ns = f"{self.tag}cl"

    def host_ns(self, i):
        return f"{self.tag}h{i}"

    def host_address(self, i):
        return f"{self.NET}.{self.subnet}.{10 + i}"

    def public_address(self, j):
        return f"{self.NET}.{self.subnet}.{100 + j}"

    @property
    def client_address(self):
        return f"{self.NET}.{self.subnet}.250"


class NetnsLab(LabAddresses):
    def __init__(self, hosts, subnet=None):
        super().__init__(hosts, subnet)
        self.bridge_ns = f"{self.tag}br"
        self.created = False

    def create(self):
        try:
            _ip("netns", "add", self.bridge_ns)
            self.created = True
            _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
            nss = [(self.host_ns(i), self.host_address(i), f"p{i}") for i in range(self.hosts)]
            nss.append((self.client_ns, self.client_address, "pcl"))
            for ns, addr, port in nss:
                _ip("netns", "add", ns)
                _ip("-n", self.bridge_ns, "link", "add", port, "type", "veth", "peer", "name",
                    self.iface, "netns", ns)
                _ip("-n", self.bridge_ns, "link", "set", port, "master", "br0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "addr", "add", f"{addr}/{self.prefix}", "dev", self.iface)
                _ip("-n", ns, "link", "set", self.iface, "up")
        except Exception:
            self.destroy()
            raise
        return self

    def link(self, i, up=True):
        """Bring host i's bridge port up or down: a silent loss, no resets."""
        _ip("-n", self.bridge_ns, "link", "set", f"p{i}", "up" if up else "down")

    def exec_argv(self, ns, argv):
        return ["ip", "netns", "exec", ns, *argv]

    def run(self, ns, argv, **kw):
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.exec_argv(ns, argv), **kw)

    def addresses(self, i):
        """IPv4 addresses on host i's eth0."""
        out = _ip("-n", self.host_ns(i), "-4", "-o", "addr", "show", "dev", self.iface).stdout
        return [line.split()[3].split("/")[0] for line in out.splitlines()]

    def pids(self, i):
        """Every process in host i's network namespace."""
        return _ip("netns", "pids", self.host_ns(i), check=False).stdout.split()

    def destroy(self):
        for ns in [self.host_ns(i) for i in range(self.hosts)] + [self.client_ns,
                                                                  self.bridge_ns]:
            _ip("netns", "del", ns, check=False)
        self.created = False

    def __enter__(self):
        return self.create()

    def __exit__(self, *exc):
        self.destroy()
