"""Real agents with an authenticated transport (LocalCluster writes a random key to every
node's cluster.key): what a process without the key can do (nothing: no link, no
control, no event script, no flag), replays of captured frames, the memory of
unauthenticated connections, a key rotation without downtime, and clusters with no key
or with keys on some nodes only."""

import json
import os
import socket
import time

import pytest

from pyctdb.common.config import load_config
from pyctdb.protocol import auth
from pyctdb.protocol import frames as P
from pyctdb.server.membership import nodes_digest
from pyctdb.testing.localcluster import LocalCluster

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def cluster3(tmp_path):
    with LocalCluster(3, base_dir=tmp_path) as c:
        c.start()
        c.wait_healthy(30)
        yield c


def _closed(s, timeout=5):
    """The agent closes the connection within ``timeout`` (what it sends is skipped: a
    CHALLENGE)."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            if s.recv(4096) == b"":
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        pass
    return False


def _rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _digest(c):
    return nodes_digest(load_config(c.config_dir(0)).nodes)


def _lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def _control(op, args, req_id=1):
    return P.encode(P.MsgType.CONTROL, {"pnn": 1, "instance": "fake-instance", "req_id": req_id,
                                        "op": op, "args": args})


def _kill_node1(c):
    c.kill(1)
    c.wait_for(lambda: "DISCONNECTED" in c.status(0)["nodes"][1]["state"], 10)


def _spy_script(c, tmp_path):
    """An event script on node 0 that records every updateip event's arguments."""
    out = str(tmp_path / "ran")
    c.event_script(0, "50.spy", f'[ "$1" = updateip ] && echo "$@" >> {out}\nexit 0\n')
    return out


def test_status_and_log_say_the_transport_is_authenticated(cluster3):
    c = cluster3
    st = json.loads(c.cli_ok(0, "status", "--json"))
    assert st["transport"] == {"authenticated": True}
    assert "transport" not in c.cli_ok(0, "status") and "transport" not in c.cli_ok(
        0, "status", "-X")
    assert f"transport authenticated ({c.key_file(0)}): connecting with key id " \
        f"{auth.key_id(c.key)}" in c.log(0)
    assert "transport not authenticated" not in c.log(0)


def test_without_a_key_the_cluster_works_and_warns(tmp_path):
    with LocalCluster.healthy_cluster(2, tmp_path, key=None) as c:
        st = json.loads(c.cli_ok(0, "status", "--json"))
        assert st["transport"] == {"authenticated": False}
        assert "WARNING: transport not authenticated: no transport key file; anyone who " \
            f"reaches port {c.port} of {c.address(0)} can act as a node" in c.log(0)
        assert c.cli(0, "ping", "1").returncode == 0


def test_keyed_and_unkeyed_nodes_refuse_each_other(tmp_path):
    with LocalCluster(3, base_dir=tmp_path, key={0: os.urandom(32), 2: None}) as c:
        c.key[1] = c.key[0]
        c.write_key(1, c.key[0])
        c.start()
        c.wait_for(lambda: [n["state"].split("|")[0] for n in c.status(0)["nodes"]] ==
                   ["OK", "OK", "DISCONNECTED"], 30)
        c.wait_for(lambda: "node 2 connects without authentication, but this node requires "
                   "the transport key" in c.log(0), 10)
        c.wait_for(lambda: "node 0 connects with an authenticated transport (protocol "
                   "version 2), but this node has no transport key file" in c.log(2), 10)
        assert c.running(2) and "DISCONNECTED" in c.status(2)["nodes"][0]["state"]
        assert "Traceback" not in c.log(0) + c.log(2)



def _try_send(s, frame):
    """Send ``frame``, unless the agent has already closed the connection (what it does
    to a refused peer: sending then fails with EPIPE or ECONNRESET, which is fine)."""
    try:
        s.send(frame)
    except (BrokenPipeError, ConnectionResetError):
        pass


def test_a_process_without_the_key_cannot_act_as_a_node(cluster3, tmp_path):
    """Bound to node 1's address (its agent killed): a version 1 HELLO, a key of its own,
    the real key's id with a wrong proof. No link comes up, no control runs: no event
    script, no flag changed."""
    c = cluster3
    ran = _spy_script(c, tmp_path)
    _kill_node1(c)
    digest = _digest(c)
    listener = c.peer_listen(1, key=os.urandom(32))  # and in node 1's place
    since = len(c.log(0))
    try:
        attempts = []
        s = c.peer_connect(1, 0, digest, key=None)  # no key: version 1
        _try_send(s, _control("admin", {"action": "disable"}))
        _try_send(s, _control("run_event", {"event": "updateip", "args": ["$(id)"]}, 2))
        attempts.append(s)
        with pytest.raises(ConnectionError):  # a key of its own
            c.peer_connect(1, 0, digest, key=os.urandom(32))
        s = c.peer_connect(1, 0, digest, key=os.urandom(32), key_id=auth.key_id(c.key),
                           check=False)  # the real key's id, without the key
        assert s.challenge is not None
        _try_send(s, _control("admin", {"action": "disable"}))
        attempts.append(s)
        for s in attempts:
            assert _closed(s.sock)
            s.close()
        # (each refusal is logged once it happens: waited for, not slept for, so that a
        # loaded machine, and node 0's reconnect back-off, get their time)
        for line in ("node 1 connects without authentication",
                     "which is not a key of this node",
                     "node 1 did not prove that it holds the transport key",
                     "refusing node 1"):  # (the last: node 0's own connection to the impostor)
            c.wait_for(lambda: line in c.log(0), 15, what=f"{line!r} in node 0's log")
        st = c.status(0)
        assert st["nodes"][0]["state"] == "OK" and "DISCONNECTED" in st["nodes"][1]["state"]
        assert _lines(ran) == []
        log = c.log(0)
        assert f"node 1 ({c.address(1)}) connected" not in log[since:]
        assert listener.accepted == []
        assert "Traceback" not in log
    finally:
        listener.close()
    c.start_node(1)
    c.wait_healthy(30)


def test_a_hello_without_an_instance_is_refused(cluster3, tmp_path):
    """A HELLO with an empty instance id (frames with an empty session id ran a command
    once): refused at the handshake, with the key; nothing runs."""
    c = cluster3
    ran = _spy_script(c, tmp_path)
    _kill_node1(c)
    listener = c.peer_listen(1)
    try:
        with pytest.raises(ConnectionError):
            peer = c.peer_connect(1, 0, _digest(c), instance="")
            peer.send(P.encode(P.MsgType.CONTROL, {
                "pnn": 1, "instance": "", "req_id": 1, "op": "run_event",
                "args": {"event": "updateip", "args": ["empty"]}}))
            assert _closed(peer.sock)
            raise ConnectionError("closed")
        c.wait_for(lambda: "HELLO with an instance id of 0 characters" in c.log(0), 10)
        time.sleep(0.3)
        assert _lines(ran) == []
        assert "Traceback" not in c.log(0)
    finally:
        listener.close()
    c.start_node(1)
    c.wait_healthy(30)


def test_captured_frames_replayed_are_refused(cluster3, tmp_path):
    """A process with the key acts as node 1 and has node 0 run an event script once;
    its frames, replayed on the same connection, on a new one, and with the whole
    captured handshake, run nothing more."""
    c = cluster3
    ran = _spy_script(c, tmp_path)
    _kill_node1(c)
    digest = _digest(c)
    listener = c.peer_listen(1)
    try:
        peer = c.peer_connect(1, 0, digest)
        c.wait_for(lambda: 0 in listener.accepted, 30, what="node 0 connected to node 1")
        frame = peer.send(_control("run_event", {"event": "updateip", "args": ["once"]}))
        c.wait_for(lambda: _lines(ran) == ["updateip once"], 10, what="the event ran")
        # the same frame again on the same connection: out of sequence
        peer.sock.sendall(frame)
        assert _closed(peer.sock)
        # on a new connection (its own session key): bad MAC
        peer2 = c.peer_connect(1, 0, digest)
        peer2.sock.sendall(frame)
        assert _closed(peer2.sock)
        # the whole captured stream, handshake included: node 0's nonce is new
        s = socket.create_connection((c.address(0), c.port), timeout=5,
                                     source_address=(c.address(1), 0))
        s.sendall(peer.handshake + frame)
        assert _closed(s)
        time.sleep(0.5)
        assert _lines(ran) == ["updateip once"]
        log = c.log(0)
        assert "frame out of sequence (number 1, expected 2): replayed" in log
        assert "frame 1 has a bad MAC" in log
        assert "node 1 did not prove that it holds the transport key" in log
        assert "Traceback" not in log
        for x in (peer, peer2):
            x.close()
        s.close()
    finally:
        listener.close()
    c.start_node(1)
    c.wait_healthy(30)


def test_unauthenticated_connections_cannot_inflate_memory(cluster3):
    """The issue's attack: 128 connections that each announce a 4 MiB frame (and send as
    much of it as the kernel takes). The agent refuses them from the header, holds at
    most 64 connections in their handshake, and its RSS stays within 30 MiB."""
    c = cluster3
    pid = c.procs[0].pid
    gen = c.status(0)["generation"]
    before = _rss_kib(pid)
    chunk = b"\0" * (256 * 1024)
    socks = []
    for i in range(128):
        src = f"127.0.0.{1 + i // 4}"
        try:
            s = socket.create_connection((c.address(0), c.port), timeout=2,
                                         source_address=(src, 0))
        except OSError:
            continue
        s.setblocking(False)
        version = 1 + i % 2
        try:
            s.send(P.HEADER.pack(P.MAGIC, version, P.MsgType.HELLO, P.MAX_PAYLOAD, 0))
        except OSError:
            pass
        socks.append(s)
    peak = before
    t_end = time.monotonic() + 3.0
    while time.monotonic() < t_end:
        for s in socks:
            try:
                s.send(chunk)
            except OSError:
                pass
        peak = max(peak, _rss_kib(pid))
        time.sleep(0.02)
    for s in socks:
        s.close()
    print(f"agent RSS {before} KiB before, {peak} KiB at most during the attack")
    assert len(socks) >= 100
    assert (peak - before) < 30 * 1024, (before, peak)
    st = c.status(0)
    assert st["healthy"] and st["generation"] == gen and c.running(0)
    assert c.cli(0, "ping", "2").returncode == 0
    log = c.log(0)
    assert "oversized frame: 4194304 bytes (limit 4096)" in log
    assert "Traceback" not in log


def test_a_key_rotation_without_downtime(cluster3):
    """The new key added second on every node, then moved first, then the old one
    dropped: no link goes down; a node restarted at the end links with the new key
    only."""
    c = cluster3
    old, new = c.key, os.urandom(32)
    gen = c.status(0)["generation"]
    for text in (f"{old.hex()}\n{new.hex()}\n", f"{new.hex()}\n{old.hex()}\n", new.hex()):
        for p in range(3):
            c.write_key(p, text + "\n")
            time.sleep(0.2)
        time.sleep(1.2)  # (the files are looked at again at most every second)
        st = c.status(0)
        assert st["healthy"] and st["generation"] == gen
    c.key = new
    c.stop(2)
    c.start_node(2)
    c.wait_healthy(30)
    c.wait_for(lambda: "transport key file " + c.key_file(0) + " read again: connecting "
               f"with key id {auth.key_id(new)}, accepting {auth.key_id(new)}" in c.log(0), 10)
    assert f"connecting with key id {auth.key_id(new)}, accepting {auth.key_id(new)}" \
        in c.log(2)


def test_deeply_nested_json_is_refused_without_a_traceback(cluster3):
    """Before the handshake (a HELLO) and after it (a peer with the key): the frame is
    refused with a line in the log, never a traceback."""
    c = cluster3
    s = socket.create_connection((c.address(0), c.port), timeout=5,
                                 source_address=("127.0.0.1", 0))
    body = b"[" * 4000
    s.sendall(P.HEADER.pack(P.MAGIC, 2, P.MsgType.HELLO, len(body), 0) + body)
    assert _closed(s)
    s.close()
    _kill_node1(c)
    peer = c.peer_connect(1, 0, _digest(c))
    body = b'{"a":' * 100000
    peer.send(P.HEADER.pack(P.MAGIC, 1, P.MsgType.CONTROL, len(body), 0) + body)
    assert _closed(peer.sock)
    peer.close()
    log = c.log(0)
    assert log.count("payload is JSON nested too deeply") == 2
    assert "Traceback" not in log and c.status(0)["nodes"][0]["state"] == "OK"
    c.start_node(1)
    c.wait_healthy(30)
