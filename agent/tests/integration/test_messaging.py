"""Cluster-wide messaging (srvids) between real agents on 127.0.X.Y."""

import base64
import json
import socket
import subprocess
import sys
import time

import pytest

from pyctdb.protocol import frames as P
from pyctdb.client.connection import ApiCallError
from pyctdb.client import Messenger
from pyctdb.testing.localcluster import AGENT_DIR, LocalCluster
from test_cluster import _closed  # noqa: E402 (same directory)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    with LocalCluster.healthy_cluster(3, tmp_path_factory.mktemp("msg")) as cl:
        yield cl


def _nothing_more(m, wait=0.3):
    return m.receive(wait) is None


def test_message_from_node0_to_node2_binary_intact(c):
    data = b"\x00\xff\xfe\x80 NUL and non-UTF-8 \x00\xc3\x28" + bytes(range(256))
    with Messenger(c.socket(2)) as rx, Messenger(c.socket(0)) as tx:
        assert rx.register(2 ** 64 - 1) is True
        assert rx.register(2 ** 64 - 1) is False  # already registered: no change
        assert tx.send(2, 2 ** 64 - 1, data) == [2]
        msg = rx.receive(5)
        assert msg is not None
        assert (msg.src, msg.srvid, msg.data, msg.dropped) == (0, 2 ** 64 - 1, data, 0)
        assert _nothing_more(rx)
        # empty data, and to this node itself
        assert rx.send(2, 2 ** 64 - 1) == [2]
        assert rx.receive(5) == (2 ** 64 - 1, 2, b"", 0)


def test_broadcast_reaches_every_registered_client_exactly_once(c):
    clients = [Messenger(c.socket(p)).connect() for p in (0, 1, 1, 2)]
    other = Messenger(c.socket(2)).connect()  # registered for another srvid
    try:
        for m in clients:
            m.register(77)
        other.register(78)
        for p in range(3):
            c.wait_for(lambda: c.call(p, "message_check", srvids=[77])["srvids"][0]
                       ["registered"], 5)
        with Messenger(c.socket(0)) as tx:
            assert tx.broadcast(77, b"to all") == [0, 1, 2]
            assert tx.broadcast(77, b"to connected", connected_only=True) == [0, 1, 2]
        for m in clients:
            got = [m.receive(5), m.receive(5)]
            assert [(g.src, g.data) for g in got] == [(0, b"to all"), (0, b"to connected")]
            assert _nothing_more(m, 0.2)
        assert _nothing_more(other, 0.1)
    finally:
        for m in clients + [other]:
            m.close()


def test_unregistered_srvid_is_dropped_silently(c):
    before = c.call(1, "message_status")["stats"]["unregistered"]
    with Messenger(c.socket(0)) as tx:
        assert tx.send(1, 999, b"nobody listens") == [1]
        assert tx.send(0, 999, b"nor here") == [0]
    c.wait_for(lambda: c.call(1, "message_status")["stats"]["unregistered"] == before + 1, 5)
    assert all(c.running(p) for p in range(3))
    assert c.status(1)["healthy"]


def test_disconnect_removes_registration(c):
    def registered(p, srvid):
        return c.call(p, "message_check", srvids=[srvid])["srvids"][0]["registered"]
    m = Messenger(c.socket(2)).connect()
    m.register(4242)
    m.register(4243)
    assert registered(2, 4242) and not registered(1, 4242)
    m.deregister(4243)
    assert not registered(2, 4243)
    with pytest.raises(ApiCallError) as ei:
        m.deregister(4243)
    assert ei.value.code == "ENOENT"
    m.close()
    c.wait_for(lambda: not registered(2, 4242), 5, what="registration gone")
    assert c.call(2, "message_status")["srvids"] == []


@pytest.mark.parametrize("args,code", [
    ({"pnn": 1, "srvid": -1, "data": ""}, "EINVAL"),
    ({"pnn": 1, "srvid": 2 ** 64, "data": ""}, "EINVAL"),
    ({"pnn": 1, "srvid": "7", "data": ""}, "EINVAL"),
    ({"pnn": 1, "srvid": 7, "data": "**"}, "EINVAL"),
    ({"pnn": 1, "srvid": 7, "data": b"x".hex()}, "EINVAL"),
    ({"pnn": 9, "srvid": 7, "data": ""}, "ENOENT"),
    ({"pnn": "everyone", "srvid": 7, "data": ""}, "EINVAL"),
    ({"pnn": 1, "srvid": 7, "data": "A" * 700000}, "E2BIG"),
    ({"srvid": 7}, "EINVAL"),
])
def test_bad_requests(c, args, code):
    with pytest.raises(ApiCallError) as ei:
        c.call(0, "message_send", **args)
    assert ei.value.code == code
    with pytest.raises(ApiCallError) as ei:
        c.call(0, "message_register", srvid=True)
    assert ei.value.code == "EINVAL"


def test_quiet_sends_are_answered_only_when_they_fail(c):
    with Messenger(c.socket(1)) as rx, Messenger(c.socket(0)) as tx:
        rx.register(56)
        for i in range(100):
            tx.send(1, 56, b"%d" % i, wait=False)
        tx.send(9, 56, b"nowhere", wait=False)          # no node 9: ENOENT
        tx.send(1, 56, b"last", wait=False)
        assert tx.call("pnn") == {"pnn": 0}  # its answer is told apart from the error's
        assert [e.code for e in tx.send_errors] == ["ENOENT"]
        got = [rx.receive(5).data for _ in range(101)]
        assert got == [b"%d" % i for i in range(100)] + [b"last"]
    # on the socket: a quiet send that worked gets no line at all
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(c.socket(0))
        s.sendall(b'{"version":1,"id":1,"command":"message_send","args":{"pnn":1,"srvid":56,'
                  b'"data":"","quiet":true}}\n{"version":1,"id":2,"command":"pnn"}\n'
                  b'{"version":1,"id":3,"command":"message_send","args":{"pnn":1,"srvid":56,'
                  b'"quiet":1}}\n')
        f = s.makefile("rb")
        assert json.loads(f.readline())["id"] == 2
        bad = json.loads(f.readline())
        assert (bad["id"], bad["error"]["code"]) == (3, "EINVAL")


def test_slow_client_gets_drops_counted_not_unbounded_memory(c):
    slow = Messenger(c.socket(1)).connect()
    slow.register(55)
    chunk = b"z" * (400 * 1024)
    with Messenger(c.socket(1)) as tx:
        for _ in range(40):  # 16 MB for a client that does not read
            tx.send(1, 55, chunk, wait=False)
        tx.flush()
        tx.call("ping")
    st = c.call(1, "message_status")["stats"]
    assert st["dropped_slow_client"] > 0
    got, dropped = 0, 0
    while (msg := slow.receive(1)) is not None:
        got += 1
        dropped += msg.dropped
    assert got < 40 and got + dropped <= 40
    # the next message after the drops says how many there were
    with Messenger(c.socket(0)) as tx:
        tx.send(1, 55, b"after")
    msg = slow.receive(5)
    assert msg.data == b"after"
    assert got + dropped + msg.dropped == 40
    slow.close()
    assert "is not reading" in c.log(1)
    assert c.status(1)["healthy"]


def test_cli_msglisten_and_msgsend(c):
    import os
    env = dict(os.environ, PYTHONPATH=AGENT_DIR)
    listen = subprocess.Popen(
        [sys.executable, "-m", "pyctdb.tools.cli", "--socket", c.socket(2), "msglisten", "0x10",
         "--count", "2", "--wait", "20", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert listen.stderr.readline().startswith("Listening for messages to srvid 16 on "
                                                   "node 2")
        r = c.cli(0, "msgsend", "2", "16", "hello ümlaut")
        assert r.returncode == 0 and r.stdout == "", r.stderr
        r = c.cli(1, "--json", "msgsend", "all", "0x10", "second")
        assert r.returncode == 0 and json.loads(r.stdout) == {"pnns": [0, 1, 2], "srvid": 16}
        out, _ = listen.communicate(timeout=20)
    finally:
        listen.kill()
    assert listen.returncode == 0
    lines = [json.loads(x) for x in out.splitlines()]
    assert [(x["src"], x["srvid"], x["text"]) for x in lines] == [
        (0, 16, "hello ümlaut"), (1, 16, "second")]
    assert base64.b64decode(lines[0]["data"]) == "hello ümlaut".encode()
    # plain output, and a listener that gives up
    r = c.cli(0, "msglisten", "17", "--count", "1", "--wait", "0.3")
    assert r.returncode == 1 and "0 of 1 messages" in r.stderr
    r = c.cli(0, "msgsend", "7", "1", "x")
    assert r.returncode == 1 and "ENOENT" in r.stderr
    r = c.cli(0, "msgsend", "1", "-5", "x")
    assert r.returncode == 2 and "invalid srvid" in r.stderr


def test_malformed_message_frames_are_dropped_and_the_agent_keeps_running(c):
    """Impersonate node 1 (killed) from its address: bad MESSAGE frames drop the
    connection with a log line; node 0 keeps serving; node 1 comes back."""
    from pyctdb.server.cluster import nodes_digest
    from pyctdb.common.config import load_config
    c.kill(1)
    c.wait_for(lambda: c.status(0)["nodes"][1]["state"] != "OK", 10)
    with pytest.raises(ApiCallError) as ei:  # a node that is not connected
        c.call(0, "message_send", pnn=1, srvid=1, data="")
    assert ei.value.code == "ENOTCONN"
    digest = nodes_digest(load_config(c.config_dir(0)).nodes)
    rx = Messenger(c.socket(0)).connect()
    rx.register(5)
    bad = [
        {"pnn": 1, "instance": "fake", "srvid": 5, "data": "%%%not-base64"},
        {"pnn": 1, "instance": "fake", "srvid": -5, "data": ""},
        {"pnn": 1, "instance": "fake", "srvid": 5},
        {"pnn": 1, "instance": "fake", "srvid": 5, "data": "A" * 800000},
    ]
    for payload in bad + [b"raw"]:
        peer = c.peer_connect(1, 0, digest)  # (with the cluster's transport key)
        s = peer.sock
        if payload == b"raw":  # a MESSAGE header that lies about its length
            peer.send(struct_header(6, 100) + b'{"pnn":1}')
            s.shutdown(socket.SHUT_WR)
        else:
            peer.send(P.encode(P.MsgType.MESSAGE, payload))
        assert _closed(s)
        s.close()
    log = c.log(0)
    assert "not valid base64" in log and "not an unsigned 64-bit" in log
    assert "MESSAGE frame lacks field 'data'" in log and "exceeds the limit" in log
    assert c.running(0)
    assert rx.receive(0.2) is None
    assert c.call(0, "ping")["pnn"] == 0
    rx.close()
    c.start_node(1)
    c.wait_healthy(30)


def struct_header(mtype, length):
    import struct
    return struct.pack("!4sHHII", b"PCTD", 1, mtype, length, 0)


def test_async_messenger(c):
    import asyncio
    from pyctdb.client import AsyncMessenger

    async def main():
        async with AsyncMessenger(c.socket(1)) as rx, AsyncMessenger(c.socket(2)) as tx:
            assert await rx.register(31) is True
            assert (await rx.check([31, 32])) == {31: True, 32: False}
            assert await tx.send(1, 31, b"\x00a") == [1]
            await tx.broadcast(31, b"b")
            got = [m async for m in rx.messages(timeout=5, count=2)]
            assert [(m.src, m.data) for m in got] == [(2, b"\x00a"), (2, b"b")]
            assert await rx.receive(0.2) is None
    asyncio.run(main())
