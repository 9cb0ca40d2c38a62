"""Real CTDB (Samba's ctdbd, Debian's ctdb package) in a NetnsLab: one ctdbd per host namespace.

    lab = NetnsLab(3).create()
    with CtdbLab(lab, "/tmp/x", public_addresses=[lab.public_address(j) for j in range(6)]) as c:
        c.start()                       # every node OK, every address hosted
        c.ctdb(0, "moveip", addr, "1")  # the ctdb tool, talking to node 0's ctdbd
        c.kill(1); c.start_node(1)

ctdbd runs as installed, with its compiled-in paths (/etc/ctdb, /run/ctdb, /var/lib/ctdb),
each node in a private mount namespace of its own (inside the host's network namespace)
where those three are bind mounts of the node's directories:

    DIR/nodeN/etc   -> /etc/ctdb      ctdb.conf, nodes, public_addresses, ctdb.tunables,
                                      Debian's functions, script.options, ..., and the
                                      enabled event scripts (events/legacy/*.script)
    DIR/nodeN/run   -> /run           ctdb/ctdbd.socket, pid files, eventd's socket
    DIR/nodeN/var   -> /var/lib/ctdb  databases, scripts' state

Samba's ctdb/tests/local_daemons.sh runs several daemons on one host with CTDB_TEST_MODE
instead, which takes every path from CTDB_BASE; but in 4.17 test mode also turns off the
check of which public addresses the kernel really holds (do_checkpublicip, ctdbd.c), so
ctdbd takes addresses it holds again and its takeover runs fail ("Address already
assigned"). With the mount namespaces, nothing of CTDB's behaviour changes.

The event scripts are Debian's stock ones, enabled as a CTDB user does it (`ctdb event
script enable legacy 10.interface`, a link to /usr/share/ctdb/events/legacy/): 00.ctdb,
01.reclock, 05.system and 10.interface, the set Debian's package enables. 10.interface
adds and removes the public addresses on the namespace's eth0 with `ip` and blocks a
released address with iptables (inside the namespace only); ctdbd itself sends the
gratuitous ARPs. The cluster lock is an fcntl lock on a file of DIR/shared, which every
node sees (one kernel: coherent POSIX locks), through Debian's ctdb_mutex_fcntl_helper.
`realtime scheduling` is off by default, as in containers without CAP_SYS_NICE.

Every ctdbd runs in the foreground (`--interactive`: it logs to DIR/nodeN/log.ctdb) in a
session of its own. stop_all() and close() end each one (SIGTERM: ctdbd runs its shutdown
event, which drops its addresses), then SIGKILL its process group and every process in
the lab's namespaces whose environment carries this lab's mark (event daemon, recovery
daemon, lock helpers, event scripts). Nothing else is touched; nothing is written
outside DIR. Needs root, iproute2 and util-linux (unshare, nsenter).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time

CTDBD = "/usr/sbin/ctdbd"
CTDB = "/usr/bin/ctdb"
HELPERS = "/usr/libexec/ctdb"
SHARE = "/usr/share/ctdb"
ETC = "/etc/ctdb"
#: Debian's default set of enabled event scripts
SCRIPTS = ("00.ctdb", "01.reclock", "05.system", "10.interface")


def available():
    """Why this host cannot run the lab, or None."""
    for p in (CTDBD, CTDB, os.path.join(HELPERS, "ctdb-eventd"),
              os.path.join(SHARE, "events/legacy/10.interface.script"),
              os.path.join(ETC, "functions")):
        if not os.path.exists(p):
            return f"{p} missing (apt-get install ctdb)"
    if os.geteuid() != 0:
        return "needs root"
    return None


class CtdbLab:
    def __init__(self, lab, workdir, public_addresses, *, log_level="NOTICE", realtime=False,
                 tunables=None, scripts=SCRIPTS):
        """lab: a created NetnsLab; public_addresses: addresses (no prefix) every node may
        host on eth0; realtime: ctdbd's `realtime scheduling` (False as in containers,
        which have no CAP_SYS_NICE; the agents of pyctdb are not real-time either);
        tunables: {name: value} for NODE/etc/ctdb.tunables."""
        self.lab = lab
        self.n = lab.hosts
        self.dir = os.path.abspath(workdir)
        self.pubs = list(public_addresses)
        self.log_level = log_level
        self.realtime = realtime
        self.tunables = dict(tunables or {})
        self.scripts = scripts
        self.procs = {}
        self.logs = {}
        os.makedirs(self.dir, exist_ok=True)
        self.shared = os.path.join(self.dir, "shared")
        os.makedirs(self.shared, exist_ok=True)
        for i in range(self.n):
            self._write_node(i)

    # -- layout ---------------------------------------------------------------------

    def node_dir(self, pnn):
        return os.path.join(self.dir, f"node{pnn}")

    def base(self, pnn):
        """The node's /etc/ctdb."""
        return os.path.join(self.node_dir(pnn), "etc")

    def log_file(self, pnn):
        """ctdbd's log (in the foreground, ctdbd and its helpers log to stderr)."""
        return os.path.join(self.node_dir(pnn), "log.ctdb")

    @property
    def lock_file(self):
        return os.path.join(self.shared, "cluster.lock")

    def env(self, pnn):
        e = {k: v for k, v in os.environ.items() if not k.startswith("CTDB")}
        e.update({
            "CTDB_LAB_DIR": self.dir,  # how teardown recognises this lab's processes
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        })
        return e

    def in_node(self, pnn, argv):
        """argv run in host pnn's network namespace and a new private mount namespace
        where the node's directories are /etc/ctdb, /run and /var/lib/ctdb."""
        nd = self.node_dir(pnn)
        mounts = " && ".join(f"mount --bind {shlex.quote(os.path.join(nd, src))} {dst}"
                             for src, dst in (("etc", ETC), ("run", "/run"),
                                              ("var", "/var/lib/ctdb")))
        return self.lab.exec_argv(self.lab.host_ns(pnn), [
            "unshare", "--mount", "--propagation", "private", "sh", "-c",
            f"{mounts} && exec \"$@\"", "ctdblab", *map(str, argv)])

    def _write_node(self, pnn):
        base, node = self.base(pnn), self.node_dir(pnn)
        if not os.path.isdir(base):
            # Debian's /etc/ctdb (functions, script.options, notify.sh, nfs-checks.d, ...)
            # but for what this lab writes and the links of the enabled scripts
            shutil.copytree(ETC, base, symlinks=True)
            legacy = os.path.join(base, "events", "legacy")
            for f in os.listdir(legacy):
                os.unlink(os.path.join(legacy, f))
        for d in ("run/ctdb", "var/volatile", "var/persistent", "var/state", "var/scripts"):
            os.makedirs(os.path.join(node, d), exist_ok=True)
        with open(os.path.join(base, "nodes"), "w") as f:
            f.write("".join(f"{self.lab.host_address(i)}\n" for i in range(self.n)))
        with open(os.path.join(base, "public_addresses"), "w") as f:
            f.write("".join(f"{a}/{self.lab.prefix} {self.lab.iface}\n" for a in self.pubs))
        with open(os.path.join(base, "ctdb.conf"), "w") as f:
            f.write(f"""\
[logging]
	log level = {self.log_level}

[cluster]
	cluster lock = {self.lock_file}

[legacy]
	realtime scheduling = {"true" if self.realtime else "false"}
""")
        with open(os.path.join(base, "ctdb.tunables"), "w") as f:
            f.write("".join(f"{k}={v}\n" for k, v in self.tunables.items()))
        for s in self.scripts:
            if not os.path.lexists(os.path.join(base, "events", "legacy", f"{s}.script")):
                r = subprocess.run(self.in_node(pnn, [CTDB, "event", "script", "enable",
                                                      "legacy", s]),
                                   env=self.env(pnn), capture_output=True, text=True)
                if r.returncode != 0:
                    raise RuntimeError(f"ctdb event script enable legacy {s}: "
                                       f"{r.stderr.strip() or r.stdout.strip()}")

    # -- processes ------------------------------------------------------------------

    def start(self, timeout=90):
        """Start every node; wait until all are OK and every address is hosted once."""
        for i in range(self.n):
            self.start_node(i)
        self.wait_healthy(timeout)
        return self

    def start_node(self, pnn):
        """ctdbd of pnn, in the foreground (ip, unshare and sh exec it: same pid)."""
        if pnn in self.logs:
            self.logs.pop(pnn).close()
        self.logs[pnn] = open(self.log_file(pnn), "ab")
        self.procs[pnn] = subprocess.Popen(
            self.in_node(pnn, [CTDBD, "--interactive"]),
            env=self.env(pnn), stdin=subprocess.DEVNULL, stdout=self.logs[pnn],
            stderr=subprocess.STDOUT, start_new_session=True)

    def running(self, pnn):
        p = self.procs.get(pnn)
        return p is not None and p.poll() is None

    def kill(self, pnn, sig=signal.SIGKILL):
        """Signal ctdbd of pnn (SIGKILL: then reap it and SIGKILL its helpers)."""
        p = self.procs[pnn]
        if p.poll() is None:
            os.kill(p.pid, sig)
        if sig == signal.SIGKILL:
            p.wait()
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self._kill_leftovers(pnn)

    def stop(self, pnn, timeout=30):
        """`ctdb shutdown` (as systemd's ExecStop does); SIGKILL if it hangs."""
        if not self.running(pnn):
            return
        self.ctdb(pnn, "shutdown", timeout=timeout, check=False)
        try:
            self.procs[pnn].wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self._end(pnn)

    def _end(self, pnn):
        p = self.procs.get(pnn)
        if p is not None:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                    p.wait(10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if p.poll() is None:
                p.kill()
            p.wait()
        self._kill_leftovers(pnn)
        f = self.logs.pop(pnn, None)
        if f:
            f.close()

    def _kill_leftovers(self, pnn):
        """SIGKILL every process in pnn's namespace whose environment is this lab's."""
        mark = f"CTDB_LAB_DIR={self.dir}".encode()
        for pid in self.lab.pids(pnn):
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if mark in f.read().split(b"\0"):
                        os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError):
                pass

    def stop_all(self):
        for pnn in list(self.procs):
            try:
                self._end(pnn)
            except Exception:  # noqa: BLE001 - teardown goes on
                pass
        self.procs.clear()

    def close(self, remove=True):
        """Stop every node; remove the lab's directory unless remove is False."""
        try:
            self.stop_all()
            for pnn in range(self.n):
                self._kill_leftovers(pnn)
        finally:
            if remove:
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the ctdb tool ----------------------------------------------------------------

    def ctdb_argv(self, pnn, *args):
        """The ctdb tool in the namespaces (network, mount) of pnn's running ctdbd."""
        return ["nsenter", "--target", str(self.procs[pnn].pid), "--mount", "--net",
                CTDB, *map(str, args)]

    def ctdb(self, pnn, *args, timeout=30, check=True):
        if not self.running(pnn):
            raise RuntimeError(f"ctdb {' '.join(map(str, args))}: node {pnn} not running")
        r = subprocess.run(self.ctdb_argv(pnn, *args), env=self.env(pnn), capture_output=True,
                           text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"ctdb {' '.join(map(str, args))} on node {pnn}: "
                               f"rc {r.returncode}: {r.stderr.strip() or r.stdout.strip()}")
        return r

    def leader(self, pnn=0):
        """The PNN of the leader (recovery master), asked of node pnn (`ctdb leader`)."""
        return int(self.ctdb(pnn, "leader").stdout.strip())

    def ip_all(self, pnn=0):
        """{address: pnn} as CTDB sees it (`ctdb -X ip all`), -1 when unhosted."""
        out = self.ctdb(pnn, "-X", "ip", "all").stdout
        res = {}
        for line in out.splitlines()[1:]:
            f = line.strip("|").split("|")
            if len(f) >= 2:
                res[f[0]] = int(f[1])
        return res

    def wait_for(self, cond, timeout, interval=0.1, what="condition"):
        end = time.monotonic() + timeout
        while True:
            try:
                if cond():
                    return
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            if time.monotonic() > end:
                raise TimeoutError(f"ctdblab: {what} not reached in {timeout} s "
                                   f"(logs: {self.dir}/node*/log.ctdb)")
            time.sleep(interval)

    def healthy(self, pnns=None):
        """Every node of pnns (default: all) OK, as node pnns[0] sees it."""
        pnns = list(range(self.n)) if pnns is None else list(pnns)
        r = self.ctdb(pnns[0], "-X", "nodestatus", "all", check=False)
        ok = set()
        for line in r.stdout.splitlines()[1:]:
            f = line.strip("|").split("|")
            # |Node|IP|Disconnected|Unknown|Banned|Disabled|Unhealthy|Stopped|Inactive|...
            if len(f) >= 9 and all(x == "0" for x in f[2:9]):
                ok.add(int(f[0]))
        return set(pnns) <= ok

    def wait_healthy(self, timeout=90, pnns=None):
        pnns = list(range(self.n)) if pnns is None else list(pnns)

        def ok():
            dead = [p for p in pnns if not self.running(p)]
            if dead:
                raise ChildProcessError(f"ctdblab: ctdbd of node(s) {dead} exited (logs: "
                                        f"{self.dir}/node*/log.ctdb)")
            return self.healthy(pnns) and all(p >= 0 for p in self.ip_all(pnns[0]).values())
        self.wait_for(ok, timeout, 0.2, "every node OK and every address hosted")
