"""The node's guard: a small process beside the agent that fences the node when the agent
cannot (address fencing, see docs/architecture.md).

The agent cannot drop its public addresses when it is killed, and cannot drop them, nor
let go of the cluster lock, while it is paused (SIGSTOP) or wedged. The guard can:

* it holds a duplicate of every socket of the agent's node-to-node links, so a killed
  agent's links do not close (no FIN) until the guard has removed the node's public
  addresses: a peer that sees a link end with a clean end of stream from a guarded node
  knows its addresses are gone, and takes them over at once;
* the agent gives it a **deadline** with every keepalive it sends (the time of the last
  frame it sent + KeepaliveInterval x KeepaliveLimit, after which the peers drop this
  node as silent) and the cluster lock helper's process. When the deadline passes, or the
  agent's end of the socket pair closes (it died), the guard removes every public
  address of the node (the ``public_addresses`` file's and those recorded as hosted, as
  ``pyctdbd --drop-public-ips`` does), kills the lock helper (the lock is free for the
  majority), and only then shuts the link sockets down (FIN) so that the peers see it.

The agent's deliberate closes of a link are resets (RST, ``SO_LINGER`` 0), never a clean
end of stream, so the peers never mistake them for the guard's.

Agent and guard speak over a ``SOCK_SEQPACKET`` socket pair: each message one JSON object
(at most :data:`MAX_MESSAGE` bytes) with ``"v": 1`` and an ``op``; link sockets and the
lock helper's pidfd travel as ``SCM_RIGHTS``. A malformed message is logged and ignored.

* agent -> guard: ``deadline`` {at: CLOCK_MONOTONIC seconds or null}; ``sock`` {pnn,
  dir} + the socket; ``unsock`` {pnn, dir}; ``lock`` {pid} + its pidfd (``pid`` null: no
  lock held); ``stop`` {drop} (a clean stop: drop the addresses first if asked, answer
  ``dropped``, exit).
* guard -> agent: ``dropped`` {addresses, why}.

Under systemd the guard runs in a transient scope unit of its own (``systemd-run
--scope``, :func:`scope_argv`), outside the agent's service cgroup: ``systemctl kill -s
KILL pyctdbd``, the OOM killer acting on the unit, or systemd killing the unit's cgroup
kill the agent but not its guard, which then fences at once (the unit's ExecStopPost
comes after, and finds nothing left to drop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import mmap
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

from pyctdb.protocol.fastpath import GATE_AT, WAIT_SIZE

log = logging.getLogger(__name__)

VERSION = 1
MAX_MESSAGE = 4096
#: the ``why`` of the guard's ``dropped`` answer to a clean ``stop``
STOPPING = "the agent stops"
MAX_FDS = 2
#: seconds the guard keeps shut-down link sockets open before closing them (closing
#: one with unread data sends a reset; the peers must see the end of stream first)
LINGER = 0.5
#: seconds a lock helper has to exit on SIGTERM before the guard kills it
LOCK_TERM_WAIT = 0.3


def _encode(op, **fields) -> bytes:
    return json.dumps({"v": VERSION, "op": op, **fields}).encode()


def _decode(data: bytes):
    """The message, or None (malformed: logged by the caller)."""
    if len(data) > MAX_MESSAGE:
        return None
    try:
        msg = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(msg, dict) or msg.get("v") != VERSION or not isinstance(
            msg.get("op"), str):
        return None
    return msg


# -- the agent's side ----------------------------------------------------------------------
#: seconds systemd waits, when it stops the guard's scope (the system shuts down), before
#: it sends SIGKILL: the guard ignores SIGTERM
SCOPE_STOP_TIMEOUT = 3


def scope_argv(agent_pid, environ=None, probe=True):
    """The command-line prefix that starts the guard in a systemd scope unit of its own
    (``systemd-run --scope``: it execs the guard in the same process, so the socket pair
    and the pid stay the agent's child's), or [] when the agent does not run under
    systemd (no ``INVOCATION_ID``, no /run/systemd/system) or systemd-run cannot make a
    scope here (``probe``: tried once with ``true``; its error logged)."""
    environ = os.environ if environ is None else environ
    exe = shutil.which("systemd-run")
    if not environ.get("INVOCATION_ID") or not os.path.isdir("/run/systemd/system") \
            or exe is None:
        return []
    argv = [exe, "--scope", "--quiet", "--collect",
            f"--description=pyctdb guard of pyctdbd (pid {agent_pid})",
            f"--property=TimeoutStopSec={SCOPE_STOP_TIMEOUT}"]
    if probe:
        try:
            r = subprocess.run(argv + ["true"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            r = None
            why = str(exc)
        else:
            why = r.stderr.strip() or f"exit status {r.returncode}"
        if r is None or r.returncode != 0:
            log.warning("the guard runs in the agent's own cgroup: systemd-run --scope "
                        "failed (%s); killing the unit kills the guard too, and then only "
                        "ExecStopPost drops the addresses", why)
            return []
    return argv

class Guard:
    """The agent's handle on its guard process: starts it, tells it the deadline, the
    link sockets and the lock helper, restarts it if it dies, and hands its
    ``dropped`` reports to ``on_dropped(addresses, why)``."""

    def __init__(self, argv, on_dropped):
        """``argv``: the guard's command line, without the socket's fd argument."""
        self.argv = list(argv)
        self.on_dropped = on_dropped
        self.proc = None
        self._sock = None
        self._socks = {}  # (pnn, dir) -> socket registered with the guard
        self._deadline = None
        self._lock_pid = None
        self._stopping = False
        self._stopped = None

    @property
    def running(self) -> bool:
        return self._sock is not None

    def start(self):
        """Start the guard process (in its own session: signals to the agent's process
        group do not reach it). Returns False (logged) if it cannot be started."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                self.argv + ["--fd", str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            log.error("cannot start the guard (%s): %s; a killed or paused agent's "
                      "addresses are not dropped", self.argv[0], exc)
            mine.close()
            return False
        finally:
            theirs.close()
        mine.setblocking(False)
        self._sock = mine
        asyncio.get_running_loop().add_reader(mine.fileno(), self._readable)
        for (pnn, direction), sock in list(self._socks.items()):
            self._send("sock", [sock.fileno()], pnn=pnn, dir=direction)
        if self._deadline is not None:
            self._send("deadline", at=self._deadline)
        if self._lock_pid is not None:
            self.lock_holder(self._lock_pid)
        log.info("guard started (pid %d)", self.proc.pid)
        return True

    def _send(self, op, fds=(), **fields):
        if self._sock is None:
            return False
        try:
            socket.send_fds(self._sock, [_encode(op, **fields)], list(fds))
            return True
        except (BlockingIOError, InterruptedError):
            log.error("guard: its socket is full; %s not sent", op)
        except OSError as exc:
            log.error("guard: cannot send %s: %s", op, exc)
            self._lost()
        return False

    def _readable(self):
        try:
            data, _fds, _flags, _addr = socket.recv_fds(self._sock, MAX_MESSAGE + 1, 0)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._lost()
            return
        msg = _decode(data)
        if msg is None or msg["op"] != "dropped" or not isinstance(
                msg.get("addresses"), list):
            log.warning("guard: ignoring a malformed message (%d bytes)", len(data))
            return
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(msg)
        self.on_dropped([str(a) for a in msg["addresses"]], str(msg.get("why", "")))

    def _lost(self):
        sock, self._sock = self._sock, None
        if sock is None:
            return
        asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()
        self._reap()
        if self._stopping:
            return
        log.error("guard (pid %s) exited: starting it again", self.proc and self.proc.pid)
        self.start()

    def _reap(self, timeout=0.0):
        """Collect the exited guard process (no zombie left behind)."""
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass

    # -- what the agent tells it ----------------------------------------------------------
    def deadline(self, at):
        """The agent's deadline (CLOCK_MONOTONIC seconds, None: none)."""
        self._deadline = at
        self._send("deadline", at=at)

    def opened(self, pnn, direction, sock):
        """A link socket (``direction`` "in" or "out") of node ``pnn``."""
        self._socks[(pnn, direction)] = sock
        self._send("sock", [sock.fileno()], pnn=pnn, dir=direction)

    def closed(self, pnn, direction):
        if self._socks.pop((pnn, direction), None) is not None:
            self._send("unsock", pnn=pnn, dir=direction)

    def lock_holder(self, pid):
        """The process that holds the cluster lock (None: none)."""
        self._lock_pid = pid
        if pid is None:
            self._send("lock", pid=None)
            return
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            log.error("guard: cannot open lock helper %d: %s", pid, exc)
            return
        try:
            self._send("lock", [pidfd], pid=pid)
        finally:
            os.close(pidfd)

    async def stop(self, drop=True, timeout=3.0):
        """A clean stop: the guard drops the addresses (``drop``), answers, and exits."""
        self._stopping = True
        if self._sock is None:
            return
        self._stopped = asyncio.get_running_loop().create_future()
        if self._send("stop", drop=drop):
            try:
                await asyncio.wait_for(self._stopped, timeout)
            except asyncio.TimeoutError:
                log.error("guard: no answer to stop within %.0fs", timeout)
        sock, self._sock = self._sock, None
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        await asyncio.to_thread(self._reap, timeout)


# -- the guard process ---------------------------------------------------------------------
class Watch:
    """The guard process's loop (blocking; no event loop): waits for the agent's
    messages until the deadline passes or the agent goes, then fences the node."""

    def __init__(self, sock, drop, close_gate=lambda: None, after=lambda dropped: None):
        """``drop(why)`` removes the node's public addresses and returns them;
        ``close_gate()`` closes the client fast path's gate; ``after(dropped)`` runs
        once the links are closed (resetting the removed addresses' connections)."""
        self.sock = sock
        self.drop = drop
        self.close_gate = close_gate
        self.after = after
        self.deadline = None
        self.links = {}  # (pnn, dir) -> socket
        self.lock = None  # (pid, pidfd) of the lock helper
        self.shut = []  # [(when, socket)] shut down, closed after LINGER

    def run(self):
        while True:
            now = time.monotonic()
            timeout = None if self.deadline is None else max(0.0, self.deadline - now)
            if self.shut:
                timeout = min(timeout if timeout is not None else LINGER, LINGER)
            ready, _, _ = select.select([self.sock], [], [], timeout)
            self._close_shut()
            if not ready:
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    late = time.monotonic() - self.deadline
                    self.deadline = None
                    self.fence(f"the agent missed its keepalive deadline ({late * 1000:.0f}"
                               " ms ago): paused or wedged")
                continue
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_MESSAGE + 1,
                                                            MAX_FDS)
            except OSError:
                data, fds = b"", []
            if not data:
                self.fence("the agent exited")
                time.sleep(LINGER)
                return 0
            if self.handle(data, fds) == "stop":
                return 0

    def handle(self, data, fds):
        msg = _decode(data)
        op = msg and msg["op"]
        try:
            if op == "deadline" and (msg.get("at") is None
                                     or isinstance(msg.get("at"), (int, float))):
                self.deadline = msg["at"]
            elif op == "sock" and len(fds) == 1 and isinstance(msg.get("pnn"), int):
                old = self.links.pop((msg["pnn"], str(msg.get("dir"))), None)
                if old is not None:
                    old.close()
                self.links[(msg["pnn"], str(msg.get("dir")))] = socket.socket(fileno=fds[0])
                fds = []
            elif op == "unsock":
                old = self.links.pop((msg.get("pnn"), str(msg.get("dir"))), None)
                if old is not None:
                    old.close()
            elif op == "lock" and (msg.get("pid") is None or len(fds) == 1):
                self._forget_lock()
                if fds:
                    self.lock, fds = (msg["pid"], fds[0]), []
            elif op == "stop":
                dropped = self.drop(STOPPING) if msg.get("drop") else []
                self._reply(dropped, STOPPING)
                return "stop"
            else:
                log.warning("guard: ignoring a malformed message (%d bytes)", len(data))
        finally:
            for fd in fds:
                os.close(fd)
        return op

    def _stop_lock_helper(self):
        """SIGTERM first (an etcd helper then gives its lease back at once, instead of
        leaving the key to its TTL), SIGKILL if it has not exited within
        :data:`LOCK_TERM_WAIT`. Its pid, or None if it was gone already."""
        pid, pidfd = self.lock
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        except OSError:
            return None
        ready, _, _ = select.select([pidfd], [], [], LOCK_TERM_WAIT)  # (readable: exited)
        if not ready:
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass
        return pid

    def _forget_lock(self):
        if self.lock is not None:
            os.close(self.lock[1])
            self.lock = None

    def fence(self, why):
        """Close the gate, drop the addresses, kill the lock helper, then shut the links
        down."""
        t0 = time.monotonic()
        self.close_gate()
        dropped = self.drop(why)
        killed = None
        if self.lock is not None:
            killed = self._stop_lock_helper()
            self._forget_lock()
        for sock in self.links.values():
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.shut.append((time.monotonic(), sock))
        n = len(self.links)
        self.links = {}
        ms = (time.monotonic() - t0) * 1000
        log.error("guard: %s: removed %d public addresses%s%s, closed %d link sockets "
                  "(%.0f ms)", why, len(dropped), f" ({', '.join(dropped)})" if dropped else "",
                  f", killed the cluster lock helper {killed}" if killed else "", n, ms)
        self._reply(dropped, why)
        self.after(dropped)

    def _reply(self, dropped, why):
        try:
            self.sock.send(_encode("dropped", addresses=dropped, why=why))
        except OSError:
            pass  # (the agent is gone, or paused with a full socket)

    def _close_shut(self):
        now = time.monotonic()
        keep = []
        for when, sock in self.shut:
            if now - when >= LINGER:
                sock.close()
            else:
                keep.append((when, sock))
        self.shut = keep


def main(argv=None):
    p = argparse.ArgumentParser(prog="pyctdb-guard", description=__doc__.split("\n")[0])
    p.add_argument("--config-dir", required=True)
    p.add_argument("--hosted-file", required=True)
    p.add_argument("--log-location", default="stderr")
    p.add_argument("--log-level", default="NOTICE")
    p.add_argument("--gate-file", default=None,
                   help="the volatile databases' agent.wait: its gate is closed first")
    p.add_argument("--fd", type=int, required=True)
    args = p.parse_args(argv)
    # (imported here: only the guard process needs them, not the agent's import of Guard)
    from pyctdb.common.config import load_config  # noqa: PLC0415  (guard process only)
    from pyctdb.common.logsetup import setup  # noqa: PLC0415  (guard process only)
    from pyctdb.server import netops  # noqa: PLC0415  (guard process only)
    from pyctdb.server.hosted import drop_addresses  # noqa: PLC0415  (guard process only)
    setup(args.log_location, args.log_level, prog="pyctdb-guard")
    # (a terminal's ^C, and systemd's SIGTERM to the whole unit, are for the agent: the
    # guard goes when the agent tells it, or when the agent is gone)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -5)  # (it must run when the node is starved)
    except OSError:
        pass
    try:
        config = load_config(args.config_dir, keys=False)
        public = {pa.address: pa.prefix for pa in config.public_addresses}
    except Exception as exc:  # (any bad file: the guard still drops what was hosted)
        log.error("guard: cannot read the configuration in %s: %s", args.config_dir, exc)
        public = {}
    sock = socket.socket(fileno=args.fd)

    def drop(why):
        removed, errors = drop_addresses(public, args.hosted_file, kill_connections=False)
        for err in errors:
            log.error("guard: %s", err)
        return removed

    def after(dropped):
        for what in dropped:
            netops.kill_local_connections(what.split("/")[0])
    def close_gate():
        if args.gate_file:
            try:
                close_client_gate(args.gate_file)
            except (OSError, ValueError) as exc:
                log.error("guard: cannot close the gate in %s: %s", args.gate_file, exc)
    try:
        netops.all_addresses()  # (netlink's socket and pyroute2 ready before they count)
    except Exception as exc:
        log.error("guard: cannot read the interfaces: %s", exc)
    return Watch(sock, drop, close_gate, after).run()


def close_client_gate(path):
    """Close the gate of the client fast path in ``path`` (agent.wait): its clients
    check it before every commit (pyctdb.client.db), so none writes a record after this
    returns but one already between its check and its commit; a few milliseconds' wait
    covers that."""
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, WAIT_SIZE) as mm:
            mm[GATE_AT:GATE_AT + 8] = struct.pack("=d", 0.0)
    finally:
        os.close(fd)
    time.sleep(0.005)


if __name__ == "__main__":
    sys.exit(main())
