"""Real agents on 127.0.X.Y: formation, agents killed, leader lost, silent nodes."""

import json
import os
import re
import signal
import socket
import struct
import time

import pytest

from pyctdb.protocol import frames as P
from pyctdb.testing.localcluster import LocalCluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def cluster3(tmp_path):
    with LocalCluster(3, base_dir=tmp_path) as c:
        c.start()
        c.wait_healthy(30)
        yield c


def statuses(c, pnns):
    return {p: c.status(p) for p in pnns}


def test_formation_one_leader_holding_the_lock(cluster3):
    c = cluster3
    sts = statuses(c, range(3))
    leaders = {st["leader"] for st in sts.values()}
    gens = {st["generation"] for st in sts.values()}
    assert len(leaders) == 1 and len(gens) == 1
    leader = leaders.pop()
    assert sts[leader]["cluster_lock"]["held"] is True
    assert all(not sts[p]["cluster_lock"]["held"] for p in range(3) if p != leader)
    for st in sts.values():
        assert st["num_nodes"] == 3
        assert [n["state"] for n in st["nodes"]] == ["OK", "OK", "OK"]
        assert st["recovery_mode"] == "NORMAL" and st["joined"]
        assert st["vnnmap"] == [0, 1, 2]
    # the lock really is held: another process cannot take it
    import fcntl
    fd = os.open(c.lock_file, os.O_RDWR)
    try:
        with pytest.raises(OSError):
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_cli_status_format(cluster3):
    c = cluster3
    r = c.cli(1, "status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "Number of nodes:3"
    assert lines[1] == "pnn:0 %-16s OK" % c.address(0)
    assert lines[2] == "pnn:1 %-16s OK (THIS NODE)" % c.address(1)
    assert lines[4].startswith("Generation:") and lines[4] != "Generation:INVALID"
    assert "Recovery mode:NORMAL (0)" in lines
    leader = c.status(1)["leader"]
    assert lines[-1] == f"Leader:{leader}"
    x = c.cli(0, "-X", "status").stdout.splitlines()
    assert x[0] == ("|Node|IP|Disconnected|Unknown|Banned|Disabled|Unhealthy|Stopped|"
                    "Inactive|PartiallyOnline|ThisNode|")  # (ctdb 4.17's columns)
    assert x[1] == f"|0|{c.address(0)}|0|0|0|0|0|0|0|0|Y|"
    js = json.loads(c.cli(2, "--json", "status").stdout)
    assert js["pnn"] == 2 and js["leader"] == leader
    assert c.cli(2, "pnn").stdout.strip() == "2"
    assert c.cli(0, "leader").stdout.strip() == str(leader)
    assert c.cli(0, "listnodes").stdout.split() == [c.address(p) for p in range(3)]
    up = c.cli(0, "uptime").stdout
    assert "Ctdbd start time" in up and "Duration of last recovery/failover" in up


def test_tunables_via_cli(cluster3):
    c = cluster3
    r = c.cli(0, "getvar", "keepaliveinterval")
    assert r.returncode == 0 and r.stdout.startswith("KeepaliveInterval")
    assert c.cli(0, "setvar", "KeepaliveLimit", "7").returncode == 0
    assert c.cli(0, "getvar", "KeepaliveLimit").stdout.split() == ["KeepaliveLimit", "=", "7"]
    # other nodes are not changed (setvar is local, as in CTDB)
    assert c.cli(1, "getvar", "KeepaliveLimit").stdout.split()[-1] != "7"
    r = c.cli(0, "getvar", "NoSuchVar")
    assert r.returncode == 1 and "No such tunable NoSuchVar" in r.stdout
    r = c.cli(0, "setvar", "KeepaliveLimit", "banana")
    assert r.returncode != 0 and "KeepaliveLimit" in r.stderr
    names = [l.split()[0] for l in c.cli(0, "listvars").stdout.splitlines()]
    assert "KeepaliveInterval" in names and "RecoverInterval" in names


def test_killed_agent_is_disconnected_at_once_and_comes_back(cluster3):
    c = cluster3
    leader = c.status(0)["leader"]
    victim = next(p for p in range(3) if p != leader)
    t0 = time.monotonic()
    c.kill(victim)
    others = [p for p in range(3) if p != victim]
    c.wait_for(lambda: all(c.status(p)["nodes"][victim]["state"] == "DISCONNECTED|INACTIVE"
                           for p in others), 10, what="victim DISCONNECTED")
    # broken connection, not the keepalive timeout (1.5 s by default)
    assert time.monotonic() - t0 < 1.4
    # the recovery that drops it is a round of controls (databases: freeze, pull, push,
    # thaw), so it may finish a few milliseconds after the disconnection is seen
    c.wait_for(lambda: all(victim not in c.status(p)["vnnmap"] for p in others), 2,
               what="a recovery without the victim")
    for p in others:
        st = c.status(p)
        assert st["leader"] == leader
        assert victim not in st["vnnmap"]
    r = c.cli(others[0], "nodestatus", str(victim))
    assert r.returncode == 1 and "DISCONNECTED|INACTIVE" in r.stdout
    assert c.cli(others[0], "nodestatus").returncode == 0
    r = c.cli(others[0], "nodestatus", "all")
    assert r.returncode == 1 and r.stdout.startswith("Number of nodes:3")
    c.start_node(victim)
    c.wait_healthy(30)
    assert c.status(victim)["leader"] == leader  # the returning node does not take over


def test_leader_lost_new_leader_takes_the_lock(cluster3):
    c = cluster3
    old = c.status(0)["leader"]
    gen = c.status(0)["generation"]
    t0 = time.monotonic()
    c.kill(old)
    others = [p for p in range(3) if p != old]

    def new_leader():
        sts = [c.status(p) for p in others]
        ls = {s["leader"] for s in sts}
        return len(ls) == 1 and None not in ls and old not in ls and all(
            s["recovery_mode"] == "NORMAL" for s in sts)
    c.wait_for(new_leader, 10, what="a new leader")
    elapsed = time.monotonic() - t0
    new = c.status(others[0])["leader"]
    assert c.status(new)["cluster_lock"]["held"]
    assert c.status(new)["generation"] != gen
    assert elapsed < 5.0  # far inside the leader timeout; the benchmark shows the real figure
    assert "now the LEADER" in c.log(new)
    # each cycle's report, logged when it says something new: the new leader's recovery
    log = c.log(new)
    assert "NOTICE: cycle: leader, decided lead (" in log
    assert re.search(rf"cycle: leader, .*; did: recovered to generation \d+ with members "
                     rf"\[[\d, ]+\] \(left \[{old}\]\)", log), log[-3000:]
    # ... and the takeover run its cycle tasks started once the generation changed
    assert re.search(r"cycle: leader, .*did: .*takeover run \(cluster changed\)", log), \
        log[-3000:]
    c.start_node(old)
    c.wait_healthy(30)
    assert c.status(old)["leader"] == new


def test_leader_killed_just_after_start_is_replaced_without_the_start_up_grace(tmp_path):
    # The start-up grace (2 x KeepaliveInterval, 10 s here) is over once every peer has
    # been heard: it must not come back when the leader then dies.
    with LocalCluster.healthy_cluster(3, tmp_path, tunables={"KeepaliveInterval": "5"}) as c:
        old = c.status(0)["leader"]
        others = [p for p in range(3) if p != old]
        t0 = time.monotonic()
        c.kill(old)
        c.wait_for(lambda: {c.status(p)["leader"] for p in others} not in ({old}, {None})
                   and len({c.status(p)["leader"] for p in others}) == 1, 15,
                   what="a new leader")
        assert time.monotonic() - t0 < 3.0


def test_member_silent_during_a_recovery_aborts_it_at_once(tmp_path):
    # A member goes silent while the leader's recovery waits for it (its startrecovery
    # event script sleeps): the leader drops it after the keepalive limit and starts
    # again without it, instead of waiting for the controls' timeouts (2 s for the
    # event, then 10 s for the database freeze).
    with LocalCluster.healthy_cluster(
            3, tmp_path, tunables={"KeepaliveInterval": "0.2", "KeepaliveLimit": "3"}) as c:
        leader = c.status(0)["leader"]
        victim, third = [p for p in range(3) if p != leader]
        started = tmp_path / "startrecovery-started"
        c.event_script(victim, "50.slow", f"""[ "$1" = startrecovery ] || exit 0
touch {started}; sleep 1.5; exit 0
""")
        gen = c.status(leader)["generation"]
        c.cli(third, "stop", check=True)  # a recovery (third leaves the generation)
        c.wait_for(started.exists, 10, what="the victim's startrecovery event")
        c.pause(victim)
        t0 = time.monotonic()
        try:
            c.wait_for(lambda: (st := c.status(leader))["recovery_mode"] == "NORMAL"
                       and st["generation"] != gen and victim not in st["vnnmap"], 20,
                       what="a recovery without the silent victim")
            elapsed = time.monotonic() - t0
        finally:
            c.resume(victim)
        assert elapsed < 4.0, elapsed
        assert "leader: recovery aborted" in c.log(leader)
        c.cli(third, "continue", check=True)
        c.wait_healthy(30)


def test_silent_node_dropped_after_keepalive_limit(tmp_path):
    with LocalCluster(3, base_dir=tmp_path,
                      tunables={"KeepaliveInterval": "0.2", "KeepaliveLimit": "3"}) as c:
        c.start()
        c.wait_healthy(30)
        leader = c.status(0)["leader"]
        victim = next(p for p in range(3) if p != leader)
        # (its guard paused too: else the guard closes its links at its deadline, and the
        # peers see that instead of the silence: test_fencing_netns.py)
        guard = c.guard_pid(victim)
        os.kill(guard, signal.SIGSTOP)
        c.pause(victim)
        try:
            others = [p for p in range(3) if p != victim]
            t0 = time.monotonic()
            c.wait_for(lambda: all("DISCONNECTED" in c.status(p)["nodes"][victim]["flag_names"]
                                   for p in others), 10, what="silent node dropped")
            assert time.monotonic() - t0 >= 0.3  # not before the keepalive limit
            assert "silent for" in c.log(others[0])
        finally:
            c.resume(victim)
            os.kill(guard, signal.SIGCONT)
        c.wait_healthy(30)


def test_silent_leader_replaced_when_unlocked(tmp_path):
    # Without a cluster lock a silent leader is replaced after the keepalive limit.
    with LocalCluster(3, base_dir=tmp_path, lock=False,
                      tunables={"KeepaliveInterval": "0.2", "KeepaliveLimit": "3"}) as c:
        c.start()
        c.wait_healthy(30)
        leader = c.status(0)["leader"]
        others = [p for p in range(3) if p != leader]
        c.pause(leader)
        try:
            c.wait_for(lambda: {c.status(p)["leader"] for p in others} not in ({leader}, {None})
                       and len({c.status(p)["leader"] for p in others}) == 1, 10,
                       what="new leader")
        finally:
            c.resume(leader)
        # the old leader sees a lower... or higher claimant and the cluster converges
        c.wait_healthy(30)


def test_deleted_node(tmp_path):
    with LocalCluster(3, base_dir=tmp_path, deleted={1}) as c:
        c.start()
        c.wait_healthy(30)
        st = c.status(0)
        assert st["num_nodes"] == 3 and st["num_deleted"] == 1
        assert st["nodes"][1]["deleted"] and "DELETED" in st["nodes"][1]["flag_names"]
        out = c.cli(0, "status").stdout.splitlines()
        assert out[0] == "Number of nodes:3 (including 1 deleted nodes)"
        assert not any(l.startswith("pnn:1 ") for l in out)
        assert c.cli(2, "listnodes").stdout.split() == [c.address(0), c.address(2)]


def _raw(c, pnn):
    s = socket.create_connection((c.address(pnn), c.port), timeout=5,
                                 source_address=("127.0.0.1", 0))
    return s


def _closed(s):
    s.settimeout(5)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("payload", [
    b"GET / HTTP/1.0\r\n\r\n",
    struct.pack("!4sHHII", b"PCTD", 9, 1, 2, 0) + b"{}",
    struct.pack("!4sHHII", b"PCTD", 1, 1, 0x7FFFFFFF, 0),
    struct.pack("!4sHHII", b"PCTD", 1, 1, 5, 0) + b"\xff\xff\xff\xff\xff",
    struct.pack("!4sHHII", b"PCTD", 1, 2, 2, 0) + b"{}",
    P.encode(P.MsgType.HELLO, {"pnn": 1, "address": "127.0.0.1", "instance": "x",
                                "nodes_digest": "0", "agent_version": "0"}),
])
def test_malformed_frames_are_dropped_not_fatal(cluster3, payload):
    c = cluster3
    gen = c.status(0)["generation"]
    s = _raw(c, 0)
    s.sendall(payload)
    assert _closed(s)
    s.close()
    time.sleep(0.2)
    st = c.status(0)
    assert st["healthy"] and st["generation"] == gen
    assert c.running(0)
    assert "dropping connection" in c.log(0)


def test_impostor_on_a_peers_connection(cluster3):
    """A frame that passes HELLO but then lies about its PNN is dropped."""
    c = cluster3
    # 127.0.0.1 is not in the nodes list: HELLO claiming node 1 from it is refused
    s = _raw(c, 2)
    s.sendall(P.encode(P.MsgType.HELLO, {"pnn": 1, "address": c.address(1), "instance": "impostor",
                                         "nodes_digest": "0", "agent_version": "0"}))
    assert _closed(s)
    assert "arrived from 127.0.0.1" in c.log(2)
    assert c.status(2)["healthy"]


def test_sigterm_is_clean_and_releases_the_lock(cluster3):
    c = cluster3
    leader = c.status(0)["leader"]
    c.stop(leader)
    assert c.procs[leader].returncode == 0
    assert not os.path.exists(c.socket(leader))
    others = [p for p in range(3) if p != leader]
    c.wait_for(lambda: c.leader_of(others[0]) in others
               and c.status(c.leader_of(others[0]))["cluster_lock"]["held"], 10)
    r = c.cli(leader, "status")
    assert r.returncode == 1
    assert r.stderr.strip().startswith("pyctdb: cannot connect to pyctdbd at")
    assert len(r.stderr.strip().splitlines()) == 1


def test_control_round_trip_and_unknown_control(cluster3):
    c = cluster3
    r = c.cli(0, "ping", "2")
    assert r.returncode == 0 and r.stdout.startswith("response from 2 time=")
    c.kill(2)
    c.wait_for(lambda: c.status(0)["nodes"][2]["state"] != "OK", 10)
    r = c.cli(0, "ping", "2")
    assert r.returncode == 1 and "not connected" in r.stderr


def test_malformed_control_from_a_real_peer_does_not_hurt(cluster3):
    """A CONTROL with an unknown op is answered with an error; the cluster stays up."""
    import asyncio
    c = cluster3
    # node 1's address: impersonate it only after killing it, from its own address
    c.kill(1)
    c.wait_for(lambda: c.status(0)["nodes"][1]["state"] != "OK", 10)
    digest = None
    from pyctdb.server.cluster import nodes_digest
    from pyctdb.common.config import load_config
    digest = nodes_digest(load_config(c.config_dir(0)).nodes)
    peer = c.peer_connect(1, 0, digest)  # (with the cluster's transport key)
    s = peer.sock
    peer.send(P.encode(P.MsgType.CONTROL, {"pnn": 1, "instance": "fake", "req_id": 1,
                                           "op": "no-such-op", "args": {}}))
    peer.send(P.encode(P.MsgType.CONTROL, {"pnn": 1, "instance": "fake", "req_id": "x",
                                           "op": "ping", "args": {}}))
    assert _closed(s)  # the second (bad req_id type) drops the connection
    s.close()
    assert "req_id" in c.log(0)
    assert c.running(0)
    c.start_node(1)
    c.wait_healthy(20)
