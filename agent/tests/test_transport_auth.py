"""The authenticated transport without agents: the transport key file, the handshake's
proofs, sealed frames (MAC, sequence numbers, replays), and real Transport objects on
loopback addresses (same key, other key, no key, a rotation, the limits before a
handshake is done)."""

import asyncio
import base64
import logging
import os
import random
import socket
import struct
import time

import pytest

from pyctdb import PROTOCOL_VERSION
from pyctdb.common import config as C
from pyctdb.errors import ConfigError
from pyctdb.protocol import auth
from pyctdb.protocol import frames as P
from pyctdb.server import transport as T
from pyctdb.testing.localcluster import _free_port

K1 = bytes(range(32))
K2 = bytes(range(100, 140))


# -- the key file ------------------------------------------------------------------------
def keyfile(tmp_path, text, mode=0o600, name="cluster.key"):
    path = tmp_path / name
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_key_file_hex_base64_comments_and_two_keys(tmp_path):
    text = ("# the cluster's transport key\n\n" + K1.hex() + "\n"
            + "  " + base64.b64encode(K2).decode() + "  # (not a comment: refused)\n")
    with pytest.raises(ConfigError) as ei:
        C.read_transport_keys(keyfile(tmp_path, text))
    assert ei.value.line == 4
    text = "# the cluster's transport key\n\n" + K1.hex().upper() + "\n" + \
        base64.b64encode(K2).decode() + "\n"
    assert C.read_transport_keys(keyfile(tmp_path, text)) == (K1, K2)


@pytest.mark.parametrize("text,line,what", [
    ("# only a comment\n", None, "holds no key"),
    (K1.hex()[:-2] + "\n", 1, "31 bytes is too short"),
    ("\n" + base64.b64encode(K1[:20]).decode() + "\n", 2, "20 bytes is too short"),
    (K1.hex() + "\nnot a key!\n", 2, "hex (e.g. openssl rand -hex 32) or base64"),
    (K1.hex() + "\n" + K2.hex() + "\n" + os.urandom(32).hex() + "\n", 3, "more than 2 keys"),
    (K1.hex() + "\n" + base64.b64encode(K1).decode() + "\n", 2, "same key as on line 1"),
    ("# é\n" + K1.hex() + "\n", 1, "not ASCII text"),
])
def test_key_file_problems_name_the_file_and_line(tmp_path, text, line, what):
    path = keyfile(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        C.read_transport_keys(path)
    assert (ei.value.path, ei.value.line) == (path, line)
    assert what in ei.value.message


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_key_file_open_to_group_or_others_is_refused(tmp_path, mode):
    path = keyfile(tmp_path, K1.hex() + "\n", mode=mode)
    with pytest.raises(ConfigError, match=f"mode {mode:04o}.*must be 0600 or 0400"):
        C.read_transport_keys(path)
    os.chmod(path, 0o400)
    assert C.read_transport_keys(path) == (K1,)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file away")
def test_key_file_of_another_user_is_refused(tmp_path):
    path = keyfile(tmp_path, K1.hex() + "\n")
    os.chown(path, 65534, -1)
    with pytest.raises(ConfigError, match="owned by uid 65534, not by the agent's user"):
        C.read_transport_keys(path)


def config_dir(tmp_path, conf=""):
    (tmp_path / "nodes").write_text("127.0.0.1\n127.0.0.2\n")
    (tmp_path / "pyctdb.conf").write_text("[cluster]\n" + conf)
    return str(tmp_path)


def test_load_config_default_explicit_and_none(tmp_path):
    d = config_dir(tmp_path)
    cfg = C.load_config(d)
    assert (cfg.transport_key_file, cfg.transport_keys) == (None, ())
    default = keyfile(tmp_path, K1.hex() + "\n")  # <config dir>/cluster.key
    cfg = C.load_config(d)
    assert (cfg.transport_key_file, cfg.transport_keys) == (default, (K1,))
    other = keyfile(tmp_path, K2.hex() + "\n", name="other.key")
    config_dir(tmp_path, f"transport key file = {other}\n")
    cfg = C.load_config(d)
    assert (cfg.transport_key_file, cfg.transport_keys) == (other, (K2,))
    config_dir(tmp_path, "transport key file =\n")  # explicitly none
    cfg = C.load_config(d)
    assert (cfg.transport_key_file, cfg.transport_keys) == (None, ())
    config_dir(tmp_path, f"transport key file = {tmp_path}/missing.key\n")
    with pytest.raises(ConfigError) as ei:
        C.load_config(d)
    assert (ei.value.path, ei.value.line) == (str(tmp_path / "pyctdb.conf"), 2)
    assert "missing.key" in ei.value.message and "not found" in ei.value.message
    config_dir(tmp_path, "transport key file = relative.key\n")
    with pytest.raises(ConfigError, match="pyctdb.conf:2: .*not an absolute path"):
        C.load_config(d)
    os.chmod(default, 0o644)  # a bad default file stops the start too
    config_dir(tmp_path)
    with pytest.raises(ConfigError, match="cluster.key: .*mode 0644"):
        C.load_config(d)
    # ... but not pyctdbd --drop-public-ips, which does not read it
    cfg = C.load_config(d, keys=False)
    assert (cfg.transport_key_file, cfg.transport_keys) == (None, ())


# -- proofs and sealed frames ------------------------------------------------------------
def test_versions():
    assert PROTOCOL_VERSION == P.VERSION_AUTH == 2 and P.VERSION_PLAIN == 1


def test_proofs_bind_the_key_the_nonces_the_nodes_and_the_direction():
    nc, ns = auth.new_nonce(), auth.new_nonce()
    a = auth.accept_proof(K1, nc, ns, 1, 0)
    assert len(a) == auth.PROOF_SIZE and len(nc) == auth.NONCE_SIZE
    assert a != auth.connect_proof(K1, nc, ns, 1, 0)  # not reflected as the other side's
    assert a != auth.accept_proof(K2, nc, ns, 1, 0)
    assert a != auth.accept_proof(K1, ns, nc, 1, 0)
    assert a != auth.accept_proof(K1, nc, ns, 0, 1)
    assert a != auth.accept_proof(K1, nc, auth.new_nonce(), 1, 0)
    assert auth.session_key(K1, nc, ns, 1, 0) not in (a, auth.connect_proof(K1, nc, ns, 1, 0))
    assert auth.key_id(K1) != auth.key_id(K2) and len(auth.key_id(K1)) == 16


def msg(i, pnn=1):
    return P.encode_message(pnn, "abc123", i, base64.b64encode(b"%d" % i).decode())


def sealed_reader(ks, frames_out):
    return T.SealedFrameReader(1, P.MAX_PAYLOAD, lambda pnn, f: frames_out.append(f),
                               {"frames_in": 0}, auth.Opener(ks))


def test_sealed_frames_in_any_pieces():
    ks = os.urandom(32)
    sealer = auth.Sealer(ks)
    big = P.encode(P.MsgType.CONTROL, {"pnn": 1, "instance": "i", "req_id": 1, "op": "x",
                                       "args": {"blob": "A" * 1_000_000}})
    data = b"".join(sealer.seal(f) for f in [msg(1), big, *(msg(i) for i in range(2, 300))])
    for pieces in ([data], [data[i:i + 997] for i in range(0, len(data), 997)]):
        got = []
        r = sealed_reader(ks, got)
        for p in pieces:
            r.feed(p)
        assert [f.type for f in got[:3]] == [P.MsgType.MESSAGE, P.MsgType.CONTROL,
                                             P.MsgType.MESSAGE]
        assert [f.payload["srvid"] for f in got if f.type == P.MsgType.MESSAGE] == \
            list(range(1, 300)) and got[0].version == P.VERSION_AUTH
    one = sealer.seal(msg(7))
    assert one[4:6] == b"\x00\x02" and len(one) == len(msg(7)) + auth.MAC_SIZE
    assert struct.unpack("!I", one[12:16])[0] == sealer.seq == 301


def feed_all(ks, pieces):
    got = []
    r = sealed_reader(ks, got)
    try:
        for p in pieces:
            r.feed(p)
    except P.ProtocolError as exc:
        return got, str(exc)
    return got, None


def test_replayed_reordered_forged_and_foreign_frames_are_refused():
    ks = os.urandom(32)
    s = auth.Sealer(ks)
    f1, f2, f3 = s.seal(msg(1)), s.seal(msg(2)), s.seal(msg(3))
    assert feed_all(ks, [f1, f2, f3]) == (feed_all(ks, [f1 + f2 + f3])[0], None)
    got, err = feed_all(ks, [f1, f2, f2])  # replayed on the same connection
    assert len(got) == 2 and "out of sequence (number 2, expected 3)" in err
    got, err = feed_all(ks, [f1, f3])  # one left out (or reordered)
    assert len(got) == 1 and "out of sequence" in err
    got, err = feed_all(os.urandom(32), [f1])  # replayed on another connection
    assert got == [] and "bad MAC" in err
    forged = bytearray(f1)
    forged[-auth.MAC_SIZE - 3] ^= 1  # a payload byte
    got, err = feed_all(ks, [bytes(forged)])
    assert got == [] and "bad MAC" in err
    plain = msg(1)  # an unsealed frame on an authenticated connection
    got, err = feed_all(ks, [plain + bytes(16)])
    assert got == [] and "unsupported protocol version 1" in err
    # a sealed frame whose header claims another length or type: MAC fails
    h = bytearray(f1)
    h[7] = P.MsgType.STATE
    assert "bad MAC" in feed_all(ks, [bytes(h)])[1]


def test_sequence_numbers_beyond_32_bits():
    ks = os.urandom(32)
    s = auth.Sealer(ks)
    r_got = []
    r = sealed_reader(ks, r_got)
    s.seq = r.opener.seq = 2 ** 32 - 2
    for i in range(4):
        r.feed(s.seal(msg(i)))
    assert len(r_got) == 4 and s.seq == r.opener.seq == 2 ** 32 + 2


def test_handshake_frames_are_refused_after_the_handshake():
    for t in (P.MsgType.CHALLENGE, P.MsgType.PROOF):
        with pytest.raises(P.ProtocolError, match="outside the handshake"):
            P.decode_body(t, b'{"pnn":1,"proof":"00","nonce":"00"}')


def test_the_rate_limited_log_forgets_old_keys_and_allows_a_burst(caplog):
    caplog.set_level(logging.DEBUG, logger="pyctdb.server.transport")
    rl = T._RateLimitedLog(interval=30.0, max_keys=8)
    for i in range(100):
        rl(logging.DEBUG, ("k", i), "x")
    assert len(rl._last) <= 8
    caplog.clear()
    for i in range(20):
        rl(logging.DEBUG, ("bad-frame", 1), "line %d", i, burst=3)
        rl(logging.DEBUG, ("other", 1), "other %d", i)
    assert [r.getMessage() for r in caplog.records] == [
        "line 0", "other 0", "line 1", "line 2"]


# -- real transports on loopback ---------------------------------------------------------
def nodes2():
    subnet = random.randint(20, 250)
    nodes = {0: f"127.0.{subnet}.1", 1: f"127.0.{subnet}.2"}
    return nodes, _free_port(nodes[0])


def make(pnn, nodes, port, events, keys=(), key_file=None, got=None):
    return T.Transport(
        pnn=pnn, address=nodes[pnn], port=port, nodes=nodes,
        hello=lambda: {"pnn": pnn, "address": nodes[pnn], "instance": f"instance{pnn}",
                       "nodes_digest": "d", "agent_version": "0"},
        on_frame=lambda p, f: (got if got is not None else []).append((pnn, p, f)),
        on_link_up=lambda p, hello: events.append(("up", pnn, p)),
        on_link_down=lambda p, reason: events.append(("down", pnn, p, reason)),
        keys=keys, key_file=key_file)


async def both_up(a, b, timeout=3.0):
    t0 = time.monotonic()
    while not (a.link_up(1) and b.link_up(0)):
        if time.monotonic() - t0 > timeout:
            return False
        await asyncio.sleep(0.01)
    return True


def run_pair(keys0, keys1, body, files=(None, None)):
    nodes, port = nodes2()
    events, got = [], []

    async def go():
        a = make(0, nodes, port, events, keys0, files[0], got)
        b = make(1, nodes, port, events, keys1, files[1], got)
        await a.start()
        await b.start()
        try:
            return await body(a, b, got, events)
        finally:
            await a.stop()
            await b.stop()
    return asyncio.run(go())


def test_same_key_links_up_and_frames_flow_sealed():
    async def body(a, b, got, events):
        assert await both_up(a, b)
        assert a.authenticated and b.authenticated
        a.send(1, P.MsgType.BYE, {"pnn": 0, "instance": "instance0"})
        for i in range(50):
            a.send_bytes(1, msg(i, pnn=0))
        a.broadcast(P.MsgType.BYE, {"pnn": 0, "instance": "instance0"})
        b.send(0, P.MsgType.BYE, {"pnn": 1, "instance": "instance1"})
        t0 = time.monotonic()
        while len(got) < 53 and time.monotonic() - t0 < 3:
            await asyncio.sleep(0.01)
        return got
    got = run_pair((K1,), (K1,), body)
    at_b = [f for pnn, src, f in got if pnn == 1]
    assert [f.type for f in at_b] == [P.MsgType.BYE] + [P.MsgType.MESSAGE] * 50 + [P.MsgType.BYE]
    assert [f.payload["srvid"] for f in at_b[1:-1]] == list(range(50))
    assert all(f.version == P.VERSION_AUTH for _, _, f in got)


def test_other_key_no_key_and_mixed_never_link(caplog):
    async def body(a, b, got, events):
        assert not await both_up(a, b, timeout=1.0)
        return events
    caplog.set_level(logging.INFO, logger="pyctdb.server.transport")
    assert run_pair((K1,), (K2,), body) == []
    text = caplog.text
    assert f"connects with key id {auth.key_id(K2)}, which is not a key of this node" in text
    assert "closed the connection during the handshake" in text
    caplog.clear()
    assert run_pair((K1,), (), body) == []
    text = caplog.text
    assert "transport not authenticated: no transport key file; anyone who reaches port" in text
    assert "node 0 connects with an authenticated transport (protocol version 2), but " \
        "this node has no transport key file" in text
    assert "node 1 connects without authentication, but this node requires the " \
        "transport key" in text


@pytest.mark.parametrize("keys0,keys1", [
    ((K1, K2), (K1,)),      # rotation, step 1: the new key added second
    ((K2, K1), (K1, K2)),   # step 2: moved first on one node
    ((K2,), (K2, K1)),      # step 3: once all connect with it, the old one dropped
])
def test_a_rotation_keeps_the_link(keys0, keys1):
    async def body(a, b, got, events):
        return await both_up(a, b)
    assert run_pair(keys0, keys1, body)


def test_dropping_the_old_key_before_every_node_connects_with_the_new_one_fails():
    async def body(a, b, got, events):
        return await both_up(a, b, timeout=1.0)
    assert not run_pair((K2,), (K1, K2), body)


def test_the_key_file_is_read_again_when_it_changes(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(T, "KEY_FILE_CHECK", 0.0)
    f0 = keyfile(tmp_path, K1.hex() + "\n", name="k0")
    f1 = keyfile(tmp_path, K1.hex() + "\n", name="k1")

    async def body(a, b, got, events):
        assert await both_up(a, b)
        # the rotation, one file after the other; links come up again each time
        for path, text in ((f0, K1.hex() + "\n" + K2.hex() + "\n"),
                           (f1, K1.hex() + "\n" + K2.hex() + "\n"),
                           (f0, K2.hex() + "\n" + K1.hex() + "\n"),
                           (f1, K2.hex() + "\n" + K1.hex() + "\n"),
                           (f0, K2.hex() + "\n"), (f1, K2.hex() + "\n")):
            keyfile(tmp_path, text, name=os.path.basename(path))
            os.utime(path, ns=(time.time_ns(), time.time_ns() + 1))
            a.drop(1, "test")
            assert await both_up(a, b)
        assert a.keys.keys == b.keys.keys == (K2,)
        keyfile(tmp_path, "short\n", name="k0")  # a bad file: the keys in use stay
        os.utime(f0, ns=(time.time_ns(), time.time_ns() + 2))
        a.drop(1, "test")
        assert await both_up(a, b)
        return a.keys.keys
    caplog.set_level(logging.INFO, logger="pyctdb.server.transport")
    assert run_pair((K1,), (K1,), body, files=(f0, f1)) == (K2,)
    assert "read again: connecting with key id " + auth.key_id(K2) in caplog.text
    assert "changed but cannot be used, keeping the keys in use" in caplog.text


def test_a_peer_that_cannot_prove_the_key_is_refused_by_the_caller(caplog):
    """A listener in a node's place that answers the HELLO without the key."""
    nodes, port = nodes2()
    events = []

    async def impostor(reader, writer):
        frame = await P.read_frame(reader, 4096, (P.VERSION_AUTH,))
        assert frame.type == P.MsgType.HELLO and "nonce" in frame.payload
        writer.write(P.encode(P.MsgType.CHALLENGE, {"pnn": 1, "nonce": "00" * 32,
                                                    "proof": "11" * 32},
                              version=P.VERSION_AUTH))
        await reader.read(100)

    async def go():
        server = await asyncio.start_server(impostor, nodes[1], port)
        a = make(0, nodes, port, events, (K1,))
        await a.start()
        t0 = time.monotonic()
        while "refusing node 1" not in caplog.text and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.02)
        await a.stop()
        server.close()
        return a
    caplog.set_level(logging.INFO, logger="pyctdb.server.transport")
    a = asyncio.run(go())
    assert events == [] and 1 not in a._out
    assert "refusing node 1" in caplog.text and "did not prove that it holds the " \
        "transport key" in caplog.text


def raw(nodes, port, src_pnn=1):
    return socket.create_connection((nodes[0], port), timeout=5,
                                    source_address=(nodes[src_pnn], 0))


def closed_within(s, seconds):
    s.settimeout(seconds)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def run_one(keys, body, monkeypatch=None):
    nodes, port = nodes2()

    async def go():
        a = make(0, nodes, port, [], keys)
        await a.start()
        try:
            return await asyncio.get_running_loop().run_in_executor(None, body, nodes,
                                                                    port, a)
        finally:
            await a.stop()
    return asyncio.run(go())


@pytest.mark.parametrize("keys", [(K1,), ()])
def test_limits_before_the_handshake(monkeypatch, caplog, keys):
    monkeypatch.setattr(T, "HANDSHAKE_TIMEOUT", 1.5)
    caplog.set_level(logging.INFO, logger="pyctdb.server.transport")

    def body(nodes, port, a):
        # a frame announcing more than 4 KiB is refused from its header
        s = raw(nodes, port)
        s.sendall(P.HEADER.pack(P.MAGIC, 2, 1, 4097, 0))
        assert closed_within(s, 2)
        # four connections from one address may wait in their handshake; a fifth is
        # closed at once, another address still gets in
        idle = [raw(nodes, port) for _ in range(T.MAX_HANDSHAKES_PER_SOURCE)]
        time.sleep(0.1)
        s = raw(nodes, port)
        t0 = time.monotonic()  # (closed by the limit, not by the 1.5 s timeout)
        assert closed_within(s, 0.75) and time.monotonic() - t0 < 0.75
        other = socket.create_connection((nodes[0], port), timeout=5,
                                         source_address=("127.0.0.1", 0))
        assert not closed_within(other, 0.1)
        # ... until the handshake timeout closes them all
        t0 = time.monotonic()
        assert all(closed_within(i, 3) for i in idle + [other])
        assert time.monotonic() - t0 < 2.5
        assert a._handshaking == 0 and a._handshakes == {}
        return a.stats["refused_connections"]
    assert run_one(keys, body) >= 1
    assert "oversized frame: 4097 bytes (limit 4096)" in caplog.text
    assert "too many connections in their handshake" in caplog.text
    assert "no handshake within 1.5s" in caplog.text


def test_the_global_limit(monkeypatch):
    monkeypatch.setattr(T, "HANDSHAKE_TIMEOUT", 3.0)
    monkeypatch.setattr(T, "MAX_HANDSHAKES", 6)

    def body(nodes, port, a):
        socks = []
        for src in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
            for _ in range(2):
                socks.append(socket.create_connection((nodes[0], port), timeout=5,
                                                      source_address=(src, 0)))
        time.sleep(0.1)
        s = socket.create_connection((nodes[0], port), timeout=5,
                                     source_address=("127.0.0.4", 0))
        t0 = time.monotonic()  # (closed by the limit, not by the 3 s timeout)
        assert closed_within(s, 1.5) and time.monotonic() - t0 < 1.5
        for x in socks + [s]:
            x.close()
        return True
    assert run_one((K1,), body)
