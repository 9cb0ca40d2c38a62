"""The authenticated transport: the handshake's proofs and the frames' MACs (see
docs/protocol.md, "Authentication").

With a transport key, a connection starts with a mutual challenge-response (HELLO with
the caller's nonce and key id; CHALLENGE with the acceptor's nonce and its proof; PROOF
with the caller's proof). Both sides then derive a session key for this connection
only, and every later frame is *sealed*: version 2 in its header, its sequence number
(per connection, from 1, strictly +1) in the header's last field, and a 16-byte MAC
after the payload over the 64-bit sequence number, the header and the payload.

Proofs and the session key are HMAC-SHA256 with the shared key; the frames' MAC is keyed
BLAKE2b-128 with the session key (of the two, the cheaper for the small frames of
messaging). Only ``hashlib``, ``hmac`` and ``secrets``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import struct

from pyctdb.protocol.frames import HEADER_SIZE, MAGIC, VERSION_AUTH, ProtocolError

NONCE_SIZE = 32
KEY_ID_SIZE = 8
PROOF_SIZE = 32
MAC_SIZE = 16
#: Largest frame (payload bytes) accepted before the handshake is done.
HANDSHAKE_MAX_PAYLOAD = 4096

_SEQ = struct.Struct("!Q")
_U32 = struct.Struct("!I")
_SEALED = MAGIC + VERSION_AUTH.to_bytes(2, "big")  # a sealed frame's first 6 bytes
_PNNS = struct.Struct("!II")
_HEX = re.compile(r"[0-9a-f]*")
_ACCEPT = b"pyctdb-accept\0"
_CONNECT = b"pyctdb-connect\0"
_SESSION = b"pyctdb-session\0"


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_SIZE)


def key_id(key: bytes) -> str:
    """Which key (not secret): the first 8 bytes of SHA-256("pyctdb-key-id\\0" | key),
    as 16 hex digits."""
    return hashlib.sha256(b"pyctdb-key-id\0" + key).digest()[:KEY_ID_SIZE].hex()


def _transcript(label, nc, ns, caller, acceptor):
    return label + nc + ns + _PNNS.pack(caller, acceptor)


def accept_proof(key, nc, ns, caller, acceptor) -> bytes:
    """The acceptor's proof: HMAC-SHA256(k, "pyctdb-accept\\0" | Nc | Ns | caller | acceptor)."""
    return hmac.digest(key, _transcript(_ACCEPT, nc, ns, caller, acceptor), "sha256")


def connect_proof(key, nc, ns, caller, acceptor) -> bytes:
    """The caller's proof: HMAC-SHA256(k, "pyctdb-connect\\0" | Nc | Ns | caller | acceptor)."""
    return hmac.digest(key, _transcript(_CONNECT, nc, ns, caller, acceptor), "sha256")


def session_key(key, nc, ns, caller, acceptor) -> bytes:
    """This connection's key: HMAC-SHA256(k, "pyctdb-session\\0" | Nc | Ns | caller | acceptor)."""
    return hmac.digest(key, _transcript(_SESSION, nc, ns, caller, acceptor), "sha256")


def same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def hex_field(payload: dict, name: str, size: int, what: str) -> bytes:
    """``payload[name]``: exactly ``size`` bytes as lower-case hex, else ProtocolError."""
    val = payload.get(name)
    if not isinstance(val, str) or len(val) != 2 * size or not _HEX.fullmatch(val):
        raise ProtocolError(f"{what} field {name!r} must be {size} bytes of lower-case hex")
    return bytes.fromhex(val)


class Sealer:
    """Seals the frames one side sends on one connection."""

    __slots__ = ("_base", "seq")

    def __init__(self, ks: bytes):
        self._base = hashlib.blake2b(key=ks, digest_size=MAC_SIZE)
        self.seq = 0

    def seal(self, frame: bytes) -> bytes:
        """The sealed form of a plain (version 1) frame as :func:`frames.encode` makes it:
        its type and length are kept, the version becomes 2, the reserved field the
        sequence number, and the MAC follows."""
        self.seq = seq = self.seq + 1
        header = _SEALED + frame[6:12] + _U32.pack(seq & 0xFFFFFFFF)
        h = self._base.copy()
        if len(frame) <= 4096:  # (small frames: fewer calls is quicker than fewer copies)
            data = header + frame[HEADER_SIZE:]
            h.update(_SEQ.pack(seq) + data)
            return data + h.digest()
        body = memoryview(frame)[HEADER_SIZE:]
        h.update(_SEQ.pack(seq) + header)
        h.update(body)
        return b"".join((header, body, h.digest()))


class Opener:
    """Checks the sealed frames received on one connection: their sequence numbers and
    MACs."""

    __slots__ = ("_base", "seq")

    def __init__(self, ks: bytes):
        self._base = hashlib.blake2b(key=ks, digest_size=MAC_SIZE)
        self.seq = 0

    def check(self, buf, pos: int, length: int, seq32: int):
        """The frame at ``buf[pos:]`` (header, ``length`` payload bytes, MAC), whose
        header names ``seq32``: ProtocolError unless it is the next one and its MAC is
        right."""
        expected = self.seq + 1
        if seq32 != expected & 0xFFFFFFFF:
            raise ProtocolError(f"frame out of sequence (number {seq32}, expected "
                                f"{expected & 0xFFFFFFFF}): replayed, lost or injected")
        end = pos + HEADER_SIZE + length
        h = self._base.copy()
        h.update(_SEQ.pack(expected))
        h.update(memoryview(buf)[pos:end])
        if not hmac.compare_digest(h.digest(), bytes(buf[end:end + MAC_SIZE])):
            raise ProtocolError(f"frame {expected & 0xFFFFFFFF} has a bad MAC: forged, "
                                "damaged or from another connection")
        self.seq = expected
