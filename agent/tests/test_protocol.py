import asyncio
import struct

import pytest

from pyctdb import PROTOCOL_VERSION
from pyctdb.protocol import frames as P


def test_roundtrip():
    data = P.encode(P.MsgType.STATE, {"pnn": 1, "x": [1, 2]})
    frame, rest = P.decode(data)
    assert rest == b""
    assert frame.type == P.MsgType.STATE
    assert frame.version == PROTOCOL_VERSION
    assert frame.payload == {"pnn": 1, "x": [1, 2]}


def test_header_is_big_endian_and_fixed():
    data = P.encode(P.MsgType.HELLO, {})
    assert data[:4] == b"PCTD"
    assert data[4:6] == struct.pack(">H", PROTOCOL_VERSION)
    assert data[6:8] == b"\x00\x01"
    assert data[8:12] == struct.pack(">I", len(b"{}"))
    assert data[12:16] == b"\x00\x00\x00\x00"
    assert len(data) == P.HEADER_SIZE + 2


def test_two_frames_in_one_buffer():
    data = P.encode(P.MsgType.HELLO, {"a": 1}) + P.encode(P.MsgType.BYE, {"b": 2})
    f1, rest = P.decode(data)
    f2, rest = P.decode(rest)
    assert (f1.payload, f2.payload, rest) == ({"a": 1}, {"b": 2}, b"")


def test_incomplete():
    data = P.encode(P.MsgType.HELLO, {"a": 1})
    with pytest.raises(P.IncompleteFrame):
        P.decode(data[:10])
    with pytest.raises(P.IncompleteFrame) as ei:
        P.decode(data[:-1])
    assert ei.value.needed == 1


@pytest.mark.parametrize("header,msg", [
    (struct.pack("!4sHHII", b"HTTP", 1, 1, 0, 0), "bad magic"),
    (struct.pack("!4sHHII", b"PCTD", 99, 1, 0, 0), "unsupported protocol version 99"),
    (struct.pack("!4sHHII", b"PCTD", 1, 1, P.MAX_PAYLOAD + 1, 0), "oversized frame"),
    (struct.pack("!4sHHII", b"PCTD", 1, 77, 2, 0), "unknown message type 77"),
    (struct.pack("!4sHHII", b"PCTD", 1, 1, 2, 5), "reserved header field"),
])
def test_bad_headers(header, msg):
    with pytest.raises(P.ProtocolError, match=msg):
        P.decode(header + b"{}")


@pytest.mark.parametrize("body,msg", [
    (b"\xff\xfe", "not valid UTF-8 JSON"),
    (b"{nope", "not valid UTF-8 JSON"),
    (b"[1,2]", "JSON list, expected an object"),
])
def test_bad_payloads(body, msg):
    header = struct.pack("!4sHHII", b"PCTD", 1, 1, len(body), 0)
    with pytest.raises(P.ProtocolError, match=msg):
        P.decode(header + body)


def _state(**kw):
    p = {"pnn": 0, "instance": "x", "flags": 0, "leader": None, "is_leader": False,
         "generation": None, "recmode": 1, "vnnmap": [], "members": [], "connected": [],
         "lmaster_capable": True, "leader_capable": True}
    p.update(kw)
    return p


def test_validate_state():
    P.validate(P.Frame(1, P.MsgType.STATE, _state()))
    with pytest.raises(P.ProtocolError, match="lacks field 'flags'"):
        p = _state()
        del p["flags"]
        P.validate(P.Frame(1, P.MsgType.STATE, p))
    with pytest.raises(P.ProtocolError, match="'pnn' must not be a boolean"):
        P.validate(P.Frame(1, P.MsgType.STATE, _state(pnn=True)))
    with pytest.raises(P.ProtocolError, match="'leader' has type str"):
        P.validate(P.Frame(1, P.MsgType.STATE, _state(leader="0")))
    with pytest.raises(P.ProtocolError, match="list of PNNs"):
        P.validate(P.Frame(1, P.MsgType.STATE, _state(members=["a"])))


def test_encode_refuses_oversized():
    with pytest.raises(P.ProtocolError):
        P.encode(P.MsgType.STATE, {"x": "a" * (P.MAX_PAYLOAD + 1)})


def test_read_frame_from_stream():
    async def go():
        r = asyncio.StreamReader()
        r.feed_data(P.encode(P.MsgType.BYE, {"pnn": 3, "instance": "i"}))
        r.feed_eof()
        f = await P.read_frame(r)
        assert f.payload["pnn"] == 3
        with pytest.raises(asyncio.IncompleteReadError):
            await P.read_frame(r)
    asyncio.run(go())
