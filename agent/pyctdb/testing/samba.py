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
    removes the addresses it added.

    In a lab of namespaces (pyctdb.testing.netns, bench/ctdblab.py): ``wrap(pnn, argv)``
    gives the argv that runs ``argv`` on node pnn (``lab.exec_argv(lab.host_ns(pnn), argv)``
    for a pyctdbd in a host namespace, ``CtdbLab.in_node`` for a ctdbd, whose smbd must
    share its mount namespace: CTDB's volatile databases are in it); the addresses are the
    hosts' own then, none is added, and smbd's readiness and :meth:`run` (pdbedit, net,
    smbcontrol) go through ``wrap`` too. ``bind_all``: smbd listens on every address of its
    host (``bind interfaces only = no``), the public addresses a node takes over included."""

    def __init__(self, base, addresses, sockets, port=4450, share=None, extra="", wrap=None,
                 bind_all=False, log_level=1):
        self.base = base
        self.addresses = list(addresses)
        self.sockets = list(sockets)
        self.port = port
        self.share = share or os.path.join(base, "share")
        self.extra = extra
        self.wrap = wrap or (lambda pnn, argv: list(argv))
        self.in_lab = wrap is not None
        self.bind_all = bind_all
        self.log_level = log_level
        self.smb = {}
        self.pids = {}
        self._procs = []
        self._added = []

    def _conf(self, pnn):
        return write_smb_conf(os.path.join(self.base, f"samba{pnn}"), self.sockets[pnn], f"""\
netbios name = PYCTDB
server role = standalone server
interfaces = {self.addresses[pnn]}
bind interfaces only = {"no" if self.bind_all else "yes"}
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
        for a in ([] if self.in_lab else self.addresses):
            r = subprocess.run(["ip", "addr", "add", f"{a}/32", "dev", "lo"],
                               capture_output=True, text=True)
            if r.returncode == 0:
                self._added.append(a)
        self._procs = [None] * len(self.addresses)
        deadline = time.monotonic() + timeout
        # In a lab one after the other: smbds of a real CTDB started at once can fail
        # their start (smbd_claim_version: g_lock_lock NT_STATUS_POSSIBLE_DEADLOCK)
        waves = ([[p] for p in range(len(self.addresses))] if self.in_lab
                 else [list(range(len(self.addresses)))])
        for wave in waves:
            for p in wave:
                self.smb[p] = self._conf(p)
                self.start_node(p)
            self.wait_listening(wave, deadline)
        return self

    def wait_listening(self, pnns, deadline):
        while not all(self.listening(p) for p in pnns):
            dead = [p for p in pnns if self._procs[p].poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"smbd not listening on {self.addresses} port "
                                   f"{self.port} (exited: {dead}):\n" + self._outputs())
            time.sleep(0.1)

    def start_node(self, pnn):
        """Start node pnn's smbd (again)."""
        with open(os.path.join(self.base, f"smbd{pnn}.out"), "a") as out:
            pr = subprocess.Popen(
                self.wrap(pnn, ["smbd", "--foreground", "--no-process-group", "--debug-stdout",
                                "-d", str(self.log_level), "-s", self.smb[pnn]]),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        self._procs[pnn] = pr
        self.pids[pnn] = pr.pid
        return pr

    def listening(self, pnn):
        """Node pnn's smbd accepts connections on its address."""
        a = self.addresses[pnn]
        if not self.in_lab:
            try:
                socket.create_connection((a, self.port), timeout=0.5).close()
                return True
            except OSError:
                return False
        r = self.run(pnn, ["ss", "-Hltn", f"sport = :{self.port}"], check=False)
        return any(f" {a}:{self.port} " in f" {line} " or f" 0.0.0.0:{self.port} " in
                   f" {line} " for line in r.stdout.splitlines())

    def run(self, pnn, argv, input=None, check=True, timeout=120):
        """``argv`` (a Samba tool: pdbedit, net, smbcontrol...) run on node pnn."""
        r = subprocess.run(self.wrap(pnn, argv), input=input, capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} on node {pnn}: rc {r.returncode}: "
                               f"{r.stderr.strip() or r.stdout.strip()}")
        return r

    def kill(self, pnn, sig=signal.SIGKILL):
        """Signal node pnn's smbd and its children (its process group)."""
        pr = self._procs[pnn]
        try:
            os.killpg(pr.pid, sig)
        except ProcessLookupError:
            pass
        if sig == signal.SIGKILL:
            pr.wait(10)

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
        self._procs = [pr for pr in self._procs if pr is not None]
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
