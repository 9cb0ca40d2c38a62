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
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time

from pyctdb.protocol import frames as wire
from pyctdb.server import tasks

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 5.0
CONNECT_TIMEOUT = 2.0
MAX_WRITE_BUFFER = 8 * 1024 * 1024
BACKOFF_MIN = 0.05
BACKOFF_MAX = 1.0


def _norm(addr: str) -> str:
    ip = ipaddress.ip_address(addr.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip)


class _RateLimitedLog:
    """Log a repeating complaint once per ``interval`` seconds per key."""

    def __init__(self, interval=30.0):
        self.interval = interval
        self._last = {}

    def __call__(self, level, key, msg, *args):
        now = time.monotonic()
        if now - self._last.get(key, -1e9) >= self.interval:
            self._last[key] = now
            log.log(level, msg, *args)


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


class _FrameProtocol(asyncio.Protocol):
    """A peer's incoming connection once its HELLO is accepted: frames are decoded and
    handed over right in ``data_received`` (no task wake-up per read), and what they make
    the agent send goes out at the end of it (a batch: :func:`hold`)."""

    def __init__(self, transport, reader, running):
        self.transport = transport
        self.reader = reader
        self.running = running
        self.done = asyncio.get_running_loop().create_future()

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
        self.transport.close()

    def eof_received(self):
        self._end(None)

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(None)


class Transport:
    """The TCP links of this node with every other node: dials each one, accepts and
    checks their connections, sends frames and hands over the frames received."""

    def __init__(self, *, pnn, address, port, nodes, hello, on_frame, on_link_up,
                 on_link_down, max_payload=wire.MAX_PAYLOAD):
        """``nodes``: {pnn: address} of every non-deleted node (including this one).
        ``hello``: a callable returning the HELLO payload. Callbacks: ``on_frame(pnn,
        Frame)``, ``on_link_up(pnn, hello_payload)``, ``on_link_down(pnn, reason)``."""
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
        self.stats = {"frames_in": 0, "frames_out": 0, "dropped_bad_frames": 0}

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self):
        self._running = True
        self._server = await asyncio.start_server(
            self._handle_inbound, host=self.address, port=self.port, reuse_address=True,
            limit=2 ** 16)
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
        for w in list(self._out.values()):
            await self._close_writer(w, drain=bye_payload is not None)
        for w, _ in list(self._in.values()):
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
        return self._write(pnn, w, wire.encode(msg_type, payload))

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
                self._write(pnn, w, b"".join(pending), frames=len(pending))

    def broadcast(self, msg_type, payload):
        data = wire.encode(msg_type, payload)
        for pnn, w in list(self._out.items()):
            if pnn in self._pending:
                self._flush(pnn)
            if w is not None and not w.is_closing():
                self._write(pnn, w, data)

    def _write(self, pnn, w, data, frames=1) -> bool:
        if w.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            log.warning("node %d is not reading (%d bytes queued): dropping its link",
                        pnn, w.transport.get_write_buffer_size())
            self.drop(pnn, "peer not reading")
            return False
        w.write(data)
        self.stats["frames_out"] += frames
        return True

    def drop(self, pnn, reason):
        """Close both connections with ``pnn``; the outgoing loop reconnects."""
        self._pending.pop(pnn, None)
        w = self._out.pop(pnn, None)
        if w is not None:
            w.close()
        entry = self._in.pop(pnn, None)
        if entry is not None:
            entry[0].close()
        self._update(pnn, reason)

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
                    asyncio.open_connection(addr, self.port, local_addr=(self.address, 0)),
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
            try:
                writer.write(wire.encode(wire.MsgType.HELLO, self._hello()))
                self._out[pnn] = writer
                log.debug("connected to node %d (%s:%d)", pnn, addr, self.port)
                self._update(pnn)
                # The peer never sends on this connection: any byte or EOF ends it.
                await reader.read(1)
            except (OSError, asyncio.IncompleteReadError):
                pass
            except asyncio.CancelledError:
                writer.close()
                raise
            finally:
                if self._out.get(pnn) is writer:
                    del self._out[pnn]
                    writer.close()
                    self._update(pnn, "connection closed")
            if time.monotonic() - connected_at > 1.0:
                backoff = BACKOFF_MIN
            await self._backoff(pnn, backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

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
        self._in_tasks.add(task)
        peer = writer.get_extra_info("peername") or ("?", 0)
        src = _norm(peer[0]) if peer[0] != "?" else "?"
        pnn = None
        try:
            try:
                frame = await asyncio.wait_for(wire.read_frame(reader, self.max_payload),
                                               HELLO_TIMEOUT)
                if frame.type != wire.MsgType.HELLO:
                    raise wire.ProtocolError(f"expected HELLO first, got {frame.type.name}")
                hello = wire.validate(frame)
                pnn = self._check_hello(hello, src)
            except asyncio.TimeoutError:
                self._complain(logging.WARNING, ("hello-timeout", src),
                               "dropping connection from %s: no HELLO within %ss", src,
                               HELLO_TIMEOUT)
                return
            except wire.ProtocolError as exc:
                self.stats["dropped_bad_frames"] += 1
                self._complain(logging.WARNING, ("bad-hello", src, str(exc)),
                               "dropping connection from %s: %s", src, exc)
                return
            old = self._in.get(pnn)
            if old is not None:
                old[0].close()
            self._in[pnn] = (writer, hello)
            if pnn not in self._out:
                self._wake.setdefault(pnn, asyncio.Event()).set()
            if pnn in self._up:
                # A new process instance replaced an old one: report down then up.
                self._up.discard(pnn)
                self._on_link_down(pnn, "peer reconnected")
            self._update(pnn)
            await self._serve_frames(reader, writer, pnn)
        except wire.ProtocolError as exc:
            self.stats["dropped_bad_frames"] += 1
            log.warning("dropping connection from node %s (%s): %s",
                        pnn if pnn is not None else "?", src, exc)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug must not take the daemon down
            log.exception("unexpected error on connection from %s", src)
        finally:
            self._in_tasks.discard(task)
            writer.close()
            if pnn is not None and self._in.get(pnn, (None,))[0] is writer:
                del self._in[pnn]
                self._update(pnn, "connection closed")

    async def _serve_frames(self, reader, writer, pnn):
        """Hand node ``pnn``'s connection over to a :class:`_FrameProtocol` (with what
        the StreamReader holds already) and wait until it ends."""
        transport = writer.transport
        proto = _FrameProtocol(transport, FrameReader(pnn, self.max_payload,
                                                      self._on_frame, self.stats),
                               lambda: self._running)
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

    def _check_hello(self, hello, src) -> int:
        pnn = hello["pnn"]
        if pnn == self.pnn or pnn not in self.nodes:
            raise wire.ProtocolError(f"HELLO from unknown or deleted PNN {pnn}")
        try:
            claimed = _norm(hello["address"])
        except ValueError:
            raise wire.ProtocolError(f"HELLO with invalid address {hello['address']!r}") from None
        if claimed != self.nodes[pnn]:
            raise wire.ProtocolError(
                f"HELLO claims PNN {pnn} with address {claimed}, but node {pnn} is "
                f"{self.nodes[pnn]} in this node's nodes list")
        if src != self.nodes[pnn]:
            raise wire.ProtocolError(
                f"HELLO for node {pnn} ({self.nodes[pnn]}) arrived from {src}")
        mine = self._hello()["nodes_digest"]
        if hello["nodes_digest"] != mine:
            raise wire.ProtocolError(
                f"node {pnn} has a different nodes list (digest {hello['nodes_digest'][:12]}"
                f", ours {mine[:12]}): every node must have the same nodes file")
        return pnn
