"""Run N real pyctdbd agents on one machine, on 127.0.X.Y loopback addresses.

Like CTDB's "local daemons" test mode: each agent gets its own config directory, API
socket, log file and loopback address, and they share a cluster lock file. Used by the
integration tests, the module tests and the benchmarks::

    from pyctdb.testing.localcluster import LocalCluster

    with LocalCluster(3, base_dir=tmp_path) as c:
        c.start()
        c.wait_healthy(timeout=10)
        print(c.status(0)["leader"])
        c.kill(0)                     # SIGKILL the agent of node 0
        c.wait_for(lambda: c.leader_of(1) not in (None, 0), timeout=10)
        c.start_node(0)

The agents run with an authenticated transport: a random key is written to every
node's ``cluster.key`` (``key=None``: no key, the transport of a cluster without one).

Also a command: ``python -m pyctdb.testing.localcluster --nodes 3 DIR`` starts a cluster
in DIR and keeps it running until interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from pyctdb.client.connection import AgentUnavailable, ApiCallError, Client
from pyctdb.protocol import auth
from pyctdb.protocol import frames

AGENT_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


#: ``LocalCluster(key=GENERATE)``: a random transport key (the default)
GENERATE = "generate"


def _free_port(host):
    for _ in range(200):
        port = random.randint(20000, 60000)
        s = socket.socket()
        try:
            s.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free port found")


class PeerSocket:
    """A connection to an agent's node port made as node ``pnn`` would make it (tests of
    what an agent accepts from a peer): :meth:`send` seals each frame when the
    connection is authenticated."""

    def __init__(self, sock, sealer, challenge=None, handshake=b""):
        self.sock = sock
        self.sealer = sealer
        #: the CHALLENGE payload the agent answered (authenticated)
        self.challenge = challenge
        #: the bytes this side sent in the handshake, and every byte sent after it (to
        #: replay them)
        self.handshake = handshake
        self.sent = b""

    def seal(self, frame: bytes) -> bytes:
        return frame if self.sealer is None else self.sealer.seal(frame)

    def send(self, frame: bytes) -> bytes:
        data = self.seal(frame)
        self.sock.sendall(data)
        self.sent += data
        return data

    def close(self):
        self.sock.close()


def _recv_frame(sock, versions=(frames.VERSION_AUTH,)):
    def exactly(n):
        buf = b""
        while len(buf) < n:
            part = sock.recv(n - len(buf))
            if not part:
                raise ConnectionError("closed during the handshake")
            buf += part
        return buf
    version, mtype, length = frames.decode_header(exactly(frames.HEADER_SIZE), 4096,
                                                  versions)
    return frames.Frame(version, mtype, frames.decode_payload(exactly(length)))


def peer_connect(address, port, *, pnn, to, source, digest, key=None, instance="fake-instance",
                 key_id=None, check=True):
    """Connect to ``address:port`` from ``source`` as node ``pnn`` would connect to node
    ``to`` (``digest``: the nodes list's), with ``key`` (bytes: the authenticated
    handshake; None: a version 1 HELLO). ``key_id``: claim another key's id; ``check``:
    False sends the PROOF even when the agent's proof is wrong for ``key``. A
    :class:`PeerSocket`; ConnectionError when the agent closes the connection during the
    handshake."""
    sock = socket.create_connection((address, port), timeout=5, source_address=(source, 0))
    hello = {"pnn": pnn, "address": source, "instance": instance, "nodes_digest": digest,
             "agent_version": "test"}
    if key is None:
        sock.sendall(frames.encode(frames.MsgType.HELLO, hello))
        return PeerSocket(sock, None)
    nc = auth.new_nonce()
    first = frames.encode(frames.MsgType.HELLO, {
        **hello, "key_id": key_id or auth.key_id(key), "nonce": nc.hex()},
        version=frames.VERSION_AUTH)
    sock.sendall(first)
    try:
        ch = _recv_frame(sock)
    except (ConnectionError, OSError):
        sock.close()
        raise ConnectionError("the agent closed the connection after the HELLO") from None
    ns = bytes.fromhex(ch.payload["nonce"])
    if check and not auth.same(bytes.fromhex(ch.payload["proof"]),
                               auth.accept_proof(key, nc, ns, pnn, to)):
        sock.close()
        raise ConnectionError("the agent's proof is wrong")
    second = frames.encode(frames.MsgType.PROOF, {
        "pnn": pnn, "proof": auth.connect_proof(key, nc, ns, pnn, to).hex()},
        version=frames.VERSION_AUTH)
    sock.sendall(second)
    return PeerSocket(sock, auth.Sealer(auth.session_key(key, nc, ns, pnn, to)), ch.payload,
                      first + second)


class PeerListener:
    """A listener in node ``pnn``'s place (``address:port``, its agent stopped) that
    accepts the agents' connections as that node would, with ``key`` (None: a version 1
    HELLO is expected), and discards what they send: with :func:`peer_connect`, a test
    brings a link up as node ``pnn``. ``accepted``: the PNNs whose handshake passed."""

    def __init__(self, address, port, pnn, key=None):
        self.pnn = pnn
        self.key = key
        self.accepted = []
        self._server = socket.create_server((address, port))
        self._server.settimeout(0.2)
        self._conns = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except (socket.timeout, OSError):
                continue
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            conn.settimeout(5)
            if self.key is None:
                hello = _recv_frame(conn, (frames.VERSION_PLAIN,))
            else:
                hello = _recv_frame(conn)
                caller = hello.payload["pnn"]
                nc = bytes.fromhex(hello.payload["nonce"])
                ns = auth.new_nonce()
                conn.sendall(frames.encode(frames.MsgType.CHALLENGE, {
                    "pnn": self.pnn, "nonce": ns.hex(),
                    "proof": auth.accept_proof(self.key, nc, ns, caller, self.pnn).hex()},
                    version=frames.VERSION_AUTH))
                proof = _recv_frame(conn)
                if not auth.same(bytes.fromhex(proof.payload["proof"]), auth.connect_proof(
                        self.key, nc, ns, caller, self.pnn)):
                    return
            self.accepted.append(hello.payload["pnn"])
            conn.settimeout(None)
            while conn.recv(65536):
                pass
        except (OSError, ValueError, KeyError, frames.ProtocolError):
            pass
        finally:
            conn.close()

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self._server.close()
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()


class LocalCluster:
    def __init__(self, n, base_dir=None, *, lock=True, tunables=None, conf_extra=None,
                 deleted=(), log_level="INFO", subnet=None, port=None, python=None,
                 lab=None, public_addresses=None, key=GENERATE, layout="pyctdb"):
        """``n`` nodes (PNN 0..n-1); PNNs in ``deleted`` are written as ``#`` lines.
        ``conf_extra``: extra pyctdb.conf text, either one string for all nodes or a
        {pnn: str} dict. ``tunables``: {NAME: value} written to every node's tunables file.
        ``lab``: a :class:`pyctdb.testing.netns.NetnsLab`; node i then runs in the lab's
        host namespace i with its address. ``public_addresses``: public_addresses file
        text, one string for all nodes or a {pnn: str} dict. ``key``: the transport key
        of every node (bytes), written as hex to its ``cluster.key`` (mode 0600); a str
        is written as the file's text; a {pnn: bytes, str or None} dict gives each node
        its own; None: no key file (an unauthenticated transport). By default a random
        32-byte key (:attr:`key`). ``layout``: "ctdb" writes CTDB's file names
        (``ctdb.conf``, ``ctdb.tunables``) instead of pyctdb's."""
        if layout not in ("pyctdb", "ctdb"):
            raise ValueError(f"layout must be pyctdb or ctdb, not {layout!r}")
        self.layout = layout
        self.key = secrets.token_bytes(32) if key == GENERATE else key
        self.lab = lab
        self.public_addresses = public_addresses
        self.n = n
        self._own_dir = base_dir is None
        self.base_dir = str(base_dir or tempfile.mkdtemp(prefix="pyctdb-local-"))
        self.lock = lock
        self.tunables = dict(tunables or {})
        self.conf_extra = conf_extra or ""
        self.deleted = set(deleted)
        self.log_level = log_level
        self.subnet = subnet if subnet is not None else random.randint(20, 250)
        self.port = port or (4379 if lab is not None else _free_port(self.address(0)))
        self.python = python or sys.executable
        self.procs = {}
        self.write_config()

    # -- layout --------------------------------------------------------------------------
    def address(self, pnn):
        if self.lab is not None:
            return self.lab.host_address(pnn)
        return f"127.0.{self.subnet}.{pnn + 1}"

    def node_dir(self, pnn):
        return os.path.join(self.base_dir, f"node{pnn}")

    def config_dir(self, pnn):
        return os.path.join(self.node_dir(pnn), "etc")

    def socket(self, pnn):
        return os.path.join(self.node_dir(pnn), "pyctdbd.socket")

    def config_copy(self, pnn, dest):
        """A copy of node ``pnn``'s configuration directory at ``dest`` whose database
        directories are its own (under ``dest``): a second agent started on it is not
        refused for node ``pnn``'s running agent holding them. Returns ``dest``."""
        shutil.copytree(self.config_dir(pnn), dest, symlinks=True)
        conf = os.path.join(dest, self.conf_name)
        with open(conf) as f:
            text = f.read()
        with open(conf, "w") as f:
            f.write(text.replace(os.path.join(self.node_dir(pnn), "db"),
                                 os.path.join(str(dest), "db")))
        return str(dest)

    @property
    def conf_name(self):
        """The configuration file's name: ``pyctdb.conf``, or CTDB's ``ctdb.conf``."""
        return f"{self.layout}.conf"

    def ctdb_socket(self, pnn):
        """Node ``pnn``'s CTDB socket (CTDB's client protocol: CTDB_SOCKET for ctdb)."""
        return os.path.join(self.node_dir(pnn), "ctdbd.socket")

    def event_script(self, pnn, name, text):
        """Install an enabled legacy event script ``events/legacy/NAME.script`` (CTDB's
        layout) with the shell ``text`` on node ``pnn``; scripts are looked up at each
        event, so this works on a running agent too."""
        d = os.path.join(self.config_dir(pnn), "events", "legacy")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"{name}.script")
        with open(path, "w") as f:
            f.write("#!/bin/sh\n" + text)
        os.chmod(path, 0o755)
        return path

    def log_file(self, pnn):
        return os.path.join(self.node_dir(pnn), "log.pyctdb")

    @property
    def lock_file(self):
        return os.path.join(self.base_dir, "shared", "cluster.lock")

    def nodes_text(self):
        return "".join(("#" + self.address(p) if p in self.deleted else self.address(p))
                       + "\n" for p in range(self.n))

    def write_config(self):
        os.makedirs(os.path.dirname(self.lock_file), exist_ok=True)
        for pnn in range(self.n):
            etc = self.config_dir(pnn)
            os.makedirs(etc, exist_ok=True)
            with open(os.path.join(etc, "nodes"), "w") as f:
                f.write(self.nodes_text())
            extra = (self.conf_extra.get(pnn, "") if isinstance(self.conf_extra, dict)
                     else self.conf_extra)
            d = self.node_dir(pnn)
            conf = [
                "[logging]", f"location = file:{self.log_file(pnn)}",
                f"log level = {self.log_level}", "",
                "[cluster]", f"node address = {self.address(pnn)}", f"port = {self.port}",
            ]
            if self.lock:
                conf.append(f"cluster lock = {self.lock_file}")
            conf += ["", "[database]",
                     f"volatile database directory = {d}/db/volatile",
                     f"persistent database directory = {d}/db/persistent",
                     f"state database directory = {d}/db/state", ""]
            with open(os.path.join(etc, self.conf_name), "w") as f:
                f.write("\n".join(conf) + "\n" + extra)
            pa = (self.public_addresses.get(pnn) if isinstance(self.public_addresses, dict)
                  else self.public_addresses)
            pa_path = os.path.join(etc, "public_addresses")
            if pa:
                with open(pa_path, "w") as f:
                    f.write(pa)
            elif os.path.exists(pa_path):
                os.unlink(pa_path)
            with open(os.path.join(etc, f"{self.layout}.tunables"), "w") as f:
                for k, v in self.tunables.items():
                    f.write(f"{k}={v}\n")
            self.write_key(pnn, self.key.get(pnn) if isinstance(self.key, dict) else self.key)

    def key_file(self, pnn):
        return os.path.join(self.config_dir(pnn), "cluster.key")

    def write_key(self, pnn, key):
        """Write node ``pnn``'s transport key file (``key``: bytes, written as hex; str,
        the file's text; None: remove it). A running agent reads a changed file at its
        next handshake (a rotation); adding or removing it takes a restart."""
        path = self.key_file(pnn)
        if key is None:
            if os.path.exists(path):
                os.unlink(path)
            return
        text = key.hex() + "\n" if isinstance(key, bytes) else key
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)

    # -- processes -----------------------------------------------------------------------
    def start(self, pnns=None):
        for pnn in (range(self.n) if pnns is None else pnns):
            if pnn not in self.deleted:
                self.start_node(pnn)
        return self

    def start_node(self, pnn):
        if self.running(pnn):
            return
        env = dict(os.environ)
        env["PYTHONPATH"] = AGENT_DIR + (os.pathsep + env["PYTHONPATH"]
                                         if env.get("PYTHONPATH") else "")
        env.pop("NOTIFY_SOCKET", None)
        out = open(os.path.join(self.node_dir(pnn), "stderr.log"), "ab")
        argv = [self.python, "-m", "pyctdb.server.daemon", "--config-dir", self.config_dir(pnn),
                "--socket", self.socket(pnn), "--ctdb-socket", self.ctdb_socket(pnn)]
        if self.lab is not None:
            argv = self.lab.exec_argv(self.lab.host_ns(pnn), argv)
        self.procs[pnn] = subprocess.Popen(
            argv,
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        out.close()

    def running(self, pnn):
        p = self.procs.get(pnn)
        return p is not None and p.poll() is None

    def kill(self, pnn, sig=signal.SIGKILL, wait=True):
        p = self.procs.get(pnn)
        if p is None or p.poll() is not None:
            return
        p.send_signal(sig)
        if wait:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop(self, pnn):
        """Stop one agent cleanly (SIGTERM)."""
        self.kill(pnn, signal.SIGTERM)

    def guard_pid(self, pnn):
        """The pid of the agent's guard process (pyctdb.server.guard), or None."""
        p = self.procs.get(pnn)
        if p is None or p.poll() is not None:
            return None
        try:
            with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
                children = [int(x) for x in f.read().split()]
        except OSError:
            return None
        for child in children:
            try:
                with open(f"/proc/{child}/cmdline", "rb") as f:
                    if b"pyctdb.server.guard" in f.read():
                        return child
            except OSError:
                continue
        return None

    def pause(self, pnn):
        """SIGSTOP: the agent goes silent without its connections breaking."""
        self.kill(pnn, signal.SIGSTOP, wait=False)

    def resume(self, pnn):
        self.kill(pnn, signal.SIGCONT, wait=False)

    def stop_all(self):
        for pnn, p in list(self.procs.items()):
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    @classmethod
    @contextlib.contextmanager
    def healthy_cluster(cls, n, base_dir, timeout=30.0, **kw):
        """``with LocalCluster.healthy_cluster(3, tmp) as c:`` n agents, started and
        healthy; all stopped at the end."""
        with cls(n, base_dir=base_dir, **kw) as c:
            c.start()
            c.wait_healthy(timeout)
            yield c

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop_all()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    # -- queries -------------------------------------------------------------------------
    def call(self, pnn, command, /, timeout=5.0, **args):
        with Client(self.socket(pnn), timeout=timeout) as c:
            return c.call(command, **args)

    def status(self, pnn):
        return self.call(pnn, "status")

    def try_status(self, pnn):
        try:
            return self.status(pnn)
        except (AgentUnavailable, ApiCallError, OSError, ValueError):
            return None

    def leader_of(self, pnn):
        st = self.try_status(pnn)
        return st["leader"] if st else None

    def cli_env(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = AGENT_DIR + (os.pathsep + env["PYTHONPATH"]
                                         if env.get("PYTHONPATH") else "")
        return env

    def cli_argv(self, pnn, *args):
        """The command line of ``pyctdb ARGS`` on node ``pnn`` (for a Popen)."""
        return [self.python, "-m", "pyctdb.tools.cli", "--socket", self.socket(pnn), *args]

    def cli(self, pnn, *args, check=False):
        return subprocess.run(self.cli_argv(pnn, *args), capture_output=True, text=True,
                              env=self.cli_env(), check=check)

    def cli_ok(self, pnn, *args):
        """``pyctdb ARGS`` on node ``pnn``, which must succeed; its standard output."""
        r = self.cli(pnn, *args)
        assert r.returncode == 0, (args, r.stdout, r.stderr, self.log(pnn)[-3000:])
        return r.stdout

    def peer_connect(self, src, dst, digest, *, key=GENERATE, **kw):
        """Connect to node ``dst``'s agent from node ``src``'s address as node ``src``
        would (node ``src``'s agent should be stopped), with this cluster's key (or
        ``key``): a :class:`PeerSocket`."""
        if key == GENERATE:
            key = self.key.get(src) if isinstance(self.key, dict) else self.key
        if isinstance(key, str):
            key = bytes.fromhex(key.split()[0])
        return peer_connect(self.address(dst), self.port, pnn=src, to=dst,
                            source=self.address(src), digest=digest, key=key, **kw)

    def peer_listen(self, pnn, *, key=GENERATE):
        """A :class:`PeerListener` in node ``pnn``'s place (its agent stopped), with this
        cluster's key (or ``key``)."""
        if key == GENERATE:
            key = self.key.get(pnn) if isinstance(self.key, dict) else self.key
        if isinstance(key, str):
            key = bytes.fromhex(key.split()[0])
        return PeerListener(self.address(pnn), self.port, pnn, key)

    def log(self, pnn):
        try:
            with open(self.log_file(pnn)) as f:
                return f.read()
        except OSError:
            return ""

    def wait_for(self, predicate, timeout=10.0, interval=0.02, what="condition"):
        deadline = time.monotonic() + timeout
        while True:
            try:
                if predicate():
                    return True
            except (AgentUnavailable, ApiCallError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}\n"
                                   + self.describe())
            time.sleep(interval)

    def healthy(self, pnns=None):
        """Every given running node reports every active node OK and the same leader."""
        pnns = [p for p in (range(self.n) if pnns is None else pnns) if p not in self.deleted]
        leaders = set()
        for p in pnns:
            st = self.try_status(p)
            if not st or not st["healthy"]:
                return False
            ok = [n for n in st["nodes"] if n["state"] == "OK"]
            if len(ok) != self.n - len(self.deleted):
                return False
            leaders.add(st["leader"])
        return len(leaders) == 1 and None not in leaders

    def wait_healthy(self, timeout=30.0, pnns=None):
        return self.wait_for(lambda: self.healthy(pnns), timeout, what="a healthy cluster")

    def describe(self):
        out = []
        for p in range(self.n):
            st = self.try_status(p)
            if st is None:
                out.append(f"node {p}: no answer (running={self.running(p)})")
            else:
                out.append(f"node {p}: leader={st['leader']} gen={st['generation']} "
                           f"recmode={st['recovery_mode']} nodes="
                           + ",".join(f"{n['pnn']}:{n['state']}" for n in st["nodes"]))
        for p in range(self.n):  # (what each agent said last: why it is so)
            tail = self.log(p).splitlines()[-12:]
            if tail:
                out.append(f"node {p}'s log, last lines:")
                out += ["  " + ln for ln in tail]
        return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description="run N local pyctdbd agents")
    ap.add_argument("dir")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--no-lock", action="store_true")
    ap.add_argument("--no-key", action="store_true",
                    help="no transport key: an unauthenticated transport")
    a = ap.parse_args(argv)
    c = LocalCluster(a.nodes, base_dir=a.dir, lock=not a.no_lock,
                     key=None if a.no_key else GENERATE)
    c.start()
    try:
        c.wait_healthy(60)
        print(c.describe())
        for p in range(a.nodes):
            print(f"node {p}: pyctdb --socket {c.socket(p)} status")
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        c.stop_all()


if __name__ == "__main__":
    main()
