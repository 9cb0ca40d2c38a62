"""The cluster lock: only the node that holds it may lead.

Two kinds, as in CTDB's ``[cluster] cluster lock``:

* a path on shared storage: an fcntl (POSIX) write lock on that file, taken without
  blocking. fcntl can block on a sick cluster filesystem, so every call runs in a worker
  thread with a timeout and never on the event loop.
* ``!COMMAND ARGS``: a CTDB-style mutex helper (e.g. ``ctdb_mutex_fcntl_helper``). The
  helper prints one character: ``0`` = lock taken (it then holds it until killed),
  ``1`` = contended, ``2`` = timeout, ``3`` = error. If the helper exits while we hold the
  lock, the lock is lost.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import logging
import os
import shlex
import signal

log = logging.getLogger(__name__)

TAKEN, CONTENDED, ERROR = "taken", "contended", "error"


class ClusterLock:
    """Interface: ``await try_take() -> (result, detail)``, ``await release()``,
    ``held`` and ``await still_held() -> bool``."""

    description = ""

    @property
    def held(self) -> bool:  # pragma: no cover - interface
        raise NotImplementedError


class FcntlLock(ClusterLock):
    """The cluster lock as an fcntl (POSIX) write lock on a file on shared storage,
    taken and checked in a worker thread with a timeout."""

    def __init__(self, path: str, timeout: float = 5.0):
        self.path = path
        self.timeout = timeout
        self.description = path
        self._fd = None
        self._ino = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _take(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        return fd, os.fstat(fd).st_ino

    async def try_take(self):
        if self._fd is not None:
            return TAKEN, "already held"
        try:
            self._fd, self._ino = await asyncio.wait_for(asyncio.to_thread(self._take),
                                                         self.timeout)
        except asyncio.TimeoutError:
            # The thread may still take the lock later; nothing we can do but note it.
            return ERROR, f"timed out after {self.timeout}s taking {self.path}"
        except BlockingIOError:
            return CONTENDED, f"{self.path} is locked by another node"
        except PermissionError as exc:
            if exc.errno in (11, 13):  # EAGAIN/EACCES: held elsewhere
                return CONTENDED, f"{self.path} is locked by another node"
            return ERROR, f"cannot open {self.path}: {exc}"
        except OSError as exc:
            return ERROR, f"cannot lock {self.path}: {exc}"
        return TAKEN, f"took fcntl lock on {self.path}"

    async def release(self):
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)  # closing the descriptor drops the POSIX lock
            except OSError:
                pass

    def _check(self):
        st = os.stat(self.path)
        return st.st_ino == self._ino

    async def still_held(self) -> bool:
        """False if the lock file was removed or replaced under us (like CTDB's helper
        check): the lock no longer protects anything and we must step down."""
        if self._fd is None:
            return False
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._check), self.timeout)
        except (OSError, asyncio.TimeoutError):
            return False


def _die_with_parent():
    """Run in the helper child before exec: if pyctdbd dies (even by SIGKILL), the kernel
    kills the helper too, so the lock is released (CTDB's helpers watch their parent for
    the same reason)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class HelperLock(ClusterLock):
    """The cluster lock held by a CTDB-style mutex helper process: taken when it
    answers ``0``, held while it runs, released by killing it."""

    def __init__(self, command: str, timeout: float = 10.0):
        self.argv = shlex.split(command)
        self.timeout = timeout
        self.description = "!" + command
        self._proc = None

    @property
    def held(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def try_take(self):
        if self.held:
            return TAKEN, "already held"
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
                preexec_fn=_die_with_parent)
        except OSError as exc:
            return ERROR, f"cannot run lock helper {self.argv[0]}: {exc}"
        try:
            ch = await asyncio.wait_for(proc.stdout.read(1), self.timeout)
        except asyncio.TimeoutError:
            ch = b""
        if ch == b"0":
            self._proc = proc
            return TAKEN, f"lock helper {self.argv[0]} took the lock"
        await self._kill(proc)
        if ch == b"1":
            return CONTENDED, "lock helper reports the lock is held by another node"
        if ch == b"2":
            return ERROR, "lock helper timed out"
        return ERROR, f"lock helper failed (answer {ch!r})"

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

    async def release(self):
        proc, self._proc = self._proc, None
        if proc is not None:
            await self._kill(proc)

    async def still_held(self) -> bool:
        return self.held


def make_lock(spec):
    if not spec:
        return None
    if spec.startswith("!"):
        return HelperLock(spec[1:].strip())
    return FcntlLock(spec)
