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

import errno
import fcntl
import logging
import os

from pyctdb.errors import PyctdbError

log = logging.getLogger(__name__)

LOCK_FILE = ".pyctdb.lock"
#: a directory that fails like this cannot take a lock file, and no agent can write
#: it either: the agent starts without its lock (and reports the directory failing)
_DISK_ERRORS = (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EIO)


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
                fd = _lock(path)
                if fd is not None:
                    self._fds.append(fd)
        except DirectoryInUse:
            self.release()
            raise

    def release(self):
        for fd in self._fds:
            os.close(fd)
        self._fds = []


def _open(path, lock_path):
    """The lock file's descriptor; None when the directory fails (read-only, full: the
    agent starts and finds it failing, see health.py); DirectoryInUse otherwise."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        return os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        err = exc
    if err.errno == errno.EROFS:  # (an existing lock file can still be locked read-only)
        try:
            return os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            pass
    if err.errno in _DISK_ERRORS:
        log.warning("database directory %s: no lock file (%s): started without it",
                    path, err.strerror)
        return None
    raise DirectoryInUse(f"database directory {path}: cannot make its lock file "
                         f"{lock_path}: {err.strerror or err}")


def _lock(path):
    lock_path = os.path.join(path, LOCK_FILE)
    fd = _open(path, lock_path)
    if fd is None:
        return None
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
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"%d\n" % os.getpid(), 0)
    except OSError:  # (read-only or full: the lock holds without the PID)
        pass
    return fd


def _holder(fd):
    try:
        pid = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeError):
        return ""
    return f" (PID {pid})" if pid.isdigit() else ""
