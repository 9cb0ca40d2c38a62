"""The cluster lock on a real 3-member etcd cluster (Debian's etcd-server), held by
pyctdb's etcd mutex helper (pyctdb.server.etcdlock).

Each node's helper reaches the etcd members through proxies of its own in this test
process, so one node can be cut off from etcd (its proxies black-hole: nothing is
refused, nothing answers) while its peers, and etcd's quorum, are untouched.
"""

import base64
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from pyctdb.testing.localcluster import LocalCluster
from test_lock import lock_helper_of  # same directory

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("etcd") is None,
                       reason="etcd is not installed (Debian's etcd-server; "
                              "scripts/setup-host.sh installs it)"),
]

TTL = 4


def _free_port(host):
    for _ in range(200):
        port = random.randint(20000, 60000)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


class EtcdCluster:
    """``n`` etcd members on 127.0.S.11.. with temporary data directories."""

    def __init__(self, n, base_dir):
        self.base_dir = base_dir
        self.subnet = random.randint(20, 250)
        self.names = [f"m{i}" for i in range(n)]
        self.hosts = [f"127.0.{self.subnet}.{11 + i}" for i in range(n)]
        self.client_ports = [_free_port(h) for h in self.hosts]
        self.peer_ports = [_free_port(h) for h in self.hosts]
        self.procs = {}

    def client_url(self, i):
        return f"http://{self.hosts[i]}:{self.client_ports[i]}"

    def start(self):
        initial = ",".join(f"{m}=http://{h}:{p}" for m, h, p in
                           zip(self.names, self.hosts, self.peer_ports))
        for i, name in enumerate(self.names):
            peer = f"http://{self.hosts[i]}:{self.peer_ports[i]}"
            log = open(os.path.join(self.base_dir, f"etcd-{name}.log"), "ab")
            self.procs[i] = subprocess.Popen(
                ["etcd", "--name", name, "--data-dir", os.path.join(self.base_dir, name),
                 "--listen-client-urls", self.client_url(i),
                 "--advertise-client-urls", self.client_url(i),
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", initial, "--initial-cluster-state", "new",
                 "--initial-cluster-token", f"pyctdb-test-{self.subnet}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
        deadline = time.monotonic() + 30
        while not all(self.healthy(i) for i in self.procs):
            if time.monotonic() > deadline:
                raise TimeoutError("etcd cluster did not become healthy")
            time.sleep(0.2)
        return self

    def healthy(self, i):
        try:
            with urllib.request.urlopen(self.client_url(i) + "/health", timeout=1) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def kill(self, i):
        p = self.procs.get(i)
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()

    def get(self, key):
        """The value of ``key`` (str) read from any live member, or None."""
        for i in self.procs:
            if self.procs[i].poll() is not None:
                continue
            req = urllib.request.Request(
                self.client_url(i) + "/v3/kv/range",
                json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode())
            try:
                with urllib.request.urlopen(req, timeout=2) as r:
                    kvs = json.loads(r.read()).get("kvs", [])
            except OSError:
                continue
            return base64.b64decode(kvs[0]["value"]).decode() if kvs else None
        return None

    def stop(self):
        for i in list(self.procs):
            self.kill(i)


class Proxy:
    """A TCP forwarder to ``target``; ``cut = True`` black-holes it: connections stay
    open and new ones are accepted, but no byte gets through either way."""

    def __init__(self, target):
        self.target = target
        self.cut = False
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.socks = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.socks.append(conn)
            if self.cut:
                continue
            try:
                up = socket.create_connection(self.target, timeout=2)
            except OSError:
                conn.close()
                continue
            self.socks.append(up)
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not self.cut:
                    dst.sendall(data)
        except OSError:
            pass
        if not self.cut:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.closed = True
        self.server.close()
        for s in self.socks:
            s.close()


@pytest.fixture
def etcd(tmp_path):
    c = EtcdCluster(3, str(tmp_path))
    try:
        yield c.start()
    finally:
        c.stop()


def test_leader_holds_the_etcd_lock_survives_a_member_loss_and_steps_down_when_cut_off(
        tmp_path, etcd):
    key = f"/pyctdb-test/{etcd.subnet}/cluster-lock"
    # node p's proxies, its own member first (as a node would list its nearest member)
    proxies = {p: [Proxy((etcd.hosts[m], etcd.client_ports[m]))
                   for m in [p] + [m for m in range(3) if m != p]] for p in range(3)}
    try:
        with LocalCluster(3, base_dir=tmp_path / "c", lock=False) as c:
            for p in range(3):
                endpoints = ",".join(f"http://127.0.0.1:{x.port}" for x in proxies[p])
                line = (f"cluster lock = !{sys.executable} -m pyctdb.server.etcdlock "
                        f"--endpoints {endpoints} --key {key} --ttl {TTL}\n")
                path = os.path.join(c.config_dir(p), "pyctdb.conf")
                with open(path) as f:
                    text = f.read().replace("[cluster]\n", "[cluster]\n" + line, 1)
                with open(path, "w") as f:
                    f.write(text)
            c.start()
            c.wait_healthy(30)
            leader = c.status(0)["leader"]
            st = c.status(leader)
            assert st["cluster_lock"]["held"] and "etcdlock" in st["cluster_lock"]["lock"]
            holder = etcd.get(key)
            assert holder and holder.endswith(f"pid {_helper_pid(c, leader)}")
            others = [p for p in range(3) if p != leader]
            assert not any(c.status(p)["cluster_lock"]["held"] for p in others)

            # 1. the etcd member the leader's helper talks to dies: etcd keeps its
            # quorum, the helper goes on with the next member, the leader keeps leading
            etcd.kill(leader)
            t_end = time.monotonic() + 2 * TTL
            while time.monotonic() < t_end:
                assert c.status(leader)["cluster_lock"]["held"], c.log(leader)[-2000:]
                time.sleep(0.2)
            c.wait_healthy(10)
            assert c.status(0)["leader"] == leader and etcd.get(key) == holder

            # 2. the leader is cut off from etcd (not from its peers): its helper lets go
            # within 2/3 of the TTL, the leader steps down, another node takes the lock
            # once the lease has expired in etcd, and leads
            for x in proxies[leader]:
                x.cut = True
            t0 = time.monotonic()
            c.wait_for(lambda: "no longer the leader" in c.log(leader), 3 * TTL,
                       what="the cut-off leader stepping down")
            stepped_down = time.monotonic() - t0
            assert stepped_down < TTL  # before etcd can expire the lease
            c.wait_for(lambda: c.leader_of(others[0]) in others
                       and c.leader_of(others[1]) == c.leader_of(others[0]), 30,
                       what="a new leader among the nodes that reach etcd")
            new = c.leader_of(others[0])
            assert c.status(new)["cluster_lock"]["held"]
            assert etcd.get(key).endswith(f"pid {_helper_pid(c, new)}")
            assert not c.status(leader)["cluster_lock"]["held"]
    finally:
        for ps in proxies.values():
            for x in ps:
                x.close()



def _helper_pid(c, pnn):
    """The pid of node ``pnn``'s etcd lock helper (a child of its agent)."""
    return lock_helper_of(c.procs[pnn].pid, b"pyctdb.server.etcdlock")

def _helper(etcd, key, *more):
    p = subprocess.Popen([sys.executable, "-m", "pyctdb.server.etcdlock", "--endpoints",
                          ",".join(etcd.client_url(i) for i in range(3)), "--key", key,
                          "--ttl", str(TTL), *more],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return p, p.stdout.read(1)


def test_etcd_helper_contention_release_and_deleted_key(etcd):
    """Two helpers on one key: the second answers 1 and leaves nothing behind (CTDB's
    ctdb_etcd_lock leaves a key per failed try, so a node retrying more often than the
    TTL never gets the lock); SIGTERM frees the key at once, SIGKILL after the TTL;
    deleting the key takes the lock from its holder."""
    key = f"/pyctdb-test/{etcd.subnet}/helper"
    procs = []
    try:
        first, a = _helper(etcd, key)
        procs.append(first)
        assert a == b"0" and etcd.get(key).endswith(f"pid {first.pid}")
        for _ in range(5):  # tries faster than the TTL
            p, b = _helper(etcd, key)
            procs.append(p)
            assert b == b"1" and p.wait(5) == 0
        first.terminate()
        first.wait(5)
        second, b = _helper(etcd, key)  # at once: nothing left behind
        procs.append(second)
        assert b == b"0"
        second.kill()  # no revoke: the lease runs out
        second.wait()
        t0 = time.monotonic()
        while True:
            third, c = _helper(etcd, key)
            procs.append(third)
            if c == b"0":
                break
            assert time.monotonic() - t0 < TTL + 3
            time.sleep(0.2)
        assert time.monotonic() - t0 > TTL / 2
        req = urllib.request.Request(etcd.client_url(1) + "/v3/kv/deleterange", json.dumps(
            {"key": base64.b64encode(key.encode()).decode()}).encode())
        urllib.request.urlopen(req, timeout=2).read()
        assert third.wait(TTL) == 0
        assert b"deleted or taken over" in third.stderr.read()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def test_etcd_helper_answers_3_when_no_endpoint_answers(tmp_path):
    port = _free_port("127.0.0.1")
    p = subprocess.run([sys.executable, "-m", "pyctdb.server.etcdlock", "--endpoints",
                        f"http://127.0.0.1:{port}"], capture_output=True, timeout=20)
    assert p.stdout == b"3" and b"cannot take" in p.stderr
