"""Public address failover between real agents in network namespaces on one bridge.

Each agent runs in its own namespace (a host); a client namespace connects to the public
addresses over TCP. Needs root and iproute2 (the CI machine has both).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from pyctdb.testing.localcluster import LocalCluster
from pyctdb.testing.netns import NetnsLab

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")]

NPUB = 4

# A tiny TCP server that every host runs on every address (0.0.0.0:8000): it answers
# each line with the host's name, so the client can tell who hosts an address.
SERVER = textwrap.dedent("""\
    import socket, sys, threading
    name = sys.argv[1].encode()
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 8000)); s.listen(64)
    def serve(c):
        try:
            while True:
                d = c.recv(100)
                if not d:
                    break
                c.sendall(name + b"\\n")
        except OSError:
            pass
        finally:
            c.close()
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
""")


@pytest.fixture
def lab_cluster(tmp_path):
    lab = NetnsLab(3).create()
    servers = []
    try:
        (tmp_path / "server.py").write_text(SERVER)
        for i in range(3):
            servers.append(subprocess.Popen(lab.exec_argv(lab.host_ns(i), [
                sys.executable, str(tmp_path / "server.py"), f"host{i}"])))
        pub = "".join(f"{lab.public_address(j)}/24 eth0\n" for j in range(NPUB))
        c = LocalCluster(3, base_dir=tmp_path / "c", lab=lab, public_addresses=pub,
                         tunables={"KeepaliveInterval": "0.2", "KeepaliveLimit": "3"})
        with c:
            c.start()
            c.wait_healthy(30)
            wait_all_hosted(c, lab)
            yield c, lab
    finally:
        for s in servers:
            s.kill()
        lab.destroy()


def hosts_of(lab):
    """address -> [host indexes carrying it]"""
    out = {}
    for i in range(lab.hosts):
        for a in lab.addresses(i):
            out.setdefault(a, []).append(i)
    return out


def wait_all_hosted(c, lab, exclude=(), timeout=15):
    pubs = [lab.public_address(j) for j in range(NPUB)]

    def live():
        return {a: [i for i in hs if i not in exclude] for a, hs in hosts_of(lab).items()}

    seen = {}

    def ok():
        seen["h"] = h = live()  # (what was seen, not a second look that may differ)
        return all(len(h.get(a, [])) == 1 for a in pubs)
    c.wait_for(ok, timeout, what="every public address on exactly one (live) host")
    return {a: seen["h"][a][0] for a in pubs}


def ask(lab, addr, timeout=2.0):
    """Connect from the client namespace and return the answering host's name."""
    code = (f"import socket; s=socket.create_connection(({addr!r}, 8000), timeout={timeout});"
            "s.sendall(b'x'); print(s.recv(100).decode().strip())")
    r = lab.run(lab.client_ns, [sys.executable, "-c", code], timeout=timeout + 5)
    return r.stdout.strip() if r.returncode == 0 else None


def drop_public_ips(c, lab, pnn):
    """What systemd's ExecStopPost does for a killed agent: ``pyctdbd --drop-public-ips``
    in its namespace, with its configuration and socket (the record of hosted addresses
    is found next to the socket)."""
    return lab.run(lab.host_ns(pnn), [sys.executable, "-m", "pyctdb.server.daemon",
                                      "--config-dir", c.config_dir(pnn), "--socket",
                                      c.socket(pnn), "--drop-public-ips"],
                   env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
                       os.path.dirname(os.path.abspath(__file__))))))


def test_addresses_spread_and_answer(lab_cluster):
    c, lab = lab_cluster
    where = wait_all_hosted(c, lab)
    assert len(set(where.values())) == 3  # LCP2 spreads 4 addresses over 3 nodes
    for addr, host in where.items():
        assert ask(lab, addr) == f"host{host}"
    r = c.cli(0, "ip", "all")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "Public IPs on ALL nodes"
    got = {l.split()[0]: int(l.split()[1]) for l in lines[1:]}
    assert got == where


def test_killed_agent_addresses_move_and_answer(lab_cluster):
    c, lab = lab_cluster
    where = wait_all_hosted(c, lab)
    leader = c.status(0)["leader"]
    victim = next(p for p in range(3) if p != leader and p in where.values())
    moved = [a for a, h in where.items() if h == victim]
    c.kill(victim)
    r = drop_public_ips(c, lab, victim)
    assert r.returncode == 0, r.stderr
    after = wait_all_hosted(c, lab, exclude=(victim,))
    for a in moved:
        assert after[a] != victim
        assert ask(lab, a) == f"host{after[a]}"
    c.start_node(victim)
    c.wait_healthy(30)
    # failback: LCP2 gives the returning node (it hosts nothing) an address. The
    # addresses are all hosted before that run, so wait for the run itself.
    c.wait_for(lambda: victim in wait_all_hosted(c, lab).values(), 15,
               what=f"an address back on node {victim}")


def test_leader_killed_addresses_move(lab_cluster):
    c, lab = lab_cluster
    where = wait_all_hosted(c, lab)
    leader = c.status(0)["leader"]
    c.kill(leader)
    drop_public_ips(c, lab, leader)
    after = wait_all_hosted(c, lab, exclude=(leader,))
    for a in where:
        assert ask(lab, a) == f"host{after[a]}"


def test_address_removed_by_hand_is_restored(lab_cluster):
    c, lab = lab_cluster
    where = wait_all_hosted(c, lab)
    addr, host = next(iter(where.items()))
    subprocess.run(["ip", "-n", lab.host_ns(host), "addr", "del", f"{addr}/24", "dev", "eth0"],
                   check=True)
    assert addr not in lab.addresses(host)
    c.wait_for(lambda: addr in lab.addresses(host), 10, what="address restored")
    c.wait_for(lambda: "was missing: added it back" in c.log(host), 5)
    # and one added by hand where it does not belong is removed
    other = (host + 1) % 3
    subprocess.run(["ip", "-n", lab.host_ns(other), "addr", "add", f"{addr}/24", "dev", "eth0"],
                   check=True)
    c.wait_for(lambda: addr not in lab.addresses(other), 10, what="stray address removed")
    c.wait_for(lambda: "does not host it: removed it" in c.log(other), 5)


def test_disable_moves_addresses_never_on_two_hosts(lab_cluster):
    c, lab = lab_cluster
    where = wait_all_hosted(c, lab)
    victim = next(iter(where.values()))
    seen_double = []
    stop = threading.Event()

    def watch():
        # Hosts are read one after another, so one sweep can see an address on host A
        # (read before A released it) and on host B (read after B took it). A double is
        # real only if A still has it in a second sweep, read after B had it.
        while not stop.is_set():
            first = hosts_of(lab)
            doubles = {a: hs for a, hs in first.items()
                       if a.startswith(lab.public_address(0).rsplit(".", 1)[0])
                       and len(hs) > 1}
            if doubles:
                second = hosts_of(lab)
                for a, hs in doubles.items():
                    if any(h in second.get(a, []) for h in hs[:-1]):
                        seen_double.append((a, hs, second.get(a)))
            time.sleep(0.005)
    t = threading.Thread(target=watch)
    t.start()
    try:
        assert c.cli(victim, "disable").returncode == 0
        after = wait_all_hosted(c, lab, exclude=(victim,))
        assert c.cli(victim, "enable").returncode == 0
        wait_all_hosted(c, lab)
        addr = next(iter(after))
        target = next(p for p in range(3) if p != after[addr])
        r = c.cli(0, "moveip", addr, str(target))
        assert r.returncode == 0, r.stderr
        c.wait_for(lambda: hosts_of(lab).get(addr) == [target], 10)
    finally:
        stop.set()
        t.join()
    assert not seen_double


def test_tcp_client_of_moved_address_is_reset_promptly(lab_cluster):
    c, lab = lab_cluster
    where = wait_all_hosted(c, lab)
    leader = c.status(0)["leader"]
    victim = next(p for p in range(3) if p != leader and p in where.values())
    addr = next(a for a, h in where.items() if h == victim)
    # a client waiting for data on the address: without tickle ACKs it would wait for
    # its 30 s timeout; with them, the new holder resets it as soon as the address moves
    code = textwrap.dedent(f"""\
        import socket, time
        s = socket.create_connection(({addr!r}, 8000), timeout=5)
        s.sendall(b'x'); s.recv(100)
        print('connected', flush=True)
        s.settimeout(30)
        try:
            d = s.recv(100)
            print('data', d, flush=True)
        except OSError as e:
            print('reset', type(e).__name__, flush=True)
    """)
    p = subprocess.Popen(lab.exec_argv(lab.client_ns, [sys.executable, "-c", code]),
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "connected"
        time.sleep(1.5)  # let the holder report the connection to the others
        t0 = time.monotonic()
        lab.link(victim, up=False)  # the host vanishes: no resets from it, ever
        out = p.stdout.readline().strip()
        elapsed = time.monotonic() - t0
        assert out.startswith("reset"), out
        assert elapsed < 5.0
        after = wait_all_hosted(c, lab, exclude=(victim,))
        assert after[addr] != victim
    finally:
        p.kill()
        lab.link(victim, up=True)


def test_isolated_leader_lets_go_and_majority_takes_over(lab_cluster):
    """The leader is cut off (link down, no resets): it steps down and releases the
    cluster lock, the majority elects a leader that takes the lock, and the cut-off
    leader's addresses answer on the majority side."""
    c, lab = lab_cluster
    where = wait_all_hosted(c, lab)
    leader = c.status(0)["leader"]
    others = [p for p in range(3) if p != leader]
    t0 = time.monotonic()
    lab.link(leader, up=False)
    try:
        c.wait_for(lambda: all(c.status(p)["leader"] in others for p in others)
                   and len({c.status(p)["leader"] for p in others}) == 1, 20,
                   what="a new leader on the majority side")
        new = c.status(others[0])["leader"]
        assert c.status(new)["cluster_lock"]["held"]
        assert "lost touch with the majority" in c.log(leader)
        after = wait_all_hosted(c, lab, exclude=(leader,))
        for a in where:
            assert ask(lab, a) == f"host{after[a]}"
        elapsed = time.monotonic() - t0
        assert elapsed < 15
        # the isolated node does not lead again while cut off (the majority has the lock)
        time.sleep(1.0)
        assert not c.status(leader)["cluster_lock"]["held"]
    finally:
        lab.link(leader, up=True)
    c.wait_healthy(30)


def test_leader_cut_off_during_a_slow_recovery_lets_go_at_once(lab_cluster, tmp_path):
    """The leader is cut off while its recovery waits (its startrecovery script sleeps):
    it drops the silent members, aborts the recovery and lets go of the cluster lock at
    once, instead of holding it until the recovery's controls time out (bench/failover's
    13.7 s linkdown-leader outlier)."""
    c, lab = lab_cluster
    leader = c.status(0)["leader"]
    a, b = [p for p in range(3) if p != leader]
    started = tmp_path / "startrecovery-started"
    c.event_script(leader, "50.slow", f"""[ "$1" = startrecovery ] || exit 0
touch {started}; sleep 8; exit 0
""")
    c.cli(b, "stop", check=True)  # a recovery: b leaves the generation
    c.wait_for(started.exists, 10, what="the leader's startrecovery event")
    t0 = time.monotonic()
    lab.link(leader, up=False)
    try:
        c.wait_for(lambda: c.status(a)["leader"] == a
                   and c.status(a)["recovery_mode"] == "NORMAL", 30,
                   what=f"node {a} leading")
        elapsed = time.monotonic() - t0
        assert not c.status(leader)["cluster_lock"]["held"]
    finally:
        lab.link(leader, up=True)
    assert elapsed < 5.0, elapsed
    assert "leader: recovery aborted" in c.log(leader)
    c.cli(b, "continue", check=True)
    c.wait_healthy(30)


def test_node_without_leader_drops_its_addresses(tmp_path):
    """A node left without a leader for RecoveryDropAllIPs seconds releases its
    addresses, and takes them again once it leads again."""
    import fcntl
    lab = NetnsLab(1).create()
    try:
        c = LocalCluster(1, base_dir=tmp_path, lab=lab,
                         public_addresses=f"{lab.public_address(0)}/24 eth0\n",
                         tunables={"RecoveryDropAllIPs": "1"})
        with c:
            c.start()
            c.wait_healthy(20)
            c.wait_for(lambda: lab.public_address(0) in lab.addresses(0), 10)
            # replace the lock file by one someone else holds: the leader notices (its
            # lock no longer protects anything), steps down and cannot lead again
            os.unlink(c.lock_file)
            fd = os.open(c.lock_file, os.O_RDWR | os.O_CREAT)
            fcntl.lockf(fd, fcntl.LOCK_EX)
            try:
                c.wait_for(lambda: lab.public_address(0) not in lab.addresses(0), 20,
                           what="address dropped")
                assert "RecoveryDropAllIPs" in c.log(0)
            finally:
                os.close(fd)
            c.wait_for(lambda: lab.public_address(0) in lab.addresses(0), 20)
    finally:
        lab.destroy()


def test_failing_monitor_moves_addresses_away(tmp_path):
    lab = NetnsLab(3).create()
    try:
        pub = "".join(f"{lab.public_address(j)}/24 eth0\n" for j in range(NPUB))
        c = LocalCluster(3, base_dir=tmp_path / "c", lab=lab, public_addresses=pub,
                         tunables={"MonitorInterval": "1"})
        for p in range(3):
            c.event_script(p, "50.service", f"[ \"$1\" = monitor ] || exit 0\n"
                           f"[ -e {tmp_path}/down-{p} ] && exit 1\nexit 0\n")
        with c:
            c.start()
            c.wait_healthy(30)
            where = wait_all_hosted(c, lab)
            victim = next(iter(where.values()))
            open(tmp_path / f"down-{victim}", "w").close()
            after = wait_all_hosted(c, lab, exclude=(victim,))
            assert victim not in after.values()
            assert c.status(victim)["nodes"][victim]["state"] == "UNHEALTHY"
            os.unlink(tmp_path / f"down-{victim}")
            c.wait_healthy(15)
            c.wait_for(lambda: victim in wait_all_hosted(c, lab).values(), 15)
    finally:
        lab.destroy()


def test_graceful_shutdown_moves_addresses_first(lab_cluster):
    c, lab = lab_cluster
    where = wait_all_hosted(c, lab)
    leader = c.status(0)["leader"]
    for victim in (next(p for p in range(3) if p != leader and p in where.values()), leader):
        mine = [a for a, h in wait_all_hosted(c, lab).items() if h == victim]
        c.stop(victim)  # SIGTERM
        assert c.procs[victim].returncode == 0
        # the moment the agent has exited, its addresses are already elsewhere
        h = hosts_of(lab)
        for a in mine:
            assert h.get(a) and victim not in h[a], (a, h.get(a))
        assert "shutdown: moved" in c.log(victim)
        c.start_node(victim)
        c.wait_healthy(30)
        wait_all_hosted(c, lab)


# -- runtime changes of the public address lists: addip, delip, reloadips ---------------
def test_addip_is_taken_at_once_and_delip_releases_it(lab_cluster):
    c, lab = lab_cluster
    wait_all_hosted(c, lab)
    new = lab.public_address(10)
    # only node 1 lists it: when addip returns, the takeover run has put it there
    r = c.cli(0, "-n", "1", "addip", f"{new}/24", "eth0")
    assert r.returncode == 0, r.stderr
    assert hosts_of(lab).get(new) == [1]
    assert ask(lab, new) == "host1"
    r = c.cli(2, "ip", "all")
    assert f"{new} 1" in r.stdout.splitlines()
    # runtime only: the file is what it was (as CTDB's addip)
    with open(os.path.join(c.config_dir(1), "public_addresses")) as f:
        assert new not in f.read()
    # again: CTDB's answer, nothing changes
    r = c.cli(1, "addip", f"{new}/24", "eth0")
    assert r.returncode == 0 and f"Node already knows about IP {new}" in r.stderr
    # delip where it is hosted and nobody else lists it: released, gone everywhere
    r = c.cli(1, "delip", new)
    assert r.returncode == 0, r.stderr
    c.wait_for(lambda: new not in hosts_of(lab), 5, what=f"{new} released")
    assert new not in c.cli(0, "ip", "all").stdout
    wait_all_hosted(c, lab)  # the others did not move for it


def test_delip_of_hosted_address_moves_it_to_a_node_that_lists_it(lab_cluster):
    c, lab = lab_cluster
    new = lab.public_address(11)
    for p in (1, 2):
        assert c.cli(p, "addip", f"{new}/24", "eth0").returncode == 0
    c.wait_for(lambda: len(hosts_of(lab).get(new, [])) == 1, 5, what=f"{new} hosted")
    holder = hosts_of(lab)[new][0]
    other = 3 - holder
    seen = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen.append(tuple(hosts_of(lab).get(new, [])))
            time.sleep(0.005)
    t = threading.Thread(target=watch)
    t.start()
    try:
        r = c.cli(holder, "delip", new)
        assert r.returncode == 0, r.stderr
        c.wait_for(lambda: hosts_of(lab).get(new) == [other], 5, what=f"{new} on {other}")
    finally:
        stop.set()
        t.join()
    assert all(len(h) <= 1 for h in seen)  # never on two hosts
    assert ask(lab, new) == f"host{other}"
    # moveip refuses a node that does not list the address, and changes nothing
    r = c.cli(0, "moveip", new, str(holder))
    assert r.returncode == 1 and f"Node {holder} CANNOT host IP address {new}" in r.stderr
    assert hosts_of(lab).get(new) == [other]


def test_reloadips_applies_the_file_difference(lab_cluster):
    c, lab = lab_cluster
    where = wait_all_hosted(c, lab)
    gone = lab.public_address(0)
    new = lab.public_address(12)
    pub = "".join(f"{lab.public_address(j)}/24 eth0\n" for j in range(1, NPUB))
    for p in range(3):
        with open(os.path.join(c.config_dir(p), "public_addresses"), "w") as f:
            f.write(pub + f"{new}/24 eth0\n")
    r = c.cli(0, "reloadips", "all")
    assert r.returncode == 0, r.stderr
    h = hosts_of(lab)
    assert gone not in h
    assert len(h.get(new, [])) == 1
    assert ask(lab, new) == f"host{h[new][0]}"
    for a in where:
        if a != gone:
            assert len(h.get(a, [])) == 1
    ips = c.cli(1, "ip", "all", "--json")
    assert {e["address"] for e in __import__("json").loads(ips.stdout)["ips"]} == (
        {lab.public_address(j) for j in range(1, NPUB)} | {new})
    # a bad file is refused with its line, and nothing changes
    with open(os.path.join(c.config_dir(2), "public_addresses"), "a") as f:
        f.write("10.0.0.300/24 eth0\n")
    r = c.cli(0, "reloadips", "2")
    assert r.returncode == 1
    assert "public_addresses:5: invalid IP address" in r.stderr
    assert hosts_of(lab) == h


def kill_with_guard(c, pnn):
    """SIGKILL the agent and its guard (pyctdb.server.guard) together, as a killed
    control group would be: nothing drops the addresses. Both are stopped first (the
    agent, then its guard): killed one after the other, the agent could see its guard
    gone and release its addresses if this process were descheduled in between."""
    os.kill(c.procs[pnn].pid, signal.SIGSTOP)
    os.kill(c.guard_pid(pnn), signal.SIGSTOP)
    os.kill(c.guard_pid(pnn), signal.SIGKILL)
    c.kill(pnn)


def test_killed_agent_leaves_no_runtime_address_behind(lab_cluster):
    """An address added with addip is not in the public_addresses file; the agent records
    what it hosts, so --drop-public-ips after a SIGKILL (of the agent and its guard: see
    test_fencing_netns.py for the guard) removes it too, and so does the next agent when
    it starts without --drop-public-ips having run."""
    c, lab = lab_cluster
    wait_all_hosted(c, lab)
    leader = c.status(0)["leader"]
    victim = next(p for p in range(3) if p != leader)
    record = c.socket(victim)[:-len(".socket")] + ".hosted-ips"
    new = lab.public_address(13)
    assert c.cli(victim, "addip", f"{new}/24", "eth0").returncode == 0
    assert hosts_of(lab).get(new) == [victim]
    with open(record) as f:
        assert {"address": new, "prefix": 24, "interface": "eth0"} in json.load(f)["addresses"]
    kill_with_guard(c, victim)  # SIGKILL: the address stays on the interface
    assert hosts_of(lab).get(new) == [victim]
    r = drop_public_ips(c, lab, victim)
    assert r.returncode == 0, r.stderr
    assert f"removed {new}/24 from eth0" in r.stdout
    assert new not in hosts_of(lab)
    assert not os.path.exists(record)  # everything recorded is gone
    c.start_node(victim)
    c.wait_healthy(30)
    wait_all_hosted(c, lab)
    # killed again, and started again without --drop-public-ips in between
    assert c.cli(victim, "addip", f"{new}/24", "eth0").returncode == 0
    assert hosts_of(lab).get(new) == [victim]
    kill_with_guard(c, victim)
    c.start_node(victim)
    c.wait_for(lambda: new not in hosts_of(lab), 15, what=f"{new} removed by the new agent")
    assert f"{new} (recorded in {record}) was on eth0" in c.log(victim)
    c.wait_healthy(30)
    wait_all_hosted(c, lab)


def test_moveip_runs_ip_events_in_ctdb_order(lab_cluster, tmp_path):
    """As CTDB's moveip (tools/ctdb.c): releaseip on the old holder, takeip on the new
    one, each with CTDB's arguments, no startipreallocate (moveip is no takeover run);
    then ipreallocated on every node, as CTDB's moveip sends since 4.20 (4.17's sends
    none; scripts that act on it, 60.nfs among them, expect it after a move)."""
    c, lab = lab_cluster
    logs = [tmp_path / f"ev-{p}" for p in range(3)]
    for p in range(3):
        c.event_script(p, "90.log",
                       f"[ \"$1\" = monitor ] || echo \"$@\" >> {logs[p]}\nexit 0\n")
    where = wait_all_hosted(c, lab)
    # a takeover run still under way finishes before this one (runs are serialized)
    assert c.cli(0, "ipreallocate").returncode == 0
    for log in logs:
        if log.exists():
            log.unlink()
    addr, src = next(iter(where.items()))
    dst = (src + 1) % 3
    r = c.cli(0, "moveip", addr, str(dst))
    assert r.returncode == 0, r.stderr
    c.wait_for(lambda: all(logs[p].exists() and "ipreallocated" in logs[p].read_text()
                           for p in range(3)), 10, what="ipreallocated everywhere")
    ev = {p: logs[p].read_text().splitlines() for p in range(3)}
    assert ev[src] == [f"releaseip eth0 {addr} 24", "ipreallocated"]
    assert ev[dst] == [f"takeip eth0 {addr} 24", "ipreallocated"]
    third = 3 - src - dst
    assert ev[third] == ["ipreallocated"]


def test_interface_change_is_an_updateip(lab_cluster, tmp_path):
    """An address that must change interface on the node hosting it stays there and
    moves interface with CTDB's updateip event (no release, no take): after reloadips
    lists another interface for it, and when its interface goes down while another
    listed one is up."""
    c, lab = lab_cluster
    # a takeover run still under way (start-up failback) finishes first: the address
    # chosen stays on node 0
    assert c.cli(0, "ipreallocate").returncode == 0
    where = wait_all_hosted(c, lab)
    addr = next(a for a, h in where.items() if h == 0)
    ns = lab.host_ns(0)
    log = tmp_path / "ev-0"
    c.event_script(0, "90.log", f"[ \"$1\" = monitor ] || echo \"$@\" >> {log}\nexit 0\n")
    # a second interface on host 0 (a veth pair inside its namespace: no dummy module)
    subprocess.run(["ip", "-n", ns, "link", "add", "eth1", "type", "veth", "peer", "name",
                    "eth1p"], check=True)
    for i in ("eth1", "eth1p"):
        subprocess.run(["ip", "-n", ns, "link", "set", i, "up"], check=True)

    def on(iface):
        out = subprocess.run(["ip", "-n", ns, "-4", "-o", "addr", "show", "dev", iface],
                             capture_output=True, text=True, check=True).stdout
        return [line.split()[3].split("/")[0] for line in out.splitlines()]

    def listing(ifaces):
        pub = "".join(f"{lab.public_address(j)}/24 "
                      f"{ifaces if lab.public_address(j) == addr else 'eth0'}\n"
                      for j in range(NPUB))
        with open(os.path.join(c.config_dir(0), "public_addresses"), "w") as f:
            f.write(pub)
        r = c.cli(0, "reloadips", "0")
        assert r.returncode == 0, r.stderr

    listing("eth1")
    c.wait_for(lambda: addr in on("eth1") and addr not in on("eth0"), 10,
               what=f"{addr} moved to eth1")
    c.wait_for(lambda: log.exists() and "updateip" in log.read_text(), 10, what="updateip")
    lines = log.read_text().splitlines()
    assert f"updateip eth0 eth1 {addr} 24" in lines, lines
    assert not any(x.startswith(("releaseip", "takeip")) and f" {addr} " in x
                   for x in lines), lines
    assert hosts_of(lab).get(addr, []) == []  # (hosts_of reads eth0 only) on no eth0
    log.unlink()

    # its interface goes down while another listed one is up: back on eth0
    listing("eth1,eth0")
    subprocess.run(["ip", "-n", ns, "link", "set", "eth1", "down"], check=True)
    c.wait_for(lambda: addr in on("eth0") and addr not in on("eth1"), 10,
               what=f"{addr} back on eth0")
    c.wait_for(lambda: log.exists() and "updateip" in log.read_text(), 10, what="updateip")
    assert f"updateip eth1 eth0 {addr} 24" in log.read_text().splitlines()
    assert hosts_of(lab)[addr] == [0]
    assert ask(lab, addr) == "host0"


def test_addresses_move_while_the_databases_recover(lab_cluster, tmp_path):
    """A recovery's takeover run starts right after startrecovery, beside the databases'
    recovery: a killed node's addresses are taken before a slow database recovery ends.
    Events on every node: startrecovery, then startipreallocate, takeip, ipreallocated,
    and recovered after the databases."""
    from pyctdb.protocol import backup as B
    from pyctdb.rules import records as L
    c, lab = lab_cluster
    bak = tmp_path / "big.tdb.bak"  # a volatile database the leader takes a while to merge
    B.write(str(bak), "big.tdb", False, 0,
            [(f"key-{i:08d}".encode(), L.Record(1, 0, 0, b"v" * 100)) for i in range(50000)])
    r = c.cli(0, "restoredb", str(bak))
    assert r.returncode == 0, r.stderr
    logs = [tmp_path / f"ev-{p}" for p in range(3)]
    for p in range(3):
        c.event_script(p, "90.log",
                       f"[ \"$1\" = monitor ] || echo \"$@\" >> {logs[p]}\nexit 0\n")
    where = wait_all_hosted(c, lab)
    leader = c.status(0)["leader"]
    assert c.cli(leader, "ipreallocate").returncode == 0  # no run under way any more
    victim = next(p for p in sorted(set(where.values())) if p != leader)
    moved = sorted(a for a, h in where.items() if h == victim)
    for log in logs:
        if log.exists():
            log.unlink()
    c.kill(victim)
    drop_public_ips(c, lab, victim)
    others = [p for p in range(3) if p != victim]
    c.wait_for(lambda: all(logs[p].exists() and "recovered" in (t := logs[p].read_text())
                           and "ipreallocated" in t for p in others), 30,
               what="recovered and ipreallocated on the survivors")
    after = wait_all_hosted(c, lab, exclude=(victim,))
    assert all(after[a] != victim for a in moved)
    m = re.findall(r"recovery: \d+ databases, (\d+) records merged and pushed to "
                   r"\[[\d, ]+\] in ([\d.]+) ms", c.log(leader))
    assert int(m[-1][0]) == 50000
    for p in others:
        ev = [line.split()[0] for line in logs[p].read_text().splitlines()]
        assert ev[0] == "startrecovery", ev
        assert ev.index("startipreallocate") < ev.index("ipreallocated"), ev
        assert ev.index("recovered") > ev.index("startrecovery"), ev
        takes = [i for i, e in enumerate(ev) if e == "takeip"]
        assert all(ev.index("startipreallocate") < i < ev.index("ipreallocated")
                   for i in takes), ev
    # the addresses moved before the databases were recovered
    takers = {after[a] for a in moved}
    for p in takers:
        ev = [line.split()[0] for line in logs[p].read_text().splitlines()]
        assert ev.index("takeip") < ev.index("recovered"), (ev, float(m[-1][1]))
    c.start_node(victim)
    c.wait_healthy(30)


# -- address fencing (issue 11) ---------------------------------------------------------------
KEEPALIVES = {
    "ctdb": {"KeepaliveInterval": "5", "KeepaliveLimit": "5"},  # CTDB's defaults
    "fast": {"KeepaliveInterval": "0.2", "KeepaliveLimit": "3"},  # the lab's
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("keepalive", sorted(KEEPALIVES))
def test_isolated_leader_never_configures_an_address_the_majority_serves(tmp_path,
                                                                         keepalive):
    """The leader is cut off (link down, no resets). With CTDB's keepalive tunables
    (5 s x 5) its periodic takeover runs find the peers connected but silent: it must
    not take their addresses (it took all of them at ~4 s before the fencing). With fast
    ones it drops them and steps down: a run under way must not finish after that.
    Polled every ~50 ms for the whole partition, the isolated node never gains an
    address, so never one that the majority serves. After the heal, every address is on
    exactly one host."""
    npub = 6
    lab = NetnsLab(3).create()
    try:
        pubs = [lab.public_address(j) for j in range(npub)]
        c = LocalCluster(3, base_dir=tmp_path / "c", lab=lab,
                         public_addresses="".join(f"{a}/24 eth0\n" for a in pubs),
                         tunables=KEEPALIVES[keepalive])
        with c:
            c.start()
            c.wait_healthy(60)

            def placed():
                h = hosts_of(lab)
                return {a: h.get(a, []) for a in pubs}
            c.wait_for(lambda: all(len(hs) == 1 for hs in placed().values()), 30,
                       what="every address on one host")
            leader = c.status(0)["leader"]
            majority = [p for p in range(3) if p != leader]
            at_cut = set(lab.addresses(leader)) & set(pubs)
            gained, both, sweeps = [], [], [0]
            stop = threading.Event()

            def watch():
                while not stop.is_set():
                    mine = set(lab.addresses(leader)) & set(pubs)
                    theirs = set()
                    for p in majority:
                        theirs |= set(lab.addresses(p))
                    new = mine - at_cut
                    if new:
                        gained.append((time.monotonic() - t0, sorted(new)))
                    if new & theirs:
                        both.append((time.monotonic() - t0, sorted(new & theirs)))
                    sweeps[0] += 1
                    time.sleep(0.05)

            t0 = time.monotonic()
            lab.link(leader, up=False)
            t = threading.Thread(target=watch)
            t.start()
            try:
                # the isolated leader lets go of the lock; the majority elects a leader
                # and takes over the cut-off node's addresses
                c.wait_for(lambda: "lost touch with the majority" in c.log(leader), 60,
                           interval=0.5, what="the isolated leader stepping down")
                stepped_down = time.monotonic() - t0

                def majority_serves_all():
                    h = placed()
                    return all(any(p in hs for p in majority) for hs in h.values())
                c.wait_for(majority_serves_all, 40, interval=0.2,
                           what="the majority serving every address")
                took_over = time.monotonic() - t0
                time.sleep(12)  # a periodic run's worth more of partition
            finally:
                stop.set()
                t.join()
                lab.link(leader, up=True)
            log = c.log(leader)
            assert sweeps[0] > 100
            assert not gained, gained  # the isolated leader never took an address
            assert not both, both
            if keepalive == "ctdb":  # its runs met silent peers, kept what they may serve
                assert "did not report its addresses" in log
                assert re.search(r"takeover: not moving \S+: holder", log), log[-3000:]
            print(f"stepped down at {stepped_down:.1f} s, majority serves all at "
                  f"{took_over:.1f} s, {sweeps[0]} sweeps")
            c.wait_healthy(60)
            c.wait_for(lambda: all(len(hs) == 1 for hs in placed().values()), 30,
                       what="every address on exactly one host after the heal")
    finally:
        lab.destroy()
