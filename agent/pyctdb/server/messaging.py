"""Cluster-wide messaging: CTDB's srvids (see docs/api.md#messaging, docs/protocol.md).

A client of the local API registers message ids (srvids, unsigned 64-bit) on its
connection. A message (srvid + bytes) sent to a node, or broadcast to every connected
node, is delivered to every client of that node registered for the srvid; as in CTDB, a
message for a srvid nobody registered is dropped silently. A client's registrations go
with its connection.

Between nodes a message is one MESSAGE frame. Data travels as base64 text from the
sending client to the receiving clients and is never decoded on the way (both the local
API and the wire are JSON); the wire side is validated strictly in :mod:`protocol`.

Flow control: what a client has not read yet sits in its connection's write buffer. Above
:data:`MAX_CLIENT_BACKLOG` bytes, new messages for that client are **dropped** (logged,
rate-limited, and counted); the next message it does get carries ``dropped: N``, so the
client knows. The daemon's memory per client stays bounded, and a slow client slows down
nobody else. Between nodes, a peer that does not read loses its link (the transport's
8 MiB limit), as for any frame.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time

from pyctdb.errors import PyctdbError
from pyctdb.protocol import frames
from pyctdb.server.transport import later

log = logging.getLogger(__name__)

#: Bytes a client may have unread before messages for it are dropped.
MAX_CLIENT_BACKLOG = 4 * 1024 * 1024
#: Destinations of a broadcast (CTDB_BROADCAST_ALL, CTDB_BROADCAST_CONNECTED). A node
#: that is not connected cannot be reached either way, so both reach every connected
#: node and this one.
BROADCASTS = ("all", "connected")


class MessagingError(PyctdbError):
    """A request the caller got wrong (``code`` is the API error code)."""

    def __init__(self, code, message):
        super().__init__(message, code)


class _Sink:
    """One client connection's side of messaging: its srvids, how a message is written
    to it, and what was dropped for it."""

    __slots__ = ("transport", "encode", "srvids", "dropped", "delivered", "last_warn",
                 "pending", "pending_size")

    def __init__(self, transport, encode):
        self.transport = transport
        self.encode = encode  # (srvid, src, data, dropped) -> bytes: its front end's form
        self.srvids = set()
        self.dropped = 0
        self.delivered = 0
        self.last_warn = -1e9
        self.pending = None  # lines not written yet (written together by flush)
        self.pending_size = 0

    def flush(self):
        lines, self.pending, self.pending_size = self.pending, None, 0
        if lines and not self.transport.is_closing():
            self.transport.write(b"".join(lines) if len(lines) > 1 else lines[0])


def check_srvid(srvid) -> int:
    if isinstance(srvid, bool) or not isinstance(srvid, int) or not 0 <= srvid <= frames.MAX_SRVID:
        raise MessagingError("EINVAL", f"srvid must be an unsigned 64-bit integer, not "
                                       f"{srvid!r}")
    return srvid


def check_data(data) -> str:
    """``data`` as the API carries it (base64 text); validated, returned unchanged."""
    if not isinstance(data, str):
        raise MessagingError("EINVAL", "data must be a base64 string")
    if len(data) > frames._MAX_MESSAGE_B64:
        raise MessagingError("E2BIG", f"message data exceeds the limit of "
                                      f"{frames.MAX_MESSAGE_DATA} bytes")
    if data:
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MessagingError("EINVAL", f"data is not valid base64: {exc}") from None
    return data


class Messaging:
    """Delivers messages by srvid: registrations of this node's client connections,
    messages sent to nodes or broadcast, and those that arrive, pushed to the clients
    registered for them."""

    def __init__(self, cluster, backlog=MAX_CLIENT_BACKLOG):
        self.cluster = cluster
        self.backlog = backlog
        self._by_srvid = {}  # srvid -> {conn key: _Sink}
        self._sinks = {}  # conn key -> _Sink
        self.stats = {"sent": 0, "received": 0, "delivered": 0, "unregistered": 0,
                      "dropped_slow_client": 0}
        cluster.frame_handlers[frames.MsgType.MESSAGE] = self._on_frame

    # -- registrations (per client connection) ---------------------------------------
    def is_client(self, key) -> bool:
        return key in self._sinks

    def register(self, key, srvid) -> bool:
        """Register ``srvid`` for the client connection ``key`` (a ClientConnection:
        messages go to its ``transport`` in its ``encode_message`` form); returns False
        when it was already registered there."""
        sink = self._sinks.get(key)
        if sink is None:
            sink = self._sinks[key] = _Sink(key.transport, key.encode_message)
        if srvid in sink.srvids:
            return False
        sink.srvids.add(srvid)
        self._by_srvid.setdefault(srvid, {})[key] = sink
        return True

    def deregister(self, key, srvid) -> bool:
        sink = self._sinks.get(key)
        if sink is None or srvid not in sink.srvids:
            return False
        sink.srvids.discard(srvid)
        self._unlink(key, srvid)
        return True

    def drop_client(self, key):
        """The connection ``key`` closed: all its registrations go."""
        sink = self._sinks.pop(key, None)
        if sink is None:
            return
        for srvid in sink.srvids:
            self._unlink(key, srvid)
        if sink.dropped:
            log.warning("client disconnected with %d undelivered messages dropped",
                        sink.dropped)

    def _unlink(self, key, srvid):
        conns = self._by_srvid.get(srvid)
        if conns is not None:
            conns.pop(key, None)
            if not conns:
                del self._by_srvid[srvid]

    def registered(self, srvid, key=None) -> bool:
        """Whether a client (``key``: that client connection) registered ``srvid``."""
        if key is not None:
            return key in self._by_srvid.get(srvid, ())
        return srvid in self._by_srvid

    def status(self) -> dict:
        return {"pnn": self.cluster.pnn,
                "srvids": [{"srvid": s, "clients": len(c)}
                           for s, c in sorted(self._by_srvid.items())],
                "clients": len(self._sinks), "stats": dict(self.stats)}

    # -- sending ---------------------------------------------------------------------
    def send(self, dst, srvid, data) -> list:
        """Send ``data`` (base64 text) to ``srvid`` on node ``dst`` (a PNN, ``"all"`` or
        ``"connected"``); returns the PNNs it went to. Raises MessagingError for an
        unknown node (ENOENT) or one that is not connected (ENOTCONN)."""
        c = self.cluster
        if dst in BROADCASTS:
            frame = frames.encode_message(c.pnn, c.instance, srvid, data)
            pnns = [c.pnn]
            for pnn, peer in c.peers.items():
                if peer.link_up and c.transport.send_bytes(pnn, frame):
                    pnns.append(pnn)
            self.stats["sent"] += len(pnns) - 1
            self.deliver(c.pnn, srvid, data)
            return sorted(pnns)
        if isinstance(dst, bool) or not isinstance(dst, int):
            raise MessagingError("EINVAL", f"pnn must be a PNN, \"all\" or \"connected\", "
                                           f"not {dst!r}")
        if dst == c.pnn:
            self.deliver(c.pnn, srvid, data)
            return [dst]
        peer = c.peers.get(dst)
        if peer is None:
            raise MessagingError("ENOENT", f"node {dst} does not exist or is deleted")
        if not peer.link_up or not c.transport.send_bytes(
                dst, frames.encode_message(c.pnn, c.instance, srvid, data)):
            raise MessagingError("ENOTCONN", f"node {dst} is not connected")
        self.stats["sent"] += 1
        return [dst]

    # -- receiving -------------------------------------------------------------------
    def _on_frame(self, src, p):
        self.stats["received"] += 1
        self.deliver(src, p["srvid"], p["data"])

    def deliver(self, src, srvid, data):
        """Push the message to every local client registered for ``srvid``."""
        conns = self._by_srvid.get(srvid)
        if not conns:
            self.stats["unregistered"] += 1
            log.debug("message from node %d for srvid %#x: nobody registered, dropped",
                      src, srvid)
            return
        line = encode = None
        for sink in conns.values():
            t = sink.transport
            if t.is_closing():
                continue
            if t.get_write_buffer_size() + sink.pending_size > self.backlog:
                sink.dropped += 1
                self.stats["dropped_slow_client"] += 1
                now = time.monotonic()
                if now - sink.last_warn > 10.0:
                    sink.last_warn = now
                    log.warning("a client registered for srvid %#x is not reading (%d bytes "
                                "queued): dropping messages for it (%d so far)", srvid,
                                t.get_write_buffer_size(), sink.dropped)
                continue
            if sink.dropped:
                out = sink.encode(srvid, src, data, sink.dropped)
                sink.dropped = 0
            else:
                if sink.encode is not encode:  # one form per front end, made once
                    encode = sink.encode
                    line = encode(srvid, src, data)
                out = line
            # Lines for one client in one batch (transport.hold: what one read of a peer
            # or of a client brought) or one pass of the event loop go out in one write.
            if sink.pending is None:
                sink.pending = [out]
                later(sink.flush)
            else:
                sink.pending.append(out)
            sink.pending_size += len(out)
            sink.delivered += 1
            self.stats["delivered"] += 1
