"""CTDB's packets: ``struct ctdb_req_header`` and the bodies of controls and messages.

Every packet starts with the header, eight ``uint32`` in the host's byte order (ctdbd
and its clients copy structs as they are in memory; on every platform Samba's CTDB runs
on here that is little-endian): ``length`` (of the whole packet, header included),
``ctdb_magic`` (``CTDB``, 0x43544442), ``ctdb_version`` (1), ``generation``,
``operation``, ``destnode``, ``srcnode``, ``reqid``. Senders pad packets to a multiple of
8 bytes and count the padding in ``length``.

:class:`PacketReader` cuts a byte stream into packets: a length below the header's, above
:data:`MAX_PACKET`, a wrong magic or a wrong version raises :class:`PacketError`, and
the connection is then closed (there is no way to find the next packet).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pyctdb.errors import PyctdbError

MAGIC = 0x43544442
VERSION = 1
#: the largest packet accepted (a record, a database's chunk, a message)
MAX_PACKET = 16 * 1024 * 1024
ALIGN = 8

# operations (enum ctdb_operation)
REQ_CALL = 0
REPLY_CALL = 1
REQ_DMASTER = 2
REPLY_DMASTER = 3
REPLY_ERROR = 4
REQ_MESSAGE = 5
REQ_CONTROL = 7
REPLY_CONTROL = 8
REQ_KEEPALIVE = 9
REQ_TUNNEL = 10

# special node numbers
CURRENT_NODE = 0xF0000001
BROADCAST_ALL = 0xF0000002
BROADCAST_ACTIVE = 0xF0000003
BROADCAST_CONNECTED = 0xF0000004
UNKNOWN_PNN = 0xFFFFFFFF

#: a control whose sender wants no reply (ctdb_req_control.flags)
CTRL_FLAG_NOREPLY = 1

HEADER = struct.Struct("<8I")
_CONTROL = struct.Struct("<IIQIII")  # opcode, pad, srvid, client_id, flags, datalen
_REPLY_CONTROL = struct.Struct("<iII")  # status, datalen, errorlen
_MESSAGE = struct.Struct("<QI")  # srvid, datalen
_CALL = struct.Struct("<6I")  # flags, db_id, callid, hopcount, keylen, calldatalen
_REPLY_CALL = struct.Struct("<iI")  # status, datalen
_REPLY_ERROR = struct.Struct("<iI")  # status, msglen

#: REQ_CALL's call ids (the functions ctdbd runs on the record) and flags
NULL_FUNC = 0xFF000001
FETCH_FUNC = 0xFF000002
FETCH_WITH_HEADER_FUNC = 0xFF000003
CALL_IMMEDIATE_MIGRATION = 0x1
CALL_WANT_READONLY = 0x4


class PacketError(PyctdbError):
    """A packet that cannot be read (the message says what is wrong with it)."""

    code = "EPROTO"


@dataclass(frozen=True)
class Header:
    length: int
    magic: int
    version: int
    generation: int
    operation: int
    destnode: int
    srcnode: int
    reqid: int


@dataclass(frozen=True)
class Control:
    """A REQ_CONTROL's body."""

    opcode: int
    srvid: int
    client_id: int
    flags: int
    data: bytes


@dataclass(frozen=True)
class Message:
    """A REQ_MESSAGE's body."""

    srvid: int
    data: bytes


class PacketReader:
    """Packets out of a byte stream: ``feed(data)`` returns the complete ones as
    ``(Header, body)`` (the body without the header, padding included)."""

    def __init__(self, max_packet=MAX_PACKET):
        self.max_packet = max_packet
        self._buf = bytearray()

    def feed(self, data) -> list:
        self._buf += data
        out = []
        while len(self._buf) >= 4:
            length = int.from_bytes(self._buf[:4], "little")
            if length < HEADER.size:
                raise PacketError(f"packet length {length} is shorter than the "
                                  f"{HEADER.size}-byte header")
            if length > self.max_packet:
                raise PacketError(f"packet length {length} is over the limit of "
                                  f"{self.max_packet} bytes")
            if len(self._buf) < length:
                break
            h = Header(*HEADER.unpack_from(self._buf))
            if h.magic != MAGIC:
                raise PacketError(f"wrong magic 0x{h.magic:08x} (CTDB's is 0x{MAGIC:08x})")
            if h.version != VERSION:
                raise PacketError(f"protocol version {h.version} (this node speaks "
                                  f"{VERSION})")
            out.append((h, bytes(self._buf[HEADER.size:length])))
            del self._buf[:length]
        return out


def pack(operation, reqid, body, *, destnode, srcnode, generation=0) -> bytes:
    """One packet: the header and ``body``, padded to a multiple of 8 bytes."""
    length = HEADER.size + len(body)
    pad = -length % ALIGN
    length += pad
    return HEADER.pack(length, MAGIC, VERSION, generation, operation, destnode, srcnode,
                       reqid) + body + b"\0" * pad


def parse_control(body) -> Control:
    if len(body) < _CONTROL.size:
        raise PacketError(f"control of {len(body)} bytes: shorter than its "
                          f"{_CONTROL.size}-byte head")
    opcode, _pad, srvid, client_id, flags, datalen = _CONTROL.unpack_from(body)
    if datalen > len(body) - _CONTROL.size:
        raise PacketError(f"control {opcode} says {datalen} bytes of data, has "
                          f"{len(body) - _CONTROL.size}")
    return Control(opcode, srvid, client_id, flags,
                   bytes(body[_CONTROL.size:_CONTROL.size + datalen]))


def control_body(opcode, data=b"", *, srvid=0, client_id=0, flags=0) -> bytes:
    return _CONTROL.pack(opcode, 0, srvid, client_id, flags, len(data)) + data


def reply_control_body(status, data=b"", errmsg=None) -> bytes:
    """A REPLY_CONTROL's body: ``status`` and ``data``, or (``errmsg`` given) the error
    message as CTDB sends it (a NUL-terminated string, no data)."""
    if errmsg is not None:
        err = errmsg.encode("utf-8", "replace") + b"\0"
        return _REPLY_CONTROL.pack(status, 0, len(err)) + err
    return _REPLY_CONTROL.pack(status, len(data), 0) + data


def parse_reply_control(body):
    """``(status, data, errmsg or None)`` of a REPLY_CONTROL's body."""
    if len(body) < _REPLY_CONTROL.size:
        raise PacketError(f"control reply of {len(body)} bytes: too short")
    status, dlen, elen = _REPLY_CONTROL.unpack_from(body)
    if dlen + elen > len(body) - _REPLY_CONTROL.size:
        raise PacketError("control reply: its lengths exceed the packet")
    start = _REPLY_CONTROL.size
    data = bytes(body[start:start + dlen])
    err = bytes(body[start + dlen:start + dlen + elen]).rstrip(b"\0").decode(
        "utf-8", "replace") if elen else None
    return status, data, err


def parse_message(body) -> Message:
    if len(body) < _MESSAGE.size:
        raise PacketError(f"message of {len(body)} bytes: shorter than its "
                          f"{_MESSAGE.size}-byte head")
    srvid, datalen = _MESSAGE.unpack_from(body)
    if datalen > len(body) - _MESSAGE.size:
        raise PacketError(f"message says {datalen} bytes of data, has "
                          f"{len(body) - _MESSAGE.size}")
    return Message(srvid, bytes(body[_MESSAGE.size:_MESSAGE.size + datalen]))


def message_body(srvid, data=b"") -> bytes:
    return _MESSAGE.pack(srvid, len(data)) + data


@dataclass(frozen=True)
class Call:
    """A REQ_CALL's body: run function ``callid`` on record ``key`` of ``db_id``."""

    flags: int
    db_id: int
    callid: int
    hopcount: int
    key: bytes
    calldata: bytes


def parse_call(body) -> Call:
    if len(body) < _CALL.size:
        raise PacketError(f"call of {len(body)} bytes: shorter than its {_CALL.size}-byte "
                          "head")
    flags, db_id, callid, hop, klen, dlen = _CALL.unpack_from(body)
    if klen + dlen > len(body) - _CALL.size:
        raise PacketError(f"call says {klen} bytes of key and {dlen} of call data, has "
                          f"{len(body) - _CALL.size}")
    if klen == 0:
        raise PacketError("call with an empty key")
    key = bytes(body[_CALL.size:_CALL.size + klen])
    return Call(flags, db_id, callid, hop, key,
                bytes(body[_CALL.size + klen:_CALL.size + klen + dlen]))


def call_body(db_id, key, callid=NULL_FUNC, flags=CALL_IMMEDIATE_MIGRATION, calldata=b""):
    return _CALL.pack(flags, db_id, callid, 0, len(key), len(calldata)) + key + calldata


def reply_call_body(status, data=b"") -> bytes:
    return _REPLY_CALL.pack(status, len(data)) + data


def parse_reply_call(body):
    """``(status, data)`` of a REPLY_CALL's body."""
    if len(body) < _REPLY_CALL.size:
        raise PacketError(f"call reply of {len(body)} bytes: too short")
    status, n = _REPLY_CALL.unpack_from(body)
    if n > len(body) - _REPLY_CALL.size:
        raise PacketError("call reply: its length exceeds the packet")
    return status, bytes(body[_REPLY_CALL.size:_REPLY_CALL.size + n])


def reply_error_body(status, msg) -> bytes:
    m = msg.encode("utf-8", "replace")
    return _REPLY_ERROR.pack(status, len(m)) + m
