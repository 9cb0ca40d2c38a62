"""MESSAGE frames (protocol/frames.py): encoding and strict decoding."""

import base64
import struct

import pytest

from pyctdb.protocol import frames


def _b64(b):
    return base64.b64encode(b).decode()


def test_encode_message_is_a_valid_frame_equal_to_the_generic_encoding():
    data = _b64(b"\x00\xff\xfehello\n\"")
    fast = frames.encode_message(2, "0123abcd", 2 ** 64 - 1, data)
    generic = frames.encode(frames.MsgType.MESSAGE, {"pnn": 2, "instance": "0123abcd",
                                           "srvid": 2 ** 64 - 1, "data": data})
    assert fast == generic
    frame, rest = frames.decode(fast)
    assert rest == b"" and frame.type == frames.MsgType.MESSAGE == 6
    p = frames.validate(frame)
    assert base64.b64decode(p["data"]) == b"\x00\xff\xfehello\n\""
    assert fast[:4] == b"PCTD" and fast[6:8] == b"\x00\x06"
    assert struct.unpack("!I", fast[8:12])[0] == len(fast) - frames.HEADER_SIZE


def test_empty_data_and_largest_data():
    frames.validate(frames.decode(frames.encode_message(0, "a", 0, ""))[0])
    big = _b64(b"x" * frames.MAX_MESSAGE_DATA)
    frames.validate(frames.decode(frames.encode_message(0, "a", 0, big))[0])


def _frame(payload):
    return frames.decode(frames.encode(frames.MsgType.MESSAGE, payload))[0]


GOOD = {"pnn": 1, "instance": "x", "srvid": 5, "data": "aGk="}


@pytest.mark.parametrize("change,msg", [
    ({"srvid": -1}, "not an unsigned 64-bit"),
    ({"srvid": 2 ** 64}, "not an unsigned 64-bit"),
    ({"srvid": True}, "must not be a boolean"),
    ({"srvid": "5"}, "has type str"),
    ({"data": "not base64!"}, "not valid base64"),
    ({"data": "aGk"}, "not valid base64"),
    ({"data": 5}, "has type int"),
    ({"data": "A" * (4 * ((frames.MAX_MESSAGE_DATA + 2) // 3) + 4)}, "exceeds the limit"),
    ({"data": None}, "has type NoneType"),
])
def test_bad_message_payloads(change, msg):
    with pytest.raises(frames.ProtocolError, match=msg):
        frames.validate(_frame({**GOOD, **change}))


@pytest.mark.parametrize("missing", ["pnn", "instance", "srvid", "data"])
def test_missing_fields(missing):
    p = dict(GOOD)
    del p[missing]
    with pytest.raises(frames.ProtocolError, match=f"lacks field '{missing}'"):
        frames.validate(_frame(p))


def test_message_types_are_unique():
    assert len({t.value for t in frames.MsgType}) == len(frames.MsgType)
