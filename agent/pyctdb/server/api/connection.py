"""One connection of the JSON API's socket: newline-delimited requests read, handed to
the front end (server.py) in order, answers written in batches, reading paced by the
client's reading."""

from __future__ import annotations

import asyncio
import collections

from pyctdb.protocol.api import MAX_LINE
from pyctdb.server.api.frontend import ClientConnection
from pyctdb.server.tasks import spawn
from pyctdb.server.transport import hold, release


class ApiConnection(ClientConnection):
    """A client connection of the JSON API: messages for its srvids are written to it
    as JSON lines ``{"message": {"srvid", "src", "data"[, "dropped"]}}``."""

    __slots__ = ()

    @staticmethod
    def encode_message(srvid, src, data, dropped=0) -> bytes:
        if dropped:
            return (b'{"message":{"srvid":%d,"src":%d,"data":"%s","dropped":%d}}\n'
                    % (srvid, src, data.encode("ascii"), dropped))
        return (b'{"message":{"srvid":%d,"src":%d,"data":"%s"}}\n'
                % (srvid, src, data.encode("ascii")))


class ApiProtocol(asyncio.Protocol):
    """One client connection of the API socket. Requests are newline-delimited JSON,
    answered in order. What one read brings is handled right in ``data_received``: a
    command that answers at once is answered there, and the answers (and the frames and
    message lines it made the agent send) are written at its end, in one write each
    (a batch: transport.hold). A command that must wait runs as a task; the requests
    behind it wait their turn. Reading pauses when an answer was written while the
    client was not reading (its write buffer above the high-water mark), until the
    buffer drains — as a StreamWriter's drain() after each answer — or while many
    requests are queued. Messages for the client alone never pause it: a client that
    sends many quiet messages before it reads would otherwise wait for the agent while
    the agent waits for it (messages beyond its backlog are dropped instead,
    messaging.py)."""

    MAX_QUEUED = 1024  # requests queued behind a waiting command before reading pauses

    def __init__(self, server):
        self.server = server
        self.transport = None
        self.conn = None
        self.buf = b""          # the start of a request line not complete yet
        self.queued = collections.deque()  # lines behind the waiting command
        self.task = None        # the waiting command
        self.out = []           # answers not written yet
        self.eof = False
        self.lost = False
        self.write_paused = False   # the write buffer is above its high-water mark
        self.answer_waits = False   # an answer was written meanwhile
        self.read_paused = False

    def connection_made(self, transport):
        self.transport = transport
        if not self.server.peer_allowed(transport):
            transport.write(self.server.error_line(None, "EPERM",
                                                   "only root may use this socket"))
            transport.close()
            return
        self.conn = ApiConnection(transport)

    def data_received(self, data):
        if self.conn is None or self.eof:
            return
        if b"\n" not in data:
            buf = self.buf + data if self.buf else data
            if len(buf) > MAX_LINE:
                self._refuse_long()
            else:
                self.buf = buf
            return
        lines = (self.buf + data if self.buf else data).split(b"\n")
        rest = lines.pop()
        self.buf = rest
        hold()
        try:
            if self.task is None:
                self._run(lines)
            else:
                self.queued.extend(lines)
                self._update_reading()
            if len(rest) > MAX_LINE and not self.eof:
                self._refuse_long()
        finally:
            release()

    def _run(self, lines):
        """Handle ``lines`` in order until one must wait (the rest is queued); write the
        answers."""
        dispatch, conn, out = self.server.dispatch, self.conn, self.out
        for i, line in enumerate(lines):
            if len(line) > MAX_LINE:
                self._refuse_long()
                return
            if not line.strip():
                continue
            answer = dispatch(line, conn)
            if answer.__class__ is bytes:
                if answer:
                    out.append(answer)
            else:
                self.queued.extend(lines[i + 1:])
                self.task = spawn(self._wait(answer), name="api command")
                break
        self._write()
        self._update_reading()

    async def _wait(self, answer):
        try:
            answer = await answer
        except BaseException:  # cancelled (the agent stops)
            self.task = None
            if self.lost:
                self.conn.closed()
            raise
        self.task = None
        if answer:
            self.out.append(answer)
        hold()
        try:
            if self.lost:
                self.conn.closed()
            elif self.queued:
                lines = list(self.queued)
                self.queued.clear()
                self._run(lines)
            else:
                self._write()
            if self.eof and self.task is None and not self.lost:
                self._end()
        finally:
            release()

    def _write(self):
        out = self.out
        if out:
            data = b"".join(out) if len(out) > 1 else out[0]
            out.clear()
            if not self.lost:
                self.transport.write(data)
                if self.write_paused and not self.answer_waits:
                    self.answer_waits = True
                    self._update_reading()

    def _refuse_long(self):
        if self.transport.is_closing():
            return
        self._write()
        self.transport.write(self.server.error_line(None, "E2BIG",
                                                    f"request longer than {MAX_LINE} bytes"))
        self.buf = b""
        self.queued.clear()
        self.eof = True
        self.transport.close()

    def _end(self):
        if self.transport.is_closing():
            return
        self._write()
        if self.buf.strip():
            self.transport.write(self.server.error_line(None, "EPROTO",
                                                        "request not terminated by a newline"))
        self.transport.close()

    def _update_reading(self):
        pause = self.answer_waits or len(self.queued) > self.MAX_QUEUED
        if pause != self.read_paused and not self.lost:
            self.read_paused = pause
            if pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def pause_writing(self):
        self.write_paused = True

    def resume_writing(self):
        self.write_paused = self.answer_waits = False
        self._update_reading()

    def eof_received(self):
        self.eof = True
        if self.task is None:
            self._end()
        return True  # (closed by _end, once the waiting command has answered)

    def connection_lost(self, exc):
        self.lost = True
        if self.conn is not None and self.task is None:
            self.conn.closed()
