"""Samba for the tests and benchmarks: a clustered smb.conf of a node (its CTDB socket,
directories of its own), and clustered smbds on a cluster's nodes (:class:`SmbdNodes`),
whether the cluster manager is pyctdbd or CTDB's ctdbd."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time


def write_smb_conf(d, ctdb_socket, global_extra="", shares=""):
    """Write ``d/smb.conf`` for a clustered Samba (``clustering = yes``, registry
    configuration) on the CTDB socket ``ctdb_socket``, with its lock, state, cache,
    private and pid directories under ``d``; ``global_extra`` lines go in ``[global]``
    (before ``include = registry``, which comes last: smbd takes the directories from
    the lines before it), ``shares`` after it. Returns the file's path.

    ``lock/msg.lock`` is made beforehand: smbd makes it in the lock directory of its
    start, before it reads smb.conf, and would not find it in ``lock directory``."""
    for sub in ("lock/msg.lock", "state", "cache", "private", "run", "ncalrpc"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    path = os.path.join(d, "smb.conf")
    with open(path, "w") as f:
        f.write(f"""[global]
clustering = yes
ctdbd socket = {ctdb_socket}
lock directory = {d}/lock
state directory = {d}/state
cache directory = {d}/cache
private dir = {d}/private
pid directory = {d}/run
ncalrpc dir = {d}/ncalrpc
log file = {d}/log.%m
{global_extra}
include = registry
{shares}""")
    return path


class SmbdNodes:
    """One clustered smbd per node, each on its node's address (added to ``lo`` as a
    /32 while it runs: smbd serves only addresses its host's interfaces have) and
    ``port``, sharing ``share`` as ``[data]``. ``sockets[pnn]``: the CTDB socket of node
    pnn's cluster manager (pyctdbd or ctdbd); ``addresses[pnn]``: its address.

        with SmbdNodes(base, addresses, sockets) as s:
            s.start()                 # every smbd listening
            s.smb[0]                  # node 0's smb.conf
            s.pids[2]                 # node 2's main smbd

    ``stop()`` (and leaving the ``with``) ends every smbd (its process group) and
    removes the addresses it added."""

    def __init__(self, base, addresses, sockets, port=4450, share=None, extra=""):
        self.base = base
        self.addresses = list(addresses)
        self.sockets = list(sockets)
        self.port = port
        self.share = share or os.path.join(base, "share")
        self.extra = extra
        self.smb = {}
        self.pids = {}
        self._procs = []
        self._added = []

    def _conf(self, pnn):
        return write_smb_conf(os.path.join(self.base, f"samba{pnn}"), self.sockets[pnn], f"""\
netbios name = PYCTDB
server role = standalone server
interfaces = {self.addresses[pnn]}
bind interfaces only = yes
smb ports = {self.port}
map to guest = bad user
disable spoolss = yes
load printers = no
{self.extra}""", f"""
[data]
path = {self.share}
writeable = yes
guest ok = yes
force user = root
""")

    def start(self, timeout=60):
        os.makedirs(self.share, mode=0o777, exist_ok=True)
        os.chmod(self.share, 0o777)
        for a in self.addresses:
            r = subprocess.run(["ip", "addr", "add", f"{a}/32", "dev", "lo"],
                               capture_output=True, text=True)
            if r.returncode == 0:
                self._added.append(a)
        for p in range(len(self.addresses)):
            self.smb[p] = self._conf(p)
            with open(os.path.join(self.base, f"smbd{p}.out"), "w") as out:
                pr = subprocess.Popen(
                    ["smbd", "--foreground", "--no-process-group", "--debug-stdout", "-d",
                     "1", "-s", self.smb[p]], stdout=out, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True)
            self._procs.append(pr)
            self.pids[p] = pr.pid

        def listening(a):
            try:
                socket.create_connection((a, self.port), timeout=0.5).close()
                return True
            except OSError:
                return False
        deadline = time.monotonic() + timeout
        while not all(listening(a) for a in self.addresses):
            dead = [p for p, pr in enumerate(self._procs) if pr.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"smbd not listening on {self.addresses} port "
                                   f"{self.port} (exited: {dead}):\n" + self._outputs())
            time.sleep(0.1)
        return self

    def _outputs(self):
        """The last lines each smbd wrote."""
        out = []
        for p in range(len(self._procs)):
            try:
                with open(os.path.join(self.base, f"smbd{p}.out")) as f:
                    out.append(f"smbd{p}.out: " + " | ".join(f.read().splitlines()[-8:]))
            except OSError:
                pass
        return "\n".join(out)

    def stop(self):
        for pr in self._procs:
            try:
                os.killpg(pr.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pr in self._procs:
            try:
                pr.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(pr.pid, signal.SIGKILL)
                pr.wait(10)
        self._procs = []
        for a in self._added:
            subprocess.run(["ip", "addr", "del", f"{a}/32", "dev", "lo"], capture_output=True)
        self._added = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
