"""The cluster lock: only the node that holds it may lead.

Every cluster lock is held by a helper process, never by the agent itself, so that
whoever must free the lock of a paused or wedged agent can kill that process
(:attr:`ClusterLock.holder_pid`). Two spellings, as in CTDB's ``[cluster] cluster lock``:

* a path on shared storage: pyctdb's own helper, :mod:`pyctdb.server.lockhelper`
  (``python -m pyctdb.server.lockhelper PATH``), holds an fcntl (POSIX) lock on that file,
  and exits, so the lock is lost, when the file is removed or replaced;
* ``!COMMAND ARGS``: any CTDB-style mutex helper (``ctdb_mutex_fcntl_helper``,
  ``ctdb_etcd_lock``, :mod:`pyctdb.server.etcdlock`...).

A helper prints one character: ``0`` = lock taken (it then holds it until killed),
``1`` = contended, ``2`` = timeout, ``3`` = error. If the helper exits while we hold the
lock, the lock is lost. What it writes on standard error is logged.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shlex
import signal
import sys

from pyctdb.server import tasks

log = logging.getLogger(__name__)

TAKEN, CONTENDED, ERROR = "taken", "contended", "error"


class ClusterLock:
    """Interface: ``await try_take() -> (result, detail)``, ``await release()``,
    ``held``, ``holder_pid`` and ``await still_held() -> bool``."""

    description = ""

    @property
    def held(self) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def holder_pid(self) -> int | None:
        """The pid of the process that holds the lock while it is held, else None.
        Killing it (SIGKILL) frees the lock; the agent then sees the lock lost and steps
        down."""
        return None


def _die_with_parent():
    """Run in the helper child before exec: if pyctdbd dies (even by SIGKILL), the kernel
    kills the helper too, so the lock is released (CTDB's helpers watch their parent for
    the same reason)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def fcntl_helper_argv(path, recheck_interval=None):
    """The command line of pyctdb's own fcntl lock helper on ``path``."""
    argv = [sys.executable, "-m", "pyctdb.server.lockhelper", path]
    if recheck_interval is not None:
        argv.append(str(recheck_interval))
    return argv


class HelperLock(ClusterLock):
    """The cluster lock held by a CTDB-style mutex helper process: taken when it
    answers ``0``, held while it runs, released by killing it (its process group: it
    runs in a session of its own, so ``holder_pid`` is also its process group id).

    ``command``: a command line (str, split like a shell's words) or an argv list;
    ``description``: what the status shows (default ``!command``)."""

    def __init__(self, command, timeout: float = 10.0, description=None):
        self.argv = shlex.split(command) if isinstance(command, str) else list(command)
        self.timeout = timeout
        self.description = description or "!" + shlex.join(self.argv)
        self._proc = None
        self._watch = None

    @property
    def held(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def holder_pid(self) -> int | None:
        return self._proc.pid if self.held else None

    async def try_take(self):
        if self.held:
            return TAKEN, "already held"
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True,
                preexec_fn=_die_with_parent)
        except OSError as exc:
            return ERROR, f"cannot run lock helper {self.argv[0]}: {exc}"
        timed_out = False
        try:
            ch = await asyncio.wait_for(proc.stdout.read(1), self.timeout)
        except asyncio.TimeoutError:
            ch, timed_out = b"", True
        if ch == b"0":
            self._proc = proc
            self._watch = tasks.spawn(self._watch_helper(proc), name="lock-helper")
            return TAKEN, f"lock helper (pid {proc.pid}) took {self.description}"
        await self._kill(proc)
        err = await self._stderr_of(proc)
        if ch == b"1":
            return CONTENDED, f"{self.description} is held by another node"
        if ch == b"2" or timed_out:
            return ERROR, f"lock helper for {self.description} timed out{err}"
        return ERROR, f"lock helper for {self.description} failed (answer {ch!r}){err}"

    @staticmethod
    async def _stderr_of(proc):
        try:
            text = await asyncio.wait_for(proc.stderr.read(2000), 1)
        except (asyncio.TimeoutError, OSError):
            return ""
        text = text.decode(errors="replace").strip()
        return f": {text.splitlines()[-1]}" if text else ""

    async def _watch_helper(self, proc):
        """While the helper holds the lock: drain what it writes (a helper that writes
        on must never block on a full pipe, e.g. ctdb_etcd_lock's ``0`` at each
        refresh), log its standard error, and report its exit."""
        async def drain(stream, show):
            async for line in stream:
                if show and line.strip():
                    log.warning("cluster lock helper (pid %d): %s", proc.pid,
                                line.decode(errors="replace").rstrip())

        await asyncio.gather(drain(proc.stdout, False), drain(proc.stderr, True),
                             return_exceptions=True)
        code = await proc.wait()
        if self._proc is proc:  # not released by us
            log.error("the cluster lock %s is no longer held: its helper (pid %d) exited "
                      "(status %s)", self.description, proc.pid, code)

    @staticmethod
    async def _kill(proc):
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except asyncio.TimeoutError:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()

    async def release(self):
        proc, self._proc = self._proc, None
        if proc is not None:
            running = proc.returncode is None
            await self._kill(proc)
            if running:
                log.info("released the cluster lock %s (helper pid %d)", self.description,
                         proc.pid)
        watch, self._watch = self._watch, None
        if watch is not None:
            try:
                await asyncio.wait_for(watch, 2)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass

    async def still_held(self) -> bool:
        """The helper still runs (the fcntl helper itself checks every few seconds that
        its lock file was neither removed nor replaced, and exits if it was)."""
        return self.held


def make_lock(spec):
    """The cluster lock of ``[cluster] cluster lock``: None (none), a HelperLock running
    ``!COMMAND``, or (a path) one running pyctdb's own fcntl helper on it."""
    if not spec:
        return None
    if spec.startswith("!"):
        return HelperLock(spec[1:].strip(), description="!" + spec[1:].strip())
    return HelperLock(fcntl_helper_argv(spec), description=spec)
