"""ContainerLab: NetnsLab's interface over real Podman containers on a Podman network.

    lab = ContainerLab(3).create()   # containers pcXXXXh0..h2 and a client pcXXXXcl
    lab.exec_argv(lab.host_ns(0), ["ip", "addr"])   # runs in container 0's network
    lab.destroy()

Each host is a container of the node image (``localhost/pyctdb-node:bookworm``, from
scripts/build-node-image.sh) on a bridge network that Podman (netavark) makes, with the
address ``10.232.S.10+i``; the client (the prober) is one more container on it. A daemon
"runs in container i" as ``ip netns exec`` runs it in a namespace: ``nsenter --net`` into
the container's network namespace, with the host's files (the agent, the venv, Debian's
ctdb), so that bench/failover's pyctdb and CTDB runs, which time address moves, see the
network stack of the containers (their veths, Podman's bridge and its firewall rules)
and nothing else differs from the NetnsLab runs. Needs root and podman.
"""

from __future__ import annotations

import os
import subprocess

from pyctdb.testing.netns import LabAddresses

IMAGE = os.environ.get("PYCTDB_NODE_IMAGE", "localhost/pyctdb-node:bookworm")


def _podman(*args, check=True):
    return subprocess.run(["podman", *args], check=check, capture_output=True, text=True)


class ContainerLab(LabAddresses):
    NET = "10.232"

    def __init__(self, hosts, subnet=None, image=IMAGE):
        super().__init__(hosts, subnet)
        self.image = image
        self.network = f"{self.tag}net"
        self._pid = {}

    def _names(self):
        return [(self.host_ns(i), self.host_address(i)) for i in range(self.hosts)] + \
            [(self.client_ns, self.client_address)]

    def create(self):
        try:
            _podman("network", "create", "--subnet", f"10.232.{self.subnet}.0/{self.prefix}",
                    "--gateway", f"10.232.{self.subnet}.1", self.network)
            for name, addr in self._names():
                _podman("run", "-d", "--name", name, "--hostname", name,
                        "--network", self.network, "--ip", addr, "--entrypoint", "sleep",
                        self.image, "infinity")
                pid = _podman("inspect", "-f", "{{.State.Pid}}", name).stdout.strip()
                self._pid[name] = int(pid)
        except Exception:
            self.destroy()
            raise
        return self

    def netns_path(self, name):
        return f"/proc/{self._pid[name]}/ns/net"

    def exec_argv(self, ns, argv):
        return ["nsenter", f"--net={self.netns_path(ns)}", "--", *argv]

    def run(self, ns, argv, **kw):
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.exec_argv(ns, argv), **kw)

    def link(self, i, up=True):
        """Bring the host end of container i's veth up or down: a silent loss."""
        out = self.run(self.host_ns(i), ["ip", "-o", "link", "show", self.iface],
                       check=True).stdout
        peer = int(out.split(":")[1].strip().split("@if")[1])
        name = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                              check=True).stdout
        for line in name.splitlines():
            idx, dev = line.split(":")[:2]
            if int(idx) == peer:
                subprocess.run(["ip", "link", "set", dev.strip().split("@")[0],
                                "up" if up else "down"], check=True)
                return
        raise RuntimeError(f"containerlab: no host end of {self.host_ns(i)}'s {self.iface}")

    def addresses(self, i):
        """IPv4 addresses on host i's eth0."""
        out = self.run(self.host_ns(i), ["ip", "-4", "-o", "addr", "show", "dev",
                                         self.iface], check=True).stdout
        return [line.split()[3].split("/")[0] for line in out.splitlines()]

    def pids(self, i):
        """Every process in host i's network namespace (the container's and ours)."""
        want = os.readlink(self.netns_path(self.host_ns(i)))
        out = []
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    if os.readlink(f"/proc/{p}/ns/net") == want:
                        out.append(p)
                except OSError:
                    pass
        return out

    def destroy(self):
        names = [n for n, _ in self._names()]
        _podman("rm", "-f", "-t", "0", *names, check=False)
        _podman("network", "rm", "-f", self.network, check=False)
        self._pid.clear()

    def __enter__(self):
        return self.create()

    def __exit__(self, *exc):
        self.destroy()
