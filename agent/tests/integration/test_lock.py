"""The cluster lock decides who may lead."""

import fcntl
import os
import signal
import sys
import textwrap
import time

import pytest

from pyctdb.testing.localcluster import LocalCluster

pytestmark = pytest.mark.timeout(120)


def test_node_that_cannot_take_the_lock_does_not_lead(tmp_path):
    c = LocalCluster(3, base_dir=tmp_path)
    os.makedirs(os.path.dirname(c.lock_file), exist_ok=True)
    fd = os.open(c.lock_file, os.O_RDWR | os.O_CREAT)
    fcntl.lockf(fd, fcntl.LOCK_EX)  # someone else holds the lock
    try:
        with c:
            c.start()
            c.wait_for(lambda: all(c.try_status(p) for p in range(3)), 20)
            time.sleep(2.0)  # well past the start-up grace
            for p in range(3):
                st = c.status(p)
                assert st["leader"] is None and not st["joined"]
                assert st["generation"] is None
                assert not st["cluster_lock"]["held"]
            assert "cannot take the cluster lock" in c.log(0)
            r = c.cli(0, "status")
            assert "Generation:INVALID" in r.stdout and "Leader:UNKNOWN" in r.stdout
            assert "Recovery mode:RECOVERY (1)" in r.stdout
            os.close(fd)
            fd = None
            c.wait_healthy(10)
            leader = c.status(0)["leader"]
            assert c.status(leader)["cluster_lock"]["held"]
    finally:
        if fd is not None:
            os.close(fd)


HELPER = textwrap.dedent("""\
    import fcntl, os, signal, sys, time
    # A CTDB-style mutex helper: prints 0 (taken) or 1 (contended), then holds the lock.
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        sys.stdout.write("1"); sys.stdout.flush(); sys.exit(0)
    sys.stdout.write("0"); sys.stdout.flush()
    while True:
        time.sleep(3600)
""")


def test_mutex_helper_lock(tmp_path):
    helper = tmp_path / "helper.py"
    helper.write_text(HELPER)
    lockfile = tmp_path / "helper.lock"
    conf = f"[cluster]\ncluster lock = !{sys.executable} {helper} {lockfile}\n"
    # the LocalCluster writes its own [cluster] section: use a lock-less layout + extra
    with LocalCluster(3, base_dir=tmp_path / "c", lock=False) as c:
        for p in range(3):
            path = os.path.join(c.config_dir(p), "pyctdb.conf")
            text = open(path).read().replace("[cluster]\n", "[cluster]\n" + conf.split("\n")[1] + "\n")
            open(path, "w").write(text)
        c.start()
        c.wait_healthy(20)
        leader = c.status(0)["leader"]
        st = c.status(leader)
        assert st["cluster_lock"]["held"] and st["cluster_lock"]["lock"].startswith("!")
        c.kill(leader)
        others = [p for p in range(3) if p != leader]
        c.wait_for(lambda: c.leader_of(others[0]) in others
                   and c.leader_of(others[1]) == c.leader_of(others[0]), 15)
        new = c.leader_of(others[0])
        assert c.status(new)["cluster_lock"]["held"]


def test_removed_lock_file_makes_leader_step_down(tmp_path):
    with LocalCluster(2, base_dir=tmp_path) as c:
        c.start()
        c.wait_healthy(20)
        leader = c.status(0)["leader"]
        os.unlink(c.lock_file)
        # the leader's lock helper notices within its 5 s recheck and exits; the leader
        # steps down, and someone's helper takes a lock on a new file
        c.wait_for(lambda: "no longer held" in c.log(leader), 15)
        c.wait_for(lambda: "no longer the leader" in c.log(leader), 5)
        c.wait_for(lambda: os.path.exists(c.lock_file) and c.healthy(), 20,
                   what="a new lock file and a healthy cluster")


def test_leader_checks_its_lock_during_a_long_recovery(tmp_path):
    """The leader keeps checking its cluster lock while a recovery waits (here for its
    own startrecovery script, 25 s): a removed lock file makes it step down, and the
    recovery is abandoned, within the check's 5 s, not after the recovery."""
    with LocalCluster(3, base_dir=tmp_path) as c:
        c.start()
        c.wait_healthy(30)
        leader = c.status(0)["leader"]
        other = next(p for p in range(3) if p != leader)
        mark = tmp_path / "slow-started"
        c.event_script(leader, "50.slow", textwrap.dedent(f"""\
            if [ "$1" = startrecovery ] && [ ! -e {mark} ]; then
                touch {mark}; sleep 25
            fi
            exit 0
            """))
        c.cli(other, "stop", check=True)  # a membership change: the leader recovers
        c.wait_for(mark.exists, 15)
        time.sleep(0.5)
        t0 = time.monotonic()
        os.unlink(c.lock_file)
        c.wait_for(lambda: "no longer held" in c.log(leader), 15)
        assert time.monotonic() - t0 < 12  # the script still sleeps: not after the recovery
        c.wait_for(lambda: "no longer the leader" in c.log(leader), 5)
        c.cli(other, "continue", check=True)
        c.wait_for(lambda: os.path.exists(c.lock_file) and c.healthy(), 40,
                   what="a new lock file (a leader took a new lock) and a healthy cluster")


def lock_helper_of(agent_pid, module=b"pyctdb.server.lockhelper"):
    """The pid of the lock helper (``python -m MODULE``) that agent ``agent_pid``
    started, or None."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == agent_pid and module in cmd:
            return int(d)
    return None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_paused_leader_loses_the_lock_when_its_helper_is_killed(tmp_path):
    """The lock lives in a helper process: a SIGSTOPped leader keeps it only until that
    process is killed (what the node's guard does); the others then elect a leader, and
    the paused one steps down when it resumes."""
    with LocalCluster(3, base_dir=tmp_path) as c:
        c.start()
        c.wait_healthy(30)
        leader = c.status(0)["leader"]
        helper = lock_helper_of(c.procs[leader].pid)
        assert helper is not None
        others = [p for p in range(3) if p != leader]
        c.pause(leader)
        try:
            # well past the silent node's detection: nobody else leads while the helper
            # holds the lock (the node's guard, when there is one, kills it meanwhile)
            t_end = time.monotonic() + 4
            while time.monotonic() < t_end:
                leaders = {c.leader_of(p) for p in others}
                if not _alive(helper):
                    break
                assert leaders <= {leader, None}, leaders
                time.sleep(0.1)
            if _alive(helper):
                os.kill(helper, signal.SIGKILL)
            c.wait_for(lambda: c.leader_of(others[0]) in others
                       and c.leader_of(others[1]) == c.leader_of(others[0]), 20,
                       what="a new leader among the others")
            new = c.leader_of(others[0])
            assert c.status(new)["cluster_lock"]["held"]
        finally:
            c.resume(leader)
        c.wait_for(lambda: "no longer the leader" in c.log(leader), 15)
        c.wait_for(lambda: c.leader_of(others[0]) == new, 5)
