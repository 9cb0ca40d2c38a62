"""Address fencing between real agents in network namespaces: an address is never
configured on two hosts, whether its node's agent is killed, paused or cut off.

A watcher reads every host's addresses every ~20 ms for the whole fault; any address
seen on two hosts in one sweep fails the test. Needs root and iproute2.
"""

import os
import subprocess
import sys
import threading
import time

import pytest

from pyctdb.testing.localcluster import LocalCluster
from pyctdb.testing.netns import NetnsLab

pytestmark = [pytest.mark.timeout(240),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")]

NPUB = 6
WINDOW = 0.6  # KeepaliveInterval 0.2 x KeepaliveLimit 3


class Watcher:
    """Sweeps every host's public addresses in a thread: ``doubles`` lists each sweep
    that saw one address on two hosts; ``hosts(addr)`` the hosts of the last sweep."""

    def __init__(self, lab, pubs):
        self.lab, self.pubs = lab, set(pubs)
        self.doubles, self.sweeps, self.last = [], 0, {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        t0 = time.monotonic()
        while not self._stop.is_set():
            seen = {}
            for i in range(self.lab.hosts):
                for a in set(self.lab.addresses(i)) & self.pubs:
                    seen.setdefault(a, []).append(i)
            self.last = seen
            for a, hs in seen.items():
                if len(hs) > 1:
                    self.doubles.append((round(time.monotonic() - t0, 3), a, hs))
            self.sweeps += 1
            time.sleep(0.02)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


@pytest.fixture
def fenced(tmp_path):
    lab = NetnsLab(3).create()
    try:
        pubs = [lab.public_address(j) for j in range(NPUB)]
        c = LocalCluster(3, base_dir=tmp_path / "c", lab=lab,
                         public_addresses="".join(f"{a}/24 eth0\n" for a in pubs),
                         tunables={"KeepaliveInterval": "0.2", "KeepaliveLimit": "3"})
        with c:
            c.start()
            c.wait_healthy(60)
            c.wait_for(lambda: placed(lab, pubs) is not None, 30,
                       what="every address on exactly one host")
            yield c, lab, pubs
    finally:
        lab.destroy()


def placed(lab, pubs, exclude=()):
    """{address: host} when every address is on exactly one host (outside
    ``exclude``), else None."""
    where = {}
    for i in range(lab.hosts):
        if i in exclude:
            continue
        for a in set(lab.addresses(i)) & set(pubs):
            if a in where:
                return None
            where[a] = i
    return where if len(where) == len(pubs) else None


def victim_of(c, lab, pubs):
    where = placed(lab, pubs)
    leader = c.status(0)["leader"]
    victim = next(p for p in range(3) if p != leader and p in where.values())
    return victim, [a for a, h in where.items() if h == victim]


def test_a_killed_agent_s_guard_drops_its_addresses_before_they_move(fenced):
    """SIGKILL, and no ``--drop-public-ips`` after it: the guard removes the
    addresses, then closes the links cleanly, and only then do the peers move them —
    at once, not after the keepalive limit."""
    c, lab, pubs = fenced
    victim, had = victim_of(c, lab, pubs)
    with Watcher(lab, pubs) as w:
        t0 = time.monotonic()
        c.kill(victim)
        c.wait_for(lambda: not set(lab.addresses(victim)) & set(pubs), 5,
                   what="the killed node's addresses removed by its guard")
        c.wait_for(lambda: placed(lab, pubs, exclude=(victim,)) is not None, 10,
                   what="the killed node's addresses on the others")
        moved = time.monotonic() - t0
    assert not w.doubles, w.doubles
    assert "guard: the agent exited: removed" in c.log(victim)
    assert "its addresses are gone" in c.log(c.status(0 if victim else 1)["leader"])
    # (the guard's clean close says the addresses are gone: no wait for the keepalive)
    assert moved < 3.0, moved
    print(f"{had} moved in {moved:.3f} s, {w.sweeps} sweeps")
    c.start_node(victim)
    c.wait_healthy(30)


def test_a_paused_agent_s_guard_drops_its_addresses_before_they_move(fenced):
    """SIGSTOP: the guard drops the addresses when the agent misses its keepalive
    deadline, the majority moves them; after SIGCONT the node rejoins."""
    c, lab, pubs = fenced
    victim, had = victim_of(c, lab, pubs)
    with Watcher(lab, pubs) as w:
        t0 = time.monotonic()
        c.pause(victim)
        try:
            c.wait_for(lambda: not set(lab.addresses(victim)) & set(pubs), 5,
                       what="the paused node's addresses removed by its guard")
            dropped = time.monotonic() - t0
            c.wait_for(lambda: placed(lab, pubs, exclude=(victim,)) is not None, 10,
                       what="the paused node's addresses on the others")
            moved = time.monotonic() - t0
            time.sleep(1.0)
        finally:
            c.resume(victim)
        c.wait_healthy(30)
        c.wait_for(lambda: placed(lab, pubs) is not None, 20, what="every address placed")
    assert not w.doubles, w.doubles
    assert "missed its keepalive deadline" in c.log(victim)
    assert dropped < WINDOW + 2.0, dropped
    print(f"{had}: dropped at {dropped:.3f} s, moved at {moved:.3f} s, {w.sweeps} sweeps")


def test_a_cut_off_node_drops_its_addresses_before_the_majority_takes_them(fenced):
    """Its link cut (no resets): its lease ends a keepalive window after the last
    keepalive the majority acknowledged, and it drops its addresses; the majority takes
    them a margin later. Never on two hosts."""
    c, lab, pubs = fenced
    victim, had = victim_of(c, lab, pubs)
    st = c.status(victim)["fencing"]
    assert st["guard"] and st["lease"] == "valid" and 0 < st["lease_remaining"] <= WINDOW
    with Watcher(lab, pubs) as w:
        t0 = time.monotonic()
        lab.link(victim, up=False)
        try:
            c.wait_for(lambda: not set(lab.addresses(victim)) & set(pubs), 10,
                       what="the cut-off node dropping its addresses")
            dropped = time.monotonic() - t0
            c.wait_for(lambda: placed(lab, pubs, exclude=(victim,)) is not None, 10,
                       what="the majority serving every address")
            moved = time.monotonic() - t0
        finally:
            lab.link(victim, up=True)
        c.wait_healthy(30)
        c.wait_for(lambda: placed(lab, pubs) is not None, 20, what="every address placed")
    assert not w.doubles, w.doubles
    assert "lease ended" in c.log(victim)
    assert dropped <= moved
    assert c.status(victim)["fencing"]["lease"] == "valid"  # (healed: acknowledged again)
    print(f"{had}: dropped at {dropped:.3f} s, moved at {moved:.3f} s, {w.sweeps} sweeps")


def test_a_paused_leader_loses_the_lock_and_a_new_leader_takes_over(fenced):
    """SIGSTOP of the leader: its guard drops its addresses and kills its cluster lock
    helper, so the majority elects a new leader that takes the lock and the addresses
    (before, a paused leader kept its fcntl lock for the whole pause and nothing moved).
    After SIGCONT the old leader finds its lock gone and follows."""
    c, lab, pubs = fenced
    leader = c.status(0)["leader"]
    others = [p for p in range(3) if p != leader]
    with Watcher(lab, pubs) as w:
        t0 = time.monotonic()
        c.pause(leader)
        try:
            c.wait_for(lambda: all(c.status(p)["leader"] in others for p in others)
                       and len({c.status(p)["leader"] for p in others}) == 1, 15,
                       what="a new leader on the majority side")
            elected = time.monotonic() - t0
            new = c.status(others[0])["leader"]
            assert c.status(new)["cluster_lock"]["held"]
            c.wait_for(lambda: placed(lab, pubs, exclude=(leader,)) is not None, 10,
                       what="the paused leader's addresses on the others")
            moved = time.monotonic() - t0
        finally:
            c.resume(leader)
        c.wait_healthy(30)
        c.wait_for(lambda: placed(lab, pubs) is not None, 20, what="every address placed")
    assert not w.doubles, w.doubles
    assert "killed the cluster lock helper" in c.log(leader)
    assert c.status(leader)["leader"] == new
    print(f"new leader {new} at {elected:.3f} s, addresses moved at {moved:.3f} s")


def test_two_nodes_the_survivor_of_a_killed_leader_keeps_serving_and_leads(tmp_path):
    """Two nodes, the leader killed: its guard says its addresses are gone, so the
    survivor keeps its lease (it cannot hear a majority) and its own addresses the whole
    time, leads without waiting out the leader timeout, and takes the others."""
    lab = NetnsLab(2).create()
    try:
        pubs = [lab.public_address(j) for j in range(4)]
        c = LocalCluster(2, base_dir=tmp_path / "c", lab=lab,
                         public_addresses="".join(f"{a}/24 eth0\n" for a in pubs),
                         tunables={"KeepaliveInterval": "0.2", "KeepaliveLimit": "3"})
        with c:
            c.start()
            c.wait_healthy(60)
            c.wait_for(lambda: placed(lab, pubs) is not None
                       and len(set(placed(lab, pubs).values())) == 2, 30,
                       what="the addresses on both hosts")
            leader = c.status(0)["leader"]
            survivor = 1 - leader
            own = {a for a, h in placed(lab, pubs).items() if h == survivor}
            lost = []
            with Watcher(lab, pubs) as w:
                t0 = time.monotonic()
                c.kill(leader)
                while time.monotonic() - t0 < 6.0:
                    if own - set(lab.addresses(survivor)):
                        lost.append(round(time.monotonic() - t0, 3))
                    time.sleep(0.02)
                leads = c.status(survivor)["leader"] == survivor
            assert not w.doubles, w.doubles
            assert not lost, lost  # its own addresses never left it
            assert leads
            assert placed(lab, pubs, exclude=(leader,)) is not None
            log = c.log(survivor)
            assert "lease ended" not in log
            assert "giving the majority a head start" not in log.split("DISCONNECTED")[-1]
    finally:
        lab.destroy()


def test_cpu_starvation_moves_nothing(tmp_path):
    """Ten seconds of CPU starvation beside the agents (two busy processes per core,
    same priority), pyctdb's default keepalive (0.5 s x 3): no node is marked
    DISCONNECTED, no lease ends, no guard fires, no address moves."""
    lab = NetnsLab(3).create()
    hogs = []
    try:
        pubs = [lab.public_address(j) for j in range(NPUB)]
        c = LocalCluster(3, base_dir=tmp_path / "c", lab=lab,
                         public_addresses="".join(f"{a}/24 eth0\n" for a in pubs))
        with c:
            c.start()
            c.wait_healthy(60)
            c.wait_for(lambda: placed(lab, pubs) is not None, 30,
                       what="every address on exactly one host")
            time.sleep(2.0)  # (a periodic takeover run's rebalancing, if any, done)
            before = placed(lab, pubs)
            marks = [len(c.log(p)) for p in range(3)]
            with Watcher(lab, pubs) as w:
                hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                        for _ in range(2 * (os.cpu_count() or 2))]
                time.sleep(10.0)
                for h in hogs:
                    h.kill()
                changes = placed(lab, pubs)
            assert not w.doubles, w.doubles
            assert changes == before, (before, changes)
            for p in range(3):
                log = c.log(p)[marks[p]:]
                for bad in ("DISCONNECTED", "lease ended", "missed its keepalive",
                            "silent for", "Traceback"):
                    assert bad not in log, (p, bad, log[-2000:])
            assert c.healthy()
    finally:
        for h in hogs:
            h.kill()
        lab.destroy()
