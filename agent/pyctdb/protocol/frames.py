"""The node-to-node wire protocol (see docs/protocol.md).

Every frame is a fixed 16-byte header in network byte order followed by a payload::

    0      4        6        8            12           16
    +------+--------+--------+------------+------------+----------------+
    | PCTD | version|  type  |   length   |  reserved  | payload (JSON) |
    +------+--------+--------+------------+------------+----------------+

* ``magic``    4 bytes, ASCII ``PCTD``
* ``version``  u16, 1 (:data:`VERSION_PLAIN`) on a connection without a transport key,
  2 (:data:`VERSION_AUTH`) on an authenticated one
* ``type``     u16, the message type (:class:`MsgType`)
* ``length``   u32, payload length in bytes (at most :data:`MAX_PAYLOAD`)
* ``reserved`` u32, must be zero in version 1 and in the handshake; a sealed frame
  (version 2, after the handshake) has its sequence number here and a 16-byte MAC after
  the payload (:mod:`pyctdb.protocol.auth`)

The payload is a UTF-8 JSON object. Being text with an explicit big-endian header, the
format does not depend on either side's byte order or word size.

Decoding is strict: anything that does not match is a :class:`ProtocolError`, and the
transport logs it and drops the connection. Nothing here raises anything else.
"""

from __future__ import annotations

import binascii
import enum
import json
import re
import struct
from base64 import b64decode as _b64decode
from dataclasses import dataclass

from pyctdb import PROTOCOL_VERSION
from pyctdb.errors import PyctdbError

MAGIC = b"PCTD"
#: The frames of a connection without a transport key (as before version 2).
VERSION_PLAIN = 1
#: The frames of an authenticated connection: its handshake, then sealed frames.
VERSION_AUTH = PROTOCOL_VERSION  # 2
HEADER = struct.Struct("!4sHHII")
HEADER_SIZE = HEADER.size  # 16
#: Largest payload accepted (bytes). Larger frames are refused before being read.
MAX_PAYLOAD = 4 * 1024 * 1024


@enum.unique  # two types with one number would silently alias: fail at import instead
class MsgType(enum.IntEnum):
    """The type of a frame: the header's u16 ``type``."""

    HELLO = 1  # first frame on every connection: who is calling
    STATE = 2  # a node's state; also the keepalive
    BYE = 3  # the sender is shutting down cleanly
    CONTROL = 4  # a request to the receiving node (op + args), answered by REPLY
    REPLY = 5  # the answer to a CONTROL
    MESSAGE = 6  # a message (srvid + data) for the clients registered on the receiver
    CHALLENGE = 7  # handshake: the acceptor's nonce and proof (authenticated transport)
    PROOF = 8  # handshake: the caller's proof (authenticated transport)
    ACK = 9  # a keepalive's echo: the receiver heard the sender's STATE sent at ``ts``


_TYPES = {t.value: t for t in MsgType}


class ProtocolError(PyctdbError):
    """A frame that cannot be accepted. The message says why."""

    code = "EPROTO"


@dataclass(frozen=True)
class Frame:
    """One decoded frame: the header's version and type, and its payload (a JSON
    object)."""

    version: int
    type: MsgType
    payload: dict


def encode(msg_type: int, payload: dict, version: int = VERSION_PLAIN) -> bytes:
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
    if len(body) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(body)} bytes exceeds the limit of {MAX_PAYLOAD}")
    return HEADER.pack(MAGIC, version, int(msg_type), len(body), 0) + body


def decode_header(data: bytes, max_payload: int = MAX_PAYLOAD,
                  versions: tuple = (VERSION_PLAIN,)) -> tuple:
    """Validate a 16-byte header of one of ``versions`` whose last field is zero (a plain
    frame, or a handshake frame); return ``(version, MsgType, length)``."""
    if len(data) != HEADER_SIZE:
        raise ProtocolError(f"short header: {len(data)} of {HEADER_SIZE} bytes")
    magic, version, msg_type, length, reserved = HEADER.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r} (expected {MAGIC!r}): not a pyctdb peer")
    if version not in versions:
        raise ProtocolError(
            f"unsupported protocol version {version} (this connection speaks "
            f"{' or '.join(map(str, versions))})")
    if reserved != 0:
        raise ProtocolError(f"reserved header field is {reserved:#x}, must be 0")
    if length > max_payload:
        raise ProtocolError(f"oversized frame: {length} bytes (limit {max_payload})")
    mtype = _TYPES.get(msg_type)
    if mtype is None:
        raise ProtocolError(f"unknown message type {msg_type}")
    return version, mtype, length


def decode_sealed_header(data, max_payload: int = MAX_PAYLOAD) -> tuple:
    """Validate the 16-byte header of a sealed frame (version 2, after the handshake);
    return ``(MsgType, length, sequence number)``. The MAC is checked by
    :class:`pyctdb.protocol.auth.Opener`."""
    if len(data) != HEADER_SIZE:
        raise ProtocolError(f"short header: {len(data)} of {HEADER_SIZE} bytes")
    magic, version, msg_type, length, seq = HEADER.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r} (expected {MAGIC!r}): not a pyctdb peer")
    if version != VERSION_AUTH:
        raise ProtocolError(f"unsupported protocol version {version} on an authenticated "
                            f"connection (expected {VERSION_AUTH})")
    if length > max_payload:
        raise ProtocolError(f"oversized frame: {length} bytes (limit {max_payload})")
    mtype = _TYPES.get(msg_type)
    if mtype is None:
        raise ProtocolError(f"unknown message type {msg_type}")
    return mtype, length, seq


def decode_payload(data: bytes) -> dict:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"payload is not valid UTF-8 JSON: {exc}") from None
    except RecursionError:  # (nested deeper than the interpreter's recursion limit)
        raise ProtocolError("payload is JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"payload is a JSON {type(obj).__name__}, expected an object")
    return obj


def decode(data: bytes) -> tuple:
    """Decode one whole frame from ``data``; return ``(Frame, rest)``.

    Raises :class:`ProtocolError` for a bad frame and :class:`IncompleteFrame` when more
    bytes are needed."""
    if len(data) < HEADER_SIZE:
        raise IncompleteFrame(HEADER_SIZE - len(data))
    version, mtype, length = decode_header(data[:HEADER_SIZE])
    end = HEADER_SIZE + length
    if len(data) < end:
        raise IncompleteFrame(end - len(data))
    return Frame(version, mtype, decode_payload(data[HEADER_SIZE:end])), data[end:]


class IncompleteFrame(PyctdbError):
    """Not a whole frame yet: ``needed`` more bytes are (at least) needed."""

    def __init__(self, needed: int):
        super().__init__(f"{needed} more bytes needed")
        self.needed = needed


async def read_frame(reader, max_payload: int = MAX_PAYLOAD,
                     versions: tuple = (VERSION_PLAIN,)) -> Frame:
    """Read one frame (plain, or of the handshake) from an asyncio StreamReader; its
    length is checked from the header, before the body is read.

    Raises :class:`ProtocolError` for a bad frame, ``asyncio.IncompleteReadError`` at EOF."""
    header = await reader.readexactly(HEADER_SIZE)
    version, mtype, length = decode_header(header, max_payload, versions)
    body = await reader.readexactly(length) if length else b""
    return Frame(version, mtype, decode_payload(body))


# -- payload schemas ---------------------------------------------------------------------
# Each message type has required fields with types; a payload missing one, or with the
# wrong type, is a ProtocolError. Unknown extra fields are ignored (forward compatible).

_INT = (int,)
_OPT_INT = (int, type(None))
_SCHEMAS = {
    MsgType.HELLO: {"pnn": _INT, "address": (str,), "instance": (str,), "nodes_digest": (str,),
                    "agent_version": (str,)},
    MsgType.STATE: {"pnn": _INT, "instance": (str,), "flags": _INT, "leader": _OPT_INT,
                    "is_leader": (bool,), "generation": _OPT_INT, "recmode": _INT,
                    "vnnmap": (list,), "members": (list,), "connected": (list,),
                    "lmaster_capable": (bool,), "leader_capable": (bool,)},
    MsgType.BYE: {"pnn": _INT, "instance": (str,)},
    MsgType.CONTROL: {"pnn": _INT, "instance": (str,), "req_id": _INT, "op": (str,),
                      "args": (dict,)},
    MsgType.REPLY: {"pnn": _INT, "instance": (str,), "req_id": _INT, "ok": (bool,)},
    MsgType.MESSAGE: {"pnn": _INT, "instance": (str,), "srvid": _INT, "data": (str,)},
    MsgType.CHALLENGE: {"pnn": _INT, "nonce": (str,), "proof": (str,)},
    MsgType.PROOF: {"pnn": _INT, "proof": (str,)},
    MsgType.ACK: {"pnn": _INT, "instance": (str,), "ts": (float, int)},
}
#: Frames of the handshake only: refused on a connection once it is set up.
HANDSHAKE_TYPES = frozenset((MsgType.CHALLENGE, MsgType.PROOF))


def validate(frame: Frame) -> dict:
    """Check a frame's payload against its schema; return the payload."""
    schema = _SCHEMAS[frame.type]
    p = frame.payload
    for key, types in schema.items():
        if key not in p:
            raise ProtocolError(f"{frame.type.name} frame lacks field {key!r}")
        val = p[key]
        if isinstance(val, bool) and bool not in types:
            raise ProtocolError(f"{frame.type.name} field {key!r} must not be a boolean")
        if not isinstance(val, types):
            raise ProtocolError(
                f"{frame.type.name} field {key!r} has type {type(val).__name__}")
    for key in ("vnnmap", "members", "connected"):
        if key in schema and not all(isinstance(x, int) and not isinstance(x, bool)
                                     for x in p[key]):
            raise ProtocolError(f"{frame.type.name} field {key!r} must be a list of PNNs")
    if frame.type == MsgType.MESSAGE:
        check_message(p)
    return p


# -- MESSAGE (type 6) --------------------------------------------------------------------
# {"pnn": src, "instance": ..., "srvid": u64, "data": base64}. The receiving agent passes
# the base64 text through to its local clients unchanged (their API is JSON too), so it
# is validated here once and never decoded on the way.

#: Largest message data (bytes, before base64) a node sends or accepts.
MAX_MESSAGE_DATA = 512 * 1024
MAX_SRVID = 2 ** 64 - 1
_MAX_MESSAGE_B64 = 4 * ((MAX_MESSAGE_DATA + 2) // 3)


def check_message(p: dict):
    """Strict checks of a MESSAGE payload beyond the field types."""
    srvid = p["srvid"]
    if not 0 <= srvid <= MAX_SRVID:
        raise ProtocolError(f"MESSAGE srvid {srvid} is not an unsigned 64-bit integer")
    data = p["data"]
    if len(data) > _MAX_MESSAGE_B64:
        raise ProtocolError(f"MESSAGE data of {len(data)} base64 characters exceeds the "
                            f"limit of {MAX_MESSAGE_DATA} bytes")
    if data:
        try:
            if len(data) <= 4096:  # (strict_mode is quicker for short data)
                binascii.a2b_base64(data, strict_mode=True)
            else:
                _b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(f"MESSAGE data is not valid base64: {exc}") from None


# A MESSAGE body exactly as encode_message writes it: read without json (the receiving
# side of messaging's hot path); anything else goes through decode_payload and validate.
_MESSAGE_BODY = re.compile(rb'\{"data":"([A-Za-z0-9+/=]*)","instance":"([0-9A-Za-z]*)",'
                           rb'"pnn":(0|[1-9][0-9]{0,9}),"srvid":(0|[1-9][0-9]{0,19})\}')


def decode_body(mtype: MsgType, body: bytes) -> dict:
    """The payload of a frame of type ``mtype`` whose body is ``body``, decoded and
    checked (as :func:`decode_payload` then :func:`validate`)."""
    if mtype is MsgType.MESSAGE:
        m = _MESSAGE_BODY.fullmatch(body)
        if m is not None:
            p = {"data": m[1].decode("ascii"), "instance": m[2].decode("ascii"),
                 "pnn": int(m[3]), "srvid": int(m[4])}
            check_message(p)
            return p
    if mtype in HANDSHAKE_TYPES:
        raise ProtocolError(f"{mtype.name} frame outside the handshake")
    return validate(Frame(VERSION_PLAIN, mtype, decode_payload(body)))


def encode_message(pnn: int, instance: str, srvid: int, data_b64: str) -> bytes:
    """A MESSAGE frame, built without json.dumps (the hot path of messaging).

    ``instance`` is the sender's hex token and ``data_b64`` base64 text: neither needs JSON
    escaping. The result decodes to the same payload as ``encode(MsgType.MESSAGE, ...)``."""
    body = ('{"data":"%s","instance":"%s","pnn":%d,"srvid":%d}'
            % (data_b64, instance, pnn, srvid)).encode("ascii")
    if len(body) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(body)} bytes exceeds the limit of {MAX_PAYLOAD}")
    return HEADER.pack(MAGIC, VERSION_PLAIN, MsgType.MESSAGE, len(body), 0) + body
