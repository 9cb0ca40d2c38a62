"""pyctdb's cluster mutex helper: the fcntl cluster lock, held by its own process.

    python -m pyctdb.server.lockhelper PATH [RECHECK_INTERVAL]

It speaks CTDB's mutex helper protocol as samba's ``ctdb_mutex_fcntl_helper`` does
(ctdb/doc/cluster_mutex_helper.txt): it takes a POSIX write lock on byte 0 of PATH
without blocking and prints one character on standard output:

* ``0``: taken; it then holds the lock until it is killed (SIGTERM or SIGKILL: the kernel
  drops the lock with the process),
* ``1``: contended (another process holds it),
* ``3``: error (PATH cannot be opened or locked; the reason on standard error).

(``2``, timeout, is never printed: the caller times the helper out.) While it holds
the lock it exits, and so lets go of it, when

* every RECHECK_INTERVAL seconds (default 5; 0: never) PATH no longer exists, or is
  another file (its inode changed: the lock no longer protects anything), or a blocking
  test lock of byte 1 fails,
* its parent dies: at once on Linux (``PR_SET_PDEATHSIG``), otherwise within 5 s.

Because the lock lives in this process, whoever must free the cluster lock of a wedged
agent kills this process (see ``ClusterLock.holder_pid``). It imports only the
standard library and starts in a few tens of milliseconds.
"""

import fcntl
import os
import signal
import sys
import time

PARENT_CHECK = 5.0  # seconds between two checks that the parent still lives


def take(path):
    """Lock byte 0 of ``path`` without blocking: ``("0", fd)``, ``("1", None)`` or
    ``("3", None)``."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        sys.stderr.write(f"lockhelper: unable to open {path} - ({exc.strerror})\n")
        return "3", None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
    except OSError as exc:
        os.close(fd)
        if isinstance(exc, BlockingIOError) or exc.errno in (11, 13):  # EAGAIN, EACCES
            return "1", None
        sys.stderr.write(f"lockhelper: failed to get lock on {path} - ({exc.strerror})\n")
        return "3", None
    return "0", fd


def lost(path, fd, inode):
    """Why the held lock no longer protects anything, or None. ``stat``, not ``open``:
    closing another descriptor of the file would drop this process's POSIX lock."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"lock file {path} is gone ({exc.strerror})"
    if st.st_ino != inode:
        return f"lock file {path} was replaced (inode changed)"
    try:  # blocking, as CTDB's: a sick cluster filesystem makes the helper hang here
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, 1)
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 1)
    except OSError as exc:
        return f"test lock on {path} failed ({exc.strerror})"
    return None


def die_with_parent():
    """Linux: the kernel SIGKILLs this process when its parent dies. Best effort."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError, ImportError):
        pass


def parent_gone(ppid):
    if os.getppid() != ppid:
        return True
    try:
        os.kill(ppid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


def hold(path, fd, recheck, ppid):
    """Hold the lock until a reason to let go; the reason."""
    inode = os.fstat(fd).st_ino
    now = time.monotonic()
    next_check = now + recheck if recheck > 0 else None
    next_parent = now + PARENT_CHECK
    while True:
        wake = next_parent if next_check is None else min(next_check, next_parent)
        time.sleep(max(0.0, wake - time.monotonic()))
        now = time.monotonic()
        if now >= next_parent:
            if ppid != 1 and parent_gone(ppid):
                return "parent gone"
            next_parent = now + PARENT_CHECK
        if next_check is not None and now >= next_check:
            why = lost(path, fd, inode)
            if why:
                return "lock lost - " + why
            next_check = time.monotonic() + recheck


def usage():
    sys.stderr.write("Usage: python -m pyctdb.server.lockhelper <file> [recheck_interval]\n")
    return 1


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not 1 <= len(argv) <= 2:
        return usage()
    recheck = 5.0
    if len(argv) == 2:
        try:
            recheck = float(argv[1])
        except ValueError:
            return usage()
        if recheck < 0:
            return usage()
    ppid = os.getppid()
    die_with_parent()
    if ppid != 1 and parent_gone(ppid):  # died before the prctl took effect
        return 0
    result, fd = take(argv[0])
    os.write(1, result.encode())
    if result != "0":
        return 0
    why = hold(argv[0], fd, recheck, ppid)
    sys.stderr.write(f"lockhelper: {why}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
