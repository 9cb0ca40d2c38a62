"""pyctdb's fcntl mutex helper (pyctdb.server.lockhelper), as real processes on one lock
file, and the HelperLock that runs it (every cluster lock is a helper process)."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pyctdb.server.clusterlock import (CONTENDED, TAKEN, HelperLock, fcntl_helper_argv,
                                       make_lock)

pytestmark = pytest.mark.timeout(60)

CTDB_HELPER = "/usr/libexec/ctdb/ctdb_mutex_fcntl_helper"


def helper(path, *args, argv=None):
    """Start a helper on ``path``; (process, its answer)."""
    p = subprocess.Popen(argv or fcntl_helper_argv(str(path), *args), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    return p, p.stdout.read(1)


def gone(pid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def procs():
    started = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_second_helper_is_contended_until_the_first_is_killed(tmp_path, procs):
    lock = tmp_path / "cluster.lock"
    first, a = helper(lock)
    procs.append(first)
    assert a == b"0"
    second, b = helper(lock)
    procs.append(second)
    assert b == b"1"
    assert second.wait(5) == 0  # a contended helper exits at once
    first.kill()
    first.wait()
    third, c = helper(lock)
    procs.append(third)
    assert c == b"0"
    assert third.poll() is None  # and holds it


def test_error_answer_when_the_file_cannot_be_opened(tmp_path, procs):
    p, a = helper(tmp_path / "no-such-dir" / "lock")
    procs.append(p)
    assert a == b"3"
    assert b"unable to open" in p.stderr.read()


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_holder_exits_when_the_lock_file_is_removed_or_replaced(tmp_path, procs, how):
    lock = tmp_path / "cluster.lock"
    p, a = helper(lock, 0.2)
    procs.append(p)
    assert a == b"0"
    time.sleep(0.5)
    assert p.poll() is None  # the rechecks pass while the file stays
    if how == "removed":
        lock.unlink()
    else:
        (tmp_path / "new").write_text("")
        os.replace(tmp_path / "new", lock)
    assert p.wait(3) == 0
    assert b"lock lost" in p.stderr.read()
    q, b = helper(lock)  # the new file's lock is free
    procs.append(q)
    assert b == b"0"


def test_a_parent_that_dies_takes_its_helper_with_it(tmp_path, procs):
    lock = tmp_path / "cluster.lock"
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""\
        import subprocess, sys, time
        p = subprocess.Popen({fcntl_helper_argv(str(lock))!r}, stdout=subprocess.PIPE)
        print(p.pid, p.stdout.read(1).decode(), flush=True)
        time.sleep(3600)
        """)], stdout=subprocess.PIPE, text=True)
    procs.append(parent)
    pid, answer = parent.stdout.readline().split()
    assert answer == "0"
    parent.kill()
    parent.wait()
    assert gone(int(pid), 2)  # at once (PR_SET_PDEATHSIG), not after the 5 s poll
    p, a = helper(lock)
    procs.append(p)
    assert a == b"0"


@pytest.mark.skipif(not os.access(CTDB_HELPER, os.X_OK), reason="CTDB's helper not installed")
def test_same_lock_as_ctdbs_own_fcntl_helper(tmp_path, procs):
    """pyctdb's helper and CTDB's exclude each other on one file (one byte range)."""
    lock = tmp_path / "cluster.lock"
    ours, a = helper(lock)
    procs.append(ours)
    assert a == b"0"
    theirs, b = helper(lock, argv=[CTDB_HELPER, str(lock)])
    procs.append(theirs)
    assert b == b"1"
    ours.kill()
    ours.wait()
    theirs, b = helper(lock, argv=[CTDB_HELPER, str(lock)])
    procs.append(theirs)
    assert b == b"0"
    again, c = helper(lock)
    procs.append(again)
    assert c == b"1"


def test_helper_lock_holder_pid(tmp_path):
    path = str(tmp_path / "cluster.lock")

    async def main():
        a, b = make_lock(path), make_lock(path)
        assert a.description == path and a.holder_pid is None
        assert (await a.try_take())[0] == TAKEN
        pid = a.holder_pid
        assert isinstance(pid, int) and pid != os.getpid()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert b"pyctdb.server.lockhelper" in f.read()
        assert (await b.try_take())[0] == CONTENDED and b.holder_pid is None
        os.kill(pid, signal.SIGKILL)  # what the guard does to a wedged agent's lock
        for _ in range(100):
            if not a.held:
                break
            await asyncio.sleep(0.02)
        assert not a.held and a.holder_pid is None and not await a.still_held()
        assert (await b.try_take())[0] == TAKEN and b.holder_pid is not None
        await b.release()
        assert b.holder_pid is None and not b.held
        await a.release()

    asyncio.run(main())


def test_helper_lock_lost_when_the_file_is_removed(tmp_path):
    path = tmp_path / "cluster.lock"

    async def main():
        lock = HelperLock(fcntl_helper_argv(str(path), 0.2), description=str(path))
        assert (await lock.try_take())[0] == TAKEN
        path.unlink()
        for _ in range(150):
            if not lock.held:
                break
            await asyncio.sleep(0.02)
        assert not lock.held and lock.holder_pid is None
        await lock.release()

    asyncio.run(main())
