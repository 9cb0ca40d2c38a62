"""Node-to-node transport over TCP.

Like CTDB, every pair of nodes uses two connections: each node dials every other node
and sends only on its own outgoing connection; it receives on the connection the peer
dialled. A peer's link is *up* when both are established and the peer's HELLO was
accepted. Dead peers are seen at once when their connections break; silent ones are
dropped by the cluster layer after the keepalive limit (:meth:`Transport.drop`).

Every connection starts with a HELLO naming the caller's PNN, address, process instance
and a digest of its nodes list. A HELLO that does not match the nodes list (wrong
address, unknown PNN, a different nodes file), and any malformed, oversized or
wrong-version frame, is logged and the connection dropped; the sender's outgoing loop
reconnects by itself with a capped back-off.

With a transport key (``[cluster] transport key file``), the HELLO opens a mutual
challenge-response (:mod:`pyctdb.protocol.auth`): no other frame is accepted before both
sides proved they hold a key of the cluster, and every later frame is sealed with the
connection's own session key and sequence number. Before its handshake is done a
connection may send one frame of at most 4 KiB (checked from its header), it has
:data:`HANDSHAKE_TIMEOUT` seconds, and there may be at most
:data:`MAX_HANDSHAKES_PER_SOURCE` such connections per source address and
:data:`MAX_HANDSHAKES` in all; others are closed at once. These limits hold without a key
too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import time

from pyctdb.common.config import read_transport_keys
from pyctdb.common.logsetup import NOTICE
from pyctdb.errors import ConfigError
from pyctdb.protocol import auth
from pyctdb.protocol import frames as wire
from pyctdb.server import tasks

log = logging.getLogger(__name__)

#: Seconds a connection has to complete its handshake (HELLO, and with a key its proofs).
HANDSHAKE_TIMEOUT = 2.0
#: Connections whose handshake is not done yet: at most this many per source address,
#: and in all; more are closed at once.
MAX_HANDSHAKES_PER_SOURCE = 4
MAX_HANDSHAKES = 64
#: Seconds between two checks of the transport key file for a change (a rotation).
KEY_FILE_CHECK = 1.0
CONNECT_TIMEOUT = 2.0
MAX_WRITE_BUFFER = 8 * 1024 * 1024
BACKOFF_MIN = 0.05
BACKOFF_MAX = 1.0


def _reset(writer):
    """Close a link's connection (``writer``: its StreamWriter or asyncio transport)
    with a reset (RST), never a clean end of stream: a clean end of stream from a
    guarded node means its guard has dropped its addresses (:mod:`pyctdb.server.guard`),
    which a deliberate close must not say."""
    transport = writer.transport if hasattr(writer, "transport") else writer
    if transport.is_closing():
        transport.abort()
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except (OSError, ValueError):  # (ValueError: uvloop's, for a closed socket)
            pass
    transport.abort()


_LINGER_RESET = (1).to_bytes(4, "little") + (0).to_bytes(4, "little")  # struct linger {1, 0}
_TCP_CLOSE_WAIT = 8  # (linux/tcp_states.h)


def _closed_by_peer(sock) -> bool:
    """Whether the end of stream just read on ``sock`` is the peer's: its TCP state is
    CLOSE_WAIT (the peer's FIN, nothing sent by this host). A socket this host shut down
    itself — the node's own guard fencing it shuts the shared socket down — is in
    FIN_WAIT or later, and says nothing about the peer's addresses."""
    if sock is None:
        return False
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] == _TCP_CLOSE_WAIT
    except (OSError, ValueError):
        return False


def _norm(addr: str) -> str:
    ip = ipaddress.ip_address(addr.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip)


def check_hello(hello, src, me, nodes, digest) -> int:
    """The PNN of a peer's valid HELLO, received from address ``src``, checked against
    this node's PNN ``me``, its nodes ``{pnn: address}`` and its nodes list's digest;
    ProtocolError otherwise."""
    pnn = hello["pnn"]
    if not 8 <= len(hello["instance"]) <= 64:
        raise wire.ProtocolError(f"HELLO with an instance id of {len(hello['instance'])} "
                                 "characters (8 to 64)")
    if pnn == me or pnn not in nodes:
        raise wire.ProtocolError(f"HELLO from unknown or deleted PNN {pnn}")
    try:
        claimed = _norm(hello["address"])
    except ValueError:
        raise wire.ProtocolError(f"HELLO with invalid address {hello['address']!r}") from None
    if claimed != nodes[pnn]:
        raise wire.ProtocolError(
            f"HELLO claims PNN {pnn} with address {claimed}, but node {pnn} is "
            f"{nodes[pnn]} in this node's nodes list")
    if src != nodes[pnn]:
        raise wire.ProtocolError(f"HELLO for node {pnn} ({nodes[pnn]}) arrived from {src}")
    if hello["nodes_digest"] != digest:
        raise wire.ProtocolError(
            f"node {pnn} has a different nodes list (digest {hello['nodes_digest'][:12]}"
            f", ours {digest[:12]}): every node must have the same nodes file")
    return pnn


class _RateLimitedLog:
    """Log a repeating complaint at most ``burst`` times per ``interval`` seconds per
    key. Keys are made of this node's own words and of addresses or PNNs, never of a
    peer's bytes; at most ``max_keys`` are remembered (the oldest are forgotten)."""

    def __init__(self, interval=30.0, max_keys=1024):
        self.interval = interval
        self.max_keys = max_keys
        self._last = {}  # key -> (start of its interval, lines logged in it)

    def __call__(self, level, key, msg, *args, burst=1):
        now = time.monotonic()
        start, count = self._last.get(key, (-1e9, 0))
        if now - start >= self.interval:
            start, count = now, 0
        if count < burst:
            if key not in self._last and len(self._last) >= self.max_keys:
                self._last = {k: v for k, v in self._last.items()
                              if now - v[0] < self.interval}
                while len(self._last) >= self.max_keys:
                    del self._last[next(iter(self._last))]
            self._last[key] = (start, count + 1)
            log.log(level, msg, *args)


def _why(exc) -> str:
    """A refusal's reason for the log: its first 300 characters (a peer's bytes can be
    quoted in it)."""
    text = str(exc)
    return text if len(text) <= 300 else text[:300] + "..."


# -- output batching ---------------------------------------------------------------------
# Frames and message lines produced while the event loop handles what one read brought
# (a peer's frames, a client's requests) are written together at its end: one system
# call each, and in the same pass of the event loop (no extra wake-up). Only the event
# loop's thread uses these.
_held = 0
_later = []


def later(fn, *args):
    """Call ``fn(*args)`` when the current batch ends (see :func:`hold`), or in the next
    pass of the event loop when there is no batch."""
    if _held:
        _later.append((fn, args))
    else:
        asyncio.get_running_loop().call_soon(fn, *args)


def hold():
    """Begin a batch: :func:`later` defers to its :func:`release`. Batches nest."""
    global _held
    _held += 1


def release():
    """End a batch: at the outermost, run what :func:`later` deferred."""
    global _held, _later
    _held -= 1
    if _held == 0 and _later:
        while _later:
            todo, _later = _later, []
            for fn, args in todo:
                try:
                    fn(*args)
                except Exception:
                    log.exception("deferred write failed")


class FrameReader:
    """Decodes the frames of one peer's connection from whatever each read brings: many
    small frames per read (e.g. messages) are decoded in one go; a large frame is
    gathered until whole. ``feed`` raises :class:`protocol.ProtocolError` at the first
    bad frame (the frames before it were handed over)."""

    __slots__ = ("pnn", "max_payload", "on_frame", "stats", "parts", "size", "need")

    def __init__(self, pnn, max_payload, on_frame, stats):
        self.pnn = pnn
        self.max_payload = max_payload
        self.on_frame = on_frame
        self.stats = stats
        self.parts = []   # bytes received and not decoded yet
        self.size = 0     # their length
        self.need = wire.HEADER_SIZE  # bytes needed before anything can be decoded

    def feed(self, data):
        size = self.size + len(data)
        if size < self.need:
            self.parts.append(data)
            self.size = size
            return
        if self.parts:
            self.parts.append(data)
            buf = b"".join(self.parts)
            self.parts = []
        else:
            buf = data
        hsize, decode_header, decode_body = wire.HEADER_SIZE, wire.decode_header, wire.decode_body
        pnn, on_frame, Frame = self.pnn, self.on_frame, wire.Frame
        pos, n, count = 0, len(buf), 0
        try:
            while n - pos >= hsize:
                version, mtype, length = decode_header(buf[pos:pos + hsize],
                                                       self.max_payload)
                end = pos + hsize + length
                if end > n:  # the rest of this frame comes with later reads
                    self.need = end - pos
                    break
                payload = decode_body(mtype, buf[pos + hsize:end])
                pos = end
                count += 1
                if payload.get("pnn") != pnn:
                    raise wire.ProtocolError(f"frame claims PNN {payload.get('pnn')} on node "
                                          f"{pnn}'s connection")
                on_frame(pnn, Frame(version, mtype, payload))
            else:
                self.need = hsize
        finally:
            self.stats["frames_in"] += count
        rest = buf[pos:] if pos else buf
        self.size = len(rest)
        if rest:
            self.parts.append(rest)


class SealedFrameReader(FrameReader):
    """A :class:`FrameReader` for an authenticated connection: every frame is sealed
    (version 2 header with its sequence number, payload, MAC); its sequence number and
    MAC are checked (``opener``, :class:`pyctdb.protocol.auth.Opener`) before its
    payload is decoded."""

    __slots__ = ("opener",)

    def __init__(self, pnn, max_payload, on_frame, stats, opener):
        super().__init__(pnn, max_payload, on_frame, stats)
        self.opener = opener

    def feed(self, data):
        size = self.size + len(data)
        if size < self.need:
            self.parts.append(data)
            self.size = size
            return
        if self.parts:
            self.parts.append(data)
            buf = b"".join(self.parts)
            self.parts = []
        else:
            buf = data
        hsize, tail = wire.HEADER_SIZE, auth.MAC_SIZE
        decode_header, decode_body, check = (wire.decode_sealed_header, wire.decode_body,
                                             self.opener.check)
        pnn, on_frame, Frame, version = self.pnn, self.on_frame, wire.Frame, wire.VERSION_AUTH
        pos, n, count = 0, len(buf), 0
        try:
            while n - pos >= hsize:
                mtype, length, seq = decode_header(buf[pos:pos + hsize], self.max_payload)
                end = pos + hsize + length + tail
                if end > n:  # the rest of this frame comes with later reads
                    self.need = end - pos
                    break
                check(buf, pos, length, seq)
                payload = decode_body(mtype, buf[pos + hsize:end - tail])
                pos = end
                count += 1
                if payload.get("pnn") != pnn:
                    raise wire.ProtocolError(f"frame claims PNN {payload.get('pnn')} on node "
                                             f"{pnn}'s connection")
                on_frame(pnn, Frame(version, mtype, payload))
            else:
                self.need = hsize
        finally:
            self.stats["frames_in"] += count
        rest = buf[pos:] if pos else buf
        self.size = len(rest)
        if rest:
            self.parts.append(rest)


class _FrameProtocol(asyncio.Protocol):
    """A peer's incoming connection once its HELLO is accepted: frames are decoded and
    handed over right in ``data_received`` (no task wake-up per read), and what they make
    the agent send goes out at the end of it (a batch: :func:`hold`)."""

    def __init__(self, transport, reader, running):
        self.transport = transport
        self.reader = reader
        self.running = running
        self.done = asyncio.get_running_loop().create_future()
        self.eof = False  # the peer ended the stream cleanly

    def data_received(self, data):
        if self.done.done():
            return
        if not self.running():
            self._end(None)
            return
        hold()
        try:
            self.reader.feed(data)
        except Exception as exc:  # a bad frame (or a bug): the connection ends
            self._end(exc)
        finally:
            release()

    def _end(self, exc):
        if not self.done.done():
            if exc is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(exc)
        if exc is None and (self.eof or not self.running()):
            self.transport.close()
        else:  # (a deliberate close: a reset, see _reset)
            _reset(self.transport)

    def eof_received(self):
        self.eof = _closed_by_peer(self.transport.get_extra_info("socket"))
        self._end(None)

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(None)


class KeyRing:
    """The transport keys: the first to connect with, all accepted from peers; read again
    from their file when it changes (at most every KEY_FILE_CHECK seconds), so that a
    rotation needs no restart. A bad new file is logged and the keys in use are kept.
    Without keys the transport is not authenticated (and a key file that appears later
    changes nothing until a restart)."""

    def __init__(self, keys=(), key_file=None):
        self.keys = tuple(keys)
        self.ids = {auth.key_id(k): k for k in self.keys}
        self.key_file = key_file if self.keys else None
        self._stamp_seen = self._stamp() if self.key_file else None
        self._checked = time.monotonic()

    def _stamp(self):
        try:
            st = os.stat(self.key_file)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode, st.st_uid)

    def current(self) -> tuple:
        """The keys now (the file read again if it changed)."""
        now = time.monotonic()
        if self.key_file and now - self._checked >= KEY_FILE_CHECK:
            self._checked = now
            stamp = self._stamp()
            if stamp != self._stamp_seen:
                self._stamp_seen = stamp
                try:
                    keys = read_transport_keys(self.key_file)
                except ConfigError as exc:
                    log.error("transport key file changed but cannot be used, keeping "
                              "the keys in use (key ids %s): %s", ", ".join(self.ids), exc)
                else:
                    self.keys = keys
                    self.ids = {auth.key_id(k): k for k in keys}
                    log.log(NOTICE, "transport key file %s read again: %s",
                            self.key_file, self.describe())
        return self.keys

    def describe(self) -> str:
        return (f"connecting with key id {auth.key_id(self.keys[0])}, accepting "
                f"{', '.join(self.ids)}")


class Transport:
    """The TCP links of this node with every other node: dials each one, accepts and
    checks their connections, sends frames and hands over the frames received."""

    def __init__(self, *, pnn, address, port, nodes, hello, on_frame, on_link_up,
                 on_link_down, max_payload=wire.MAX_PAYLOAD, keys=(), key_file=None):
        """``nodes``: {pnn: address} of every non-deleted node (including this one).
        ``hello``: a callable returning the HELLO payload. Callbacks: ``on_frame(pnn,
        Frame)``, ``on_link_up(pnn, hello_payload)``, ``on_link_down(pnn, reason)``.
        ``keys``: the transport keys (bytes; the first to connect with, all accepted),
        none for an unauthenticated transport; ``key_file``: where they were read, read
        again when it changes (a key rotation)."""
        self.pnn = pnn
        self.address = address
        self.port = port
        self.nodes = {p: _norm(a) for p, a in nodes.items()}
        self._hello = hello
        self._on_frame = on_frame
        self._on_link_up = on_link_up
        self._on_link_down = on_link_down
        self.max_payload = max_payload
        self._server = None
        self._out = {}  # pnn -> StreamWriter of our outgoing connection
        self._in = {}  # pnn -> (StreamWriter of their incoming connection, hello)
        self._up = set()
        #: pnn -> Event set when that node connects to us while we have no connection
        #: to it: it is up, so the outgoing loop tries now instead of after its backoff
        self._wake = {}
        self._pending = {}  # pnn -> [encoded frames] of send_bytes, written by _flush
        self._tasks = []
        self._loops = {}  # pnn -> its outgoing loop's task
        self._in_tasks = set()
        self._running = False
        self._complain = _RateLimitedLog()
        self.stats = {"frames_in": 0, "frames_out": 0, "dropped_bad_frames": 0,
                      "refused_connections": 0}
        #: pnn -> auth.Sealer of our outgoing connection (authenticated transport)
        self._sealers = {}
        self.keys = KeyRing(keys, key_file)
        self._handshakes = {}  # source address -> connections in their handshake
        self._handshaking = 0
        #: told of every link connection: ``opened(pnn, dir, socket)`` and
        #: ``closed(pnn, dir)`` (dir "in" or "out"): the node's guard
        self.link_sockets = None
        #: pnn -> whether its link last ended with a clean end of stream from the peer
        self.clean_close = {}
        #: CLOCK_MONOTONIC time of the last frame written to any peer
        self.last_sent = 0.0

    @property
    def authenticated(self) -> bool:
        """Whether peers must prove they hold the transport key."""
        return bool(self.keys.keys)

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self):
        self._running = True
        if self.keys.keys:
            log.info("transport authenticated (%s): %s", self.keys.key_file,
                     self.keys.describe())
        else:
            log.warning("transport not authenticated: no transport key file; anyone who "
                        "reaches port %d of %s can act as a node (set [cluster] transport "
                        "key file, or put the key in cluster.key in the configuration "
                        "directory)", self.port, self.address)
        # (a small limit: a StreamReader serves only the handshake, of 4 KiB frames)
        self._server = await asyncio.start_server(
            self._handle_inbound, host=self.address, port=self.port, reuse_address=True,
            limit=2 ** 13)
        for pnn in self.nodes:
            if pnn != self.pnn:
                self._start_loop(pnn)

    def _start_loop(self, pnn):
        task = tasks.spawn(self._outbound_loop(pnn), name=f"outbound-{pnn}")
        self._tasks.append(task)
        self._loops[pnn] = task

    def set_nodes(self, nodes):
        """A new nodes list (``reloadnodes``): {pnn: address} of every non-deleted
        node. Nodes no longer listed are disconnected and never reconnected; new ones are
        connected to. A listed node's address does not change."""
        new = {p: _norm(a) for p, a in nodes.items()}
        for pnn in [p for p in self.nodes if p not in new and p != self.pnn]:
            task = self._loops.pop(pnn, None)
            if task is not None:
                task.cancel()
                self._tasks.remove(task)
            self.drop(pnn, "deleted from the nodes list")
        added = [p for p in new if p not in self.nodes and p != self.pnn]
        self.nodes = new
        if self._running:
            for pnn in added:
                self._start_loop(pnn)

    async def stop(self, bye_payload=None):
        self._running = False
        if bye_payload is not None:
            self.broadcast(wire.MsgType.BYE, bye_payload)
        for pnn, w in list(self._out.items()):
            self._closed(pnn, "out")
            await self._close_writer(w, drain=bye_payload is not None)
        for pnn, (w, _) in list(self._in.items()):
            self._closed(pnn, "in")
            await self._close_writer(w)
        if self._server is not None:
            self._server.close()
        for t in self._tasks + list(self._in_tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, *self._in_tasks, return_exceptions=True)
        self._tasks.clear()

    @staticmethod
    async def _close_writer(w, drain=False):
        try:
            if drain:
                await asyncio.wait_for(w.drain(), 0.5)
        except Exception:
            pass
        try:
            w.close()
        except Exception:
            pass

    # -- sending -------------------------------------------------------------------------
    def link_up(self, pnn) -> bool:
        return pnn in self._up

    def send(self, pnn, msg_type, payload) -> bool:
        w = self._out.get(pnn)
        if w is None or w.is_closing():
            return False
        if pnn in self._pending:
            self._flush(pnn)
        data = wire.encode(msg_type, payload)
        sealer = self._sealers.get(pnn)
        return self._write(pnn, w, data if sealer is None else sealer.seal(data))

    def send_bytes(self, pnn, data) -> bool:
        """Send an already encoded frame (messaging's hot path). Frames sent this way
        in one pass of the event loop go out in one write (one system call instead of
        one each); a frame sent with send()/broadcast() flushes them first, so the
        order of frames to a peer never changes."""
        w = self._out.get(pnn)
        if w is None or w.is_closing():
            return False
        pending = self._pending.get(pnn)
        if pending is None:
            self._pending[pnn] = [data]
            later(self._flush, pnn)
        else:
            pending.append(data)
        return True

    def _flush(self, pnn):
        pending = self._pending.pop(pnn, None)
        if pending:
            w = self._out.get(pnn)
            if w is not None and not w.is_closing():
                sealer = self._sealers.get(pnn)
                if sealer is not None:
                    pending = [sealer.seal(frame) for frame in pending]
                self._write(pnn, w, b"".join(pending), frames=len(pending))

    def broadcast(self, msg_type, payload):
        data = wire.encode(msg_type, payload)
        for pnn, w in list(self._out.items()):
            if pnn in self._pending:
                self._flush(pnn)
            if w is not None and not w.is_closing():
                sealer = self._sealers.get(pnn)
                self._write(pnn, w, data if sealer is None else sealer.seal(data))

    def _write(self, pnn, w, data, frames=1) -> bool:
        if w.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            log.warning("node %d is not reading (%d bytes queued): dropping its link",
                        pnn, w.transport.get_write_buffer_size())
            self.drop(pnn, "peer not reading")
            return False
        w.write(data)
        self.stats["frames_out"] += frames
        self.last_sent = time.monotonic()
        return True

    def drop(self, pnn, reason):
        """Close both connections with ``pnn``; the outgoing loop reconnects."""
        self._pending.pop(pnn, None)
        self._sealers.pop(pnn, None)
        w = self._out.pop(pnn, None)
        if w is not None:
            self._closed(pnn, "out")
            _reset(w)
        entry = self._in.pop(pnn, None)
        if entry is not None:
            self._closed(pnn, "in")
            _reset(entry[0])
        self.clean_close[pnn] = False
        self._update(pnn, reason)

    def _opened(self, pnn, direction, writer):
        if self.link_sockets is not None:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                self.link_sockets.opened(pnn, direction, sock)

    def _ended(self, pnn, direction, writer, clean):
        """A link connection ended (``clean``: by the peer's clean end of stream)."""
        self._closed(pnn, direction)
        _reset(writer)
        self.clean_close[pnn] = clean
        self._update(pnn, "connection closed by the peer" if clean else "connection reset")

    def _closed(self, pnn, direction):
        if self.link_sockets is not None:
            self.link_sockets.closed(pnn, direction)

    # -- link state ----------------------------------------------------------------------
    def _update(self, pnn, reason=""):
        up = pnn in self._out and pnn in self._in
        if up and pnn not in self._up:
            self._up.add(pnn)
            self._on_link_up(pnn, self._in[pnn][1])
        elif not up and pnn in self._up:
            self._up.discard(pnn)
            self._on_link_down(pnn, reason)

    # -- outgoing ------------------------------------------------------------------------
    async def _outbound_loop(self, pnn):
        addr = self.nodes[pnn]
        backoff = BACKOFF_MIN
        while self._running:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(addr, self.port, local_addr=(self.address, 0),
                                            limit=2 ** 13),
                    CONNECT_TIMEOUT)
            except (OSError, asyncio.TimeoutError) as exc:
                self._complain(logging.INFO, ("connect", pnn),
                               "cannot connect to node %d (%s:%d): %s", pnn, addr, self.port,
                               exc or "timeout")
                await self._backoff(pnn, backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connected_at = time.monotonic()
            clean = False
            try:
                sealer = await self._connect_handshake(pnn, reader, writer)
                if sealer is not False:
                    self._out[pnn] = writer
                    if sealer is not None:
                        self._sealers[pnn] = sealer
                    log.debug("connected to node %d (%s:%d)", pnn, addr, self.port)
                    self._opened(pnn, "out", writer)
                    self._update(pnn)
                    # The peer never sends on this connection (after the handshake): any
                    # byte or EOF ends it.
                    clean = (await reader.read(1) == b""
                             and _closed_by_peer(writer.get_extra_info("socket")))
            except (OSError, asyncio.IncompleteReadError):
                pass
            except asyncio.CancelledError:
                writer.close()
                raise
            finally:
                if self._out.get(pnn) is writer:
                    del self._out[pnn]
                    self._sealers.pop(pnn, None)
                    self._ended(pnn, "out", writer, clean)
                else:
                    writer.close()
            if time.monotonic() - connected_at > 1.0:
                backoff = BACKOFF_MIN
            await self._backoff(pnn, backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _connect_handshake(self, pnn, reader, writer):
        """Our side of a new outgoing connection's handshake: the HELLO, and with a key
        the challenge-response. The connection's :class:`auth.Sealer` (None: no key), or
        False when the handshake failed (logged)."""
        hello = self._hello()
        keys = self.keys.current()
        if not keys:
            writer.write(wire.encode(wire.MsgType.HELLO, hello))
            return None
        key = keys[0]
        nc = auth.new_nonce()
        kid = auth.key_id(key)
        writer.write(wire.encode(wire.MsgType.HELLO, {**hello, "key_id": kid,
                                                      "nonce": nc.hex()},
                                 version=wire.VERSION_AUTH))
        addr = self.nodes[pnn]
        try:
            frame = await asyncio.wait_for(
                wire.read_frame(reader, auth.HANDSHAKE_MAX_PAYLOAD, (wire.VERSION_AUTH,)),
                HANDSHAKE_TIMEOUT)
            if frame.type != wire.MsgType.CHALLENGE:
                raise wire.ProtocolError(f"expected CHALLENGE, got {frame.type.name}")
            p = wire.validate(frame)
            if p["pnn"] != pnn:
                raise wire.ProtocolError(f"CHALLENGE from PNN {p['pnn']}")
            ns = auth.hex_field(p, "nonce", auth.NONCE_SIZE, "CHALLENGE")
            proof = auth.hex_field(p, "proof", auth.PROOF_SIZE, "CHALLENGE")
            if not auth.same(proof, auth.accept_proof(key, nc, ns, self.pnn, pnn)):
                raise wire.ProtocolError("it did not prove that it holds the transport key "
                                         f"(key id {kid})")
        except asyncio.TimeoutError:
            self._complain(logging.WARNING, ("handshake-timeout", pnn),
                           "cannot connect to node %d (%s): no answer to the handshake "
                           "within %ss", pnn, addr, HANDSHAKE_TIMEOUT)
            return False
        except (asyncio.IncompleteReadError, ConnectionError):
            self._complain(logging.WARNING, ("handshake-closed", pnn),
                           "node %d (%s) closed the connection during the handshake: it "
                           "refused this node (key id %s), see its log: is its transport "
                           "key file the same?", pnn, addr, kid)
            return False
        except wire.ProtocolError as exc:
            self.stats["refused_connections"] += 1
            self._complain(logging.WARNING, ("handshake-refused", pnn),
                           "refusing node %d (%s) at %s:%d: %s", pnn, addr, addr,
                           self.port, _why(exc))
            return False
        writer.write(wire.encode(wire.MsgType.PROOF, {
            "pnn": self.pnn, "proof": auth.connect_proof(key, nc, ns, self.pnn, pnn).hex()},
            version=wire.VERSION_AUTH))
        return auth.Sealer(auth.session_key(key, nc, ns, self.pnn, pnn))

    async def _backoff(self, pnn, seconds):
        wake = self._wake.setdefault(pnn, asyncio.Event())
        try:
            await asyncio.wait_for(wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        wake.clear()

    # -- incoming ------------------------------------------------------------------------
    async def _handle_inbound(self, reader, writer):
        task = asyncio.current_task()
        peer = writer.get_extra_info("peername") or ("?", 0)
        try:
            src = _norm(peer[0]) if peer[0] != "?" else "?"
        except ValueError:
            src = "?"
        if (self._handshaking >= MAX_HANDSHAKES
                or self._handshakes.get(src, 0) >= MAX_HANDSHAKES_PER_SOURCE):
            self.stats["refused_connections"] += 1
            self._complain(logging.WARNING, ("too-many", src),
                           "dropping connection from %s: too many connections in their "
                           "handshake (at most %d from one address, %d in all)", src,
                           MAX_HANDSHAKES_PER_SOURCE, MAX_HANDSHAKES)
            writer.transport.abort()
            return
        self._in_tasks.add(task)
        pnn = None
        clean = False
        try:
            self._handshaking += 1
            self._handshakes[src] = self._handshakes.get(src, 0) + 1
            try:
                pnn, hello, opener = await asyncio.wait_for(
                    self._accept_handshake(reader, writer, src), HANDSHAKE_TIMEOUT)
            except asyncio.TimeoutError:
                self._complain(logging.WARNING, ("hello-timeout", src),
                               "dropping connection from %s: no handshake within %ss", src,
                               HANDSHAKE_TIMEOUT)
                return
            except wire.ProtocolError as exc:
                self.stats["dropped_bad_frames"] += 1
                self._complain(logging.WARNING, ("bad-hello", src),
                               "dropping connection from %s: %s", src, _why(exc), burst=5)
                return
            finally:
                self._handshaking -= 1
                left = self._handshakes.pop(src) - 1
                if left:
                    self._handshakes[src] = left
            old = self._in.get(pnn)
            if old is not None:
                self._closed(pnn, "in")
                _reset(old[0])
            self._in[pnn] = (writer, hello)
            self._opened(pnn, "in", writer)
            if pnn not in self._out:
                self._wake.setdefault(pnn, asyncio.Event()).set()
            if pnn in self._up:
                # A new process instance replaced an old one: report down then up.
                self._up.discard(pnn)
                self._on_link_down(pnn, "peer reconnected")
            self._update(pnn)
            clean = await self._serve_frames(reader, writer, pnn, opener)
        except wire.ProtocolError as exc:
            self.stats["dropped_bad_frames"] += 1
            self._complain(logging.WARNING, ("bad-frame", pnn),
                           "dropping connection from node %s (%s): %s",
                           pnn if pnn is not None else "?", src, _why(exc), burst=10)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug must not take the daemon down
            log.exception("unexpected error on connection from %s", src)
        finally:
            self._in_tasks.discard(task)
            if pnn is not None and self._in.get(pnn, (None,))[0] is writer:
                del self._in[pnn]
                self._ended(pnn, "in", writer, clean)
            else:
                writer.close()

    async def _accept_handshake(self, reader, writer, src):
        """The acceptor's side of a new connection's handshake: ``(pnn, hello, opener)``
        (opener: the connection's :class:`auth.Opener`, None without a key), or
        ProtocolError. No frame but the HELLO (and its proof) is read before it ends,
        and none of more than 4 KiB."""
        frame = await wire.read_frame(reader, auth.HANDSHAKE_MAX_PAYLOAD,
                                      (wire.VERSION_PLAIN, wire.VERSION_AUTH))
        if frame.type != wire.MsgType.HELLO:
            raise wire.ProtocolError(f"expected HELLO first, got {frame.type.name}")
        hello = wire.validate(frame)
        pnn = check_hello(hello, src, self.pnn, self.nodes, self._hello()["nodes_digest"])
        keys = self.keys.current()
        if frame.version == wire.VERSION_PLAIN:
            if keys:
                raise wire.ProtocolError(
                    f"node {pnn} connects without authentication, but this node requires "
                    "the transport key: is the transport key file missing there?")
            return pnn, hello, None
        if not keys:
            raise wire.ProtocolError(
                f"node {pnn} connects with an authenticated transport (protocol version "
                f"{frame.version}), but this node has no transport key file")
        nc = auth.hex_field(hello, "nonce", auth.NONCE_SIZE, "HELLO")
        kid = auth.hex_field(hello, "key_id", auth.KEY_ID_SIZE, "HELLO").hex()
        key = self.keys.ids.get(kid)
        if key is None:
            raise wire.ProtocolError(
                f"node {pnn} connects with key id {kid}, which is not a key of this node "
                f"(key ids {', '.join(self.keys.ids)}): the transport key files differ")
        ns = auth.new_nonce()
        writer.write(wire.encode(wire.MsgType.CHALLENGE, {
            "pnn": self.pnn, "nonce": ns.hex(),
            "proof": auth.accept_proof(key, nc, ns, pnn, self.pnn).hex()},
            version=wire.VERSION_AUTH))
        frame = await wire.read_frame(reader, auth.HANDSHAKE_MAX_PAYLOAD,
                                      (wire.VERSION_AUTH,))
        if frame.type != wire.MsgType.PROOF:
            raise wire.ProtocolError(f"node {pnn}: expected PROOF, got {frame.type.name}")
        p = wire.validate(frame)
        proof = auth.hex_field(p, "proof", auth.PROOF_SIZE, "PROOF")
        if p["pnn"] != pnn or not auth.same(proof, auth.connect_proof(key, nc, ns, pnn,
                                                                      self.pnn)):
            raise wire.ProtocolError(f"node {pnn} did not prove that it holds the transport "
                                     f"key (key id {kid})")
        return pnn, hello, auth.Opener(auth.session_key(key, nc, ns, pnn, self.pnn))

    async def _serve_frames(self, reader, writer, pnn, opener=None):
        """Hand node ``pnn``'s connection over to a :class:`_FrameProtocol` (with what
        the StreamReader holds already) and wait until it ends. ``opener``: the
        connection's :class:`auth.Opener` (authenticated transport). Returns whether the
        peer ended it with a clean end of stream."""
        transport = writer.transport
        frame_reader = (FrameReader(pnn, self.max_payload, self._on_frame, self.stats)
                        if opener is None else
                        SealedFrameReader(pnn, self.max_payload, self._on_frame, self.stats,
                                          opener))
        proto = _FrameProtocol(transport, frame_reader, lambda: self._running)
        rest = bytes(reader._buffer)
        reader._buffer.clear()
        transport.set_protocol(proto)
        if rest:
            proto.data_received(rest)
        if reader._eof:  # (came with the HELLO: the StreamReader had it)
            proto.eof_received()
        else:
            transport.resume_reading()  # (the StreamReader may have paused it)
        await proto.done
        return proto.eof
