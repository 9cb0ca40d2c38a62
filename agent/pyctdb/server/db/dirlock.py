"""One agent per database directory.

Two agents given the same database directory (two nodes of a test cluster on one host,
a second ``pyctdbd`` started by hand beside the service) would share one LMDB
environment: the second one's start wipes the volatile databases under the first, and
their writes mix. Each agent therefore holds an exclusive ``flock`` on a file in each of
its database directories for as long as it runs (the kernel lets go when the process
ends, however it ends); a second agent is refused at start, naming the directory and
the holder's PID. The lock file is not inherited by child processes (event scripts, the
guard, the lock helper).
"""

from __future__ import annotations

import fcntl
import os

from pyctdb.errors import PyctdbError

LOCK_FILE = ".pyctdb.lock"


class DirectoryInUse(PyctdbError):
    """A database directory is held by another running agent (or cannot be locked)."""

    code = "EBUSY"


class DirectoryLocks:
    """The locks of this agent's database directories (:meth:`acquire`, :meth:`release`)."""

    def __init__(self, paths):
        self.paths = list(dict.fromkeys(os.path.abspath(p) for p in paths))
        self._fds = []

    def acquire(self):
        """Lock every directory (made if missing), or raise :class:`DirectoryInUse`
        holding none of them."""
        try:
            for path in self.paths:
                self._fds.append(_lock(path))
        except DirectoryInUse:
            self.release()
            raise

    def release(self):
        for fd in self._fds:
            os.close(fd)
        self._fds = []


def _lock(path):
    lock_path = os.path.join(path, LOCK_FILE)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise DirectoryInUse(f"database directory {path}: cannot make its lock file "
                             f"{lock_path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _holder(fd)
        os.close(fd)
        if isinstance(exc, BlockingIOError):
            raise DirectoryInUse(
                f"database directory {path} is in use by another pyctdbd{holder}: each "
                "node's agent needs directories of its own ([database] options of its "
                "configuration)") from None
        raise DirectoryInUse(f"database directory {path}: cannot lock {lock_path}: "
                             f"{exc.strerror or exc}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, b"%d\n" % os.getpid(), 0)
    return fd


def _holder(fd):
    try:
        pid = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeError):
        return ""
    return f" (PID {pid})" if pid.isdigit() else ""
