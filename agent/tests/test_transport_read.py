"""The transport's reading of a peer's frames (transport.FrameReader, which a live
connection's protocol feeds with each read) and the MESSAGE fast path of
protocol.decode_body: batches of frames per read, large frames across reads, and
strictness (a bad frame stops the connection after the good ones)."""

import base64
import json

import pytest

from pyctdb.protocol import frames as P
from pyctdb.server.transport import FrameReader


def read_all(pieces, max_payload=P.MAX_PAYLOAD):
    """Feed ``pieces`` (bytes, one per read) from node 1's connection; (frames,
    exception or None)."""
    frames = []
    fr = FrameReader(1, max_payload, lambda pnn, f: frames.append((pnn, f)),
                     {"frames_in": 0})
    try:
        for p in pieces:
            fr.feed(p)
    except P.ProtocolError as exc:
        return frames, exc
    assert fr.stats["frames_in"] == len(frames)
    return frames, None


def msg(i, pnn=1):
    return P.encode_message(pnn, "abc123", i, base64.b64encode(b"%d" % i).decode())


def test_many_frames_in_one_read_and_split_anywhere():
    data = b"".join(msg(i) for i in range(500))
    for pieces in ([data], [data[i:i + 7] for i in range(0, len(data), 7)]):
        frames, err = read_all(pieces)
        assert err is None
        assert [f.payload["srvid"] for _, f in frames] == list(range(500))
        assert all(f.type == P.MsgType.MESSAGE and f.payload["pnn"] == 1 for _, f in frames)


def test_a_large_frame_across_reads():
    big = P.encode(P.MsgType.CONTROL, {"pnn": 1, "instance": "i", "req_id": 1, "op": "x",
                                       "args": {"blob": "A" * 3_000_000}})
    frames, err = read_all([msg(1), big[:100], big[100:], msg(2)])
    assert err is None
    assert [f.type for _, f in frames] == [P.MsgType.MESSAGE, P.MsgType.CONTROL,
                                           P.MsgType.MESSAGE]
    assert len(frames[1][1].payload["args"]["blob"]) == 3_000_000


@pytest.mark.parametrize("bad,why", [
    (b"XXXX" + msg(9)[4:], "bad magic"),
    (msg(9)[:4] + b"\x00\x02" + msg(9)[6:], "unsupported protocol version 2"),
    (P.HEADER.pack(P.MAGIC, 1, 6, 10 ** 9, 0), "oversized frame"),
    (P.HEADER.pack(P.MAGIC, 1, 99, 2, 0) + b"{}", "unknown message type 99"),
    (P.HEADER.pack(P.MAGIC, 1, 6, 3, 0) + b"{x}", "not valid UTF-8 JSON"),
    (msg(9, pnn=2), "claims PNN 2"),
    (P.encode(P.MsgType.MESSAGE, {"pnn": 1, "instance": "i", "srvid": 1, "data": "Kw="}),
     "not valid base64"),
])
def test_a_bad_frame_ends_the_connection_after_the_good_ones(bad, why):
    frames, err = read_all([msg(1) + msg(2) + bad + msg(3)])
    assert [f.payload["srvid"] for _, f in frames] == [1, 2]
    assert err is not None and why in str(err)


def fast_and_generic(body):
    """decode_body of ``body`` as a MESSAGE, and decode_payload + validate of it."""
    out = []
    for fn in (lambda: P.decode_body(P.MsgType.MESSAGE, body),
               lambda: P.validate(P.Frame(1, P.MsgType.MESSAGE, P.decode_payload(body)))):
        try:
            out.append(fn())
        except P.ProtocolError as exc:
            out.append(type(exc))
    return out


@pytest.mark.parametrize("payload", [
    {"data": "aGk=", "instance": "abc", "pnn": 3, "srvid": 2 ** 64 - 1},
    {"data": "", "instance": "abc", "pnn": 0, "srvid": 0},
    {"data": "aGk=", "instance": "abc", "pnn": 3, "srvid": 2 ** 64},       # too large
    {"data": "aGk", "instance": "abc", "pnn": 3, "srvid": 1},              # bad padding
    {"data": "a=Gk", "instance": "abc", "pnn": 3, "srvid": 1},
    {"data": "aGk=", "instance": "abc", "pnn": 3, "srvid": 1, "extra": 1},  # generic path
    {"data": "aGk=", "instance": "abc", "pnn": "3", "srvid": 1},
])
def test_message_fast_path_agrees_with_the_generic_decoding(payload):
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    fast, generic = fast_and_generic(body)
    assert fast == generic
