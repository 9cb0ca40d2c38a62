import asyncio
import struct

import pytest

from pyctdb import PROTOCOL_VERSION
from pyctdb.protocol import frames


def test_roundtrip():
    data = frames.encode(frames.MsgType.STATE, {"pnn": 1, "x": [1, 2]})
    frame, rest = frames.decode(data)
    assert rest == b""
    assert frame.type == frames.MsgType.STATE
    assert frame.version == frames.VERSION_PLAIN
    assert frame.payload == {"pnn": 1, "x": [1, 2]}


def test_header_is_big_endian_and_fixed():
    data = frames.encode(frames.MsgType.HELLO, {})
    assert data[:4] == b"PCTD"
    assert data[4:6] == struct.pack(">H", frames.VERSION_PLAIN)
    assert data[6:8] == b"\x00\x01"
    assert data[8:12] == struct.pack(">I", len(b"{}"))
    assert data[12:16] == b"\x00\x00\x00\x00"
    assert len(data) == frames.HEADER_SIZE + 2


def test_two_frames_in_one_buffer():
    data = (frames.encode(frames.MsgType.HELLO, {"a": 1})
            + frames.encode(frames.MsgType.BYE, {"b": 2}))
    f1, rest = frames.decode(data)
    f2, rest = frames.decode(rest)
    assert (f1.payload, f2.payload, rest) == ({"a": 1}, {"b": 2}, b"")


def test_incomplete():
    data = frames.encode(frames.MsgType.HELLO, {"a": 1})
    with pytest.raises(frames.IncompleteFrame):
        frames.decode(data[:10])
    with pytest.raises(frames.IncompleteFrame) as ei:
        frames.decode(data[:-1])
    assert ei.value.needed == 1


@pytest.mark.parametrize("header,msg", [
    (struct.pack("!4sHHII", b"HTTP", 1, 1, 0, 0), "bad magic"),
    (struct.pack("!4sHHII", b"PCTD", 99, 1, 0, 0), "unsupported protocol version 99"),
    (struct.pack("!4sHHII", b"PCTD", 1, 1, frames.MAX_PAYLOAD + 1, 0), "oversized frame"),
    (struct.pack("!4sHHII", b"PCTD", 1, 77, 2, 0), "unknown message type 77"),
    (struct.pack("!4sHHII", b"PCTD", 1, 1, 2, 5), "reserved header field"),
])
def test_bad_headers(header, msg):
    with pytest.raises(frames.ProtocolError, match=msg):
        frames.decode(header + b"{}")


@pytest.mark.parametrize("body,msg", [
    (b"[" * 4000, "nested too deeply"),
    (b'{"a":' * 3000, "nested too deeply"),
    (b"\xff\xfe", "not valid UTF-8 JSON"),
    (b"{nope", "not valid UTF-8 JSON"),
    (b"[1,2]", "JSON list, expected an object"),
])
def test_bad_payloads(body, msg):
    header = struct.pack("!4sHHII", b"PCTD", 1, 1, len(body), 0)
    with pytest.raises(frames.ProtocolError, match=msg):
        frames.decode(header + body)


def _state(**kw):
    p = {"pnn": 0, "instance": "x", "flags": 0, "leader": None, "is_leader": False,
         "generation": None, "recmode": 1, "vnnmap": [], "members": [], "connected": [],
         "lmaster_capable": True, "leader_capable": True}
    p.update(kw)
    return p


def test_validate_state():
    frames.validate(frames.Frame(1, frames.MsgType.STATE, _state()))
    with pytest.raises(frames.ProtocolError, match="lacks field 'flags'"):
        p = _state()
        del p["flags"]
        frames.validate(frames.Frame(1, frames.MsgType.STATE, p))
    with pytest.raises(frames.ProtocolError, match="'pnn' must not be a boolean"):
        frames.validate(frames.Frame(1, frames.MsgType.STATE, _state(pnn=True)))
    with pytest.raises(frames.ProtocolError, match="'leader' has type str"):
        frames.validate(frames.Frame(1, frames.MsgType.STATE, _state(leader="0")))
    with pytest.raises(frames.ProtocolError, match="list of PNNs"):
        frames.validate(frames.Frame(1, frames.MsgType.STATE, _state(members=["a"])))


def test_encode_refuses_oversized():
    with pytest.raises(frames.ProtocolError):
        frames.encode(frames.MsgType.STATE, {"x": "a" * (frames.MAX_PAYLOAD + 1)})


def test_read_frame_from_stream():
    async def go():
        r = asyncio.StreamReader()
        r.feed_data(frames.encode(frames.MsgType.BYE, {"pnn": 3, "instance": "i"}))
        r.feed_eof()
        f = await frames.read_frame(r)
        assert f.payload["pnn"] == 3
        with pytest.raises(asyncio.IncompleteReadError):
            await frames.read_frame(r)
    asyncio.run(go())


def test_versions_and_sealed_headers():
    assert PROTOCOL_VERSION == frames.VERSION_AUTH == 2 and frames.VERSION_PLAIN == 1
    plain = frames.encode(frames.MsgType.BYE, {"pnn": 1, "instance": "i"})
    assert frames.decode_header(plain[:16])[0] == 1
    with pytest.raises(frames.ProtocolError, match="unsupported protocol version 1"):
        frames.decode_sealed_header(plain[:16])
    hs = frames.encode(frames.MsgType.HELLO, {}, version=frames.VERSION_AUTH)
    with pytest.raises(frames.ProtocolError, match="this connection speaks 1"):
        frames.decode_header(hs[:16])
    assert frames.decode_header(hs[:16], versions=(1, 2))[0] == 2
    sealed = struct.pack("!4sHHII", b"PCTD", 2, 6, 10, 77)
    assert frames.decode_sealed_header(sealed) == (frames.MsgType.MESSAGE, 10, 77)
    with pytest.raises(frames.ProtocolError, match="oversized"):
        frames.decode_sealed_header(struct.pack("!4sHHII", b"PCTD", 2, 6, 4097, 1), 4096)
    with pytest.raises(frames.ProtocolError, match="unknown message type 99"):
        frames.decode_sealed_header(struct.pack("!4sHHII", b"PCTD", 2, 99, 1, 1))


def test_errors_derive_from_the_one_root():
    from pyctdb.errors import PyctdbError
    with pytest.raises(PyctdbError) as ei:
        frames.decode(b"HTTP" + bytes(12) + b"{}")
    assert isinstance(ei.value, frames.ProtocolError) and ei.value.code == "EPROTO"
    assert ei.value.message == str(ei.value)
    assert issubclass(frames.IncompleteFrame, PyctdbError)
