"""Cluster-wide messaging for programs: CTDB's srvids from plain Python.

    from pyctdb.client import Messenger

    with Messenger() as m:                      # the local agent's socket
        m.register(0x1234)
        m.send(2, 0x1234, b"hello node 2")      # to node 2's clients of srvid 0x1234
        m.broadcast(0x1234, b"hello everyone")  # to every connected node (this one too)
        msg = m.receive(timeout=5)              # a Message, or None after 5 s
        for msg in m.messages(timeout=1):       # until 1 s passes without a message
            print(msg.src, msg.srvid, msg.data)

One :class:`Messenger` is one connection to the agent: its registrations last as long as
the connection. Messages arrive on the same connection as the answers to requests (see
docs/api.md#messaging); the client keeps the ones that come while it waits for an answer
and hands them out in order. Not thread-safe: use one Messenger per thread.
:class:`AsyncMessenger` is the same for asyncio.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import itertools
import json
import re
import socket
import time
from typing import NamedTuple

from pyctdb import API_VERSION
from pyctdb.client.connection import AgentUnavailable, ApiCallError, default_socket

__all__ = ["Message", "Messenger", "AsyncMessenger", "BROADCAST_ALL", "BROADCAST_CONNECTED",
           "ApiCallError", "AgentUnavailable"]

#: Destinations of a broadcast (CTDB_BROADCAST_ALL / CTDB_BROADCAST_CONNECTED). Both reach
#: every node this node is connected to, and this node.
BROADCAST_ALL = "all"
BROADCAST_CONNECTED = "connected"


class Message(NamedTuple):
    """One message that arrived for a srvid this connection registered."""

    srvid: int
    src: int  #: PNN of the sending node
    data: bytes
    #: messages for this connection the agent dropped just before this one (the client
    #: did not read fast enough; see docs/api.md#flow-control)
    dropped: int = 0

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "backslashreplace")


def _b64bytes(data) -> bytes:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.b64encode(data if isinstance(data, bytes) else bytes(data))


def _b64(data) -> str:
    return _b64bytes(data).decode("ascii")


def _message(obj) -> Message:
    m = obj["message"]
    return Message(m["srvid"], m["src"], base64.b64decode(m["data"]), m.get("dropped", 0))


# A message line exactly as the agent writes it (messaging.py): parsed without json.
_MESSAGE_LINE = re.compile(
    rb'\{"message":\{"srvid":(\d+),"src":(\d+),"data":"([A-Za-z0-9+/=]*)"\}\}')


def _message_line(line: bytes) -> Message:
    m = _MESSAGE_LINE.fullmatch(line)
    if m is None:  # e.g. with "dropped"
        return _message(json.loads(line))
    return Message(int(m[1]), int(m[2]), binascii.a2b_base64(m[3]))


def _check_result(resp):
    if not resp.get("ok"):
        err = resp.get("error") or {}
        raise ApiCallError(err.get("code", "EIO"), err.get("message", "unknown error"))
    return resp.get("result")


class Messenger:
    """A synchronous messaging client of the local agent (``path``: its API socket,
    default ``$PYCTDB_SOCKET`` or /run/pyctdb/pyctdbd.socket). ``timeout``: seconds to
    wait for an answer to a request."""

    def __init__(self, path=None, timeout=10.0):
        self.path = path or default_socket()
        self.timeout = timeout
        self._sock = None
        self._buf = b""
        self._queue = collections.deque()
        self._ids = itertools.count(1)
        self._pnn = None
        self._out = []  # requests not written yet (send(wait=False))
        self._out_size = 0
        self._call_id = None  # the id of the request call() waits for
        #: errors answered to send(wait=False), oldest first (at most 1000 kept)
        self.send_errors = collections.deque(maxlen=1000)
        self.srvids = set()

    # -- connection ------------------------------------------------------------------
    def connect(self):
        if self._sock is not None:
            return self
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.path)
        except OSError as exc:
            s.close()
            raise AgentUnavailable(f"cannot connect to pyctdbd at {self.path}: "
                                   f"{exc.strerror or exc} (is pyctdbd running?)") from None
        self._sock = s
        return self

    def close(self):
        """Close the connection; the agent forgets its registrations."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf = b""
        self._out.clear()
        self._out_size = 0
        self._call_id = None
        self.srvids.clear()

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc):
        self.close()

    def fileno(self) -> int:
        """The socket's descriptor, for select()/poll() (readable: a message may be
        there; :meth:`pending` says whether one is already buffered)."""
        return self.connect()._sock.fileno()

    def _lost(self, why):
        self.close()
        raise AgentUnavailable(f"pyctdbd at {self.path}: {why}")

    def _fill(self, deadline) -> bool:
        """Read once from the socket, waiting until ``deadline`` (monotonic; None: no
        limit). Returns False on timeout."""
        if deadline is None:
            self._sock.settimeout(None)
        else:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._sock.settimeout(left)
        try:
            chunk = self._sock.recv(262144)
        except socket.timeout:
            return False
        except OSError as exc:
            self._lost(f"connection lost: {exc}")
        if not chunk:
            self._lost("the agent closed the connection")
        self._buf += chunk
        return True

    def _lines(self):
        """Complete lines buffered so far: messages are queued, the rest returned."""
        if b"\n" not in self._buf:
            return []
        *lines, self._buf = self._buf.split(b"\n")
        others = []
        for line in lines:
            if line.startswith(b'{"message":'):
                self._queue.append(_message_line(line))
            elif line.strip():
                resp = json.loads(line)
                if self._call_id is not None and resp.get("id") == self._call_id:
                    others.append(resp)
                elif not resp.get("ok"):  # a send(wait=False) failed
                    err = resp.get("error") or {}
                    self.send_errors.append(ApiCallError(err.get("code", "EIO"),
                                                         err.get("message", "")))
        return others

    def _request(self, command, args) -> bytes:
        self._last_id = next(self._ids)
        return (json.dumps({"version": API_VERSION, "id": self._last_id,
                            "command": command, "args": args}, separators=(",", ":"))
                + "\n").encode()

    def flush(self):
        """Write the requests of send(wait=False) that are still buffered."""
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            self._out_size = 0
            try:
                self._sock.sendall(data)
            except OSError as exc:
                self._lost(f"connection lost: {exc}")

    # -- requests --------------------------------------------------------------------
    def call(self, command, **args):
        """One request to the agent; messages that arrive meanwhile are kept."""
        self.connect()
        self._out.append(self._request(command, args))
        self._call_id = self._last_id
        try:
            self.flush()
            deadline = time.monotonic() + self.timeout
            while True:
                answers = self._lines()
                if answers:
                    if len(answers) > 1:  # only one request is ever outstanding
                        self._lost("unexpected answers from the agent")
                    return _check_result(answers[0])
                if not self._fill(deadline):
                    self._lost(f"no answer to {command} within {self.timeout}s")
        finally:
            self._call_id = None

    @property
    def pnn(self) -> int:
        """The PNN of the node this client is connected to."""
        if self._pnn is None:
            self._pnn = self.call("pnn")["pnn"]
        return self._pnn

    def register(self, srvid: int) -> bool:
        """Receive the messages for ``srvid`` on this node; False if already registered."""
        res = self.call("message_register", srvid=srvid)
        self.srvids.add(srvid)
        return res["changed"]

    def deregister(self, srvid: int):
        self.call("message_deregister", srvid=srvid)
        self.srvids.discard(srvid)

    def send(self, pnn, srvid: int, data=b"", wait=True):
        """Send ``data`` (bytes; a str is sent as UTF-8) to the clients of ``srvid`` on
        node ``pnn`` (or ``"all"`` / ``"connected"``); returns the PNNs it went to.
        A node that is not connected: ApiCallError ENOTCONN; no such node: ENOENT. As in
        CTDB, a message nobody is registered for on that node is dropped silently.

        ``wait=False``: do not wait for the agent's answer (returns None). The request is
        buffered and written with the next ones (at the latest by the next blocking
        call: receive, any request, or :meth:`flush`), which is much faster for many
        messages. It is a ``quiet`` request: the agent answers only if it fails, and
        those errors are collected in :attr:`send_errors`."""
        if not wait:
            self.connect()
            if isinstance(pnn, int) and not isinstance(pnn, bool) and \
                    isinstance(srvid, int) and not isinstance(srvid, bool):
                req = (b'{"version":%d,"id":%d,"command":"message_send","args":{"pnn":%d,'
                       b'"srvid":%d,"data":"%s","quiet":true}}\n'
                       % (API_VERSION, next(self._ids), pnn, srvid, _b64bytes(data)))
            else:
                req = self._request("message_send", {"pnn": pnn, "srvid": srvid,
                                                     "data": _b64(data), "quiet": True})
            self._out.append(req)
            self._out_size += len(req)
            if self._out_size > 65536:
                self.flush()
            return None
        return self.call("message_send", pnn=pnn, srvid=srvid, data=_b64(data))["pnns"]

    def broadcast(self, srvid: int, data=b"", connected_only=False) -> list:
        """Send to ``srvid`` on every connected node, this one included."""
        return self.send(BROADCAST_CONNECTED if connected_only else BROADCAST_ALL, srvid,
                         data)

    def check(self, srvids) -> dict:
        """{srvid: registered by some client on this node?} (CTDB's check_srvids)."""
        res = self.call("message_check", srvids=list(srvids))
        return {e["srvid"]: e["registered"] for e in res["srvids"]}

    # -- receiving -------------------------------------------------------------------
    def pending(self) -> int:
        """Messages already received and not yet handed out."""
        self._lines()
        return len(self._queue)

    def receive(self, timeout=None):
        """The next message; waits at most ``timeout`` seconds (None: for ever) and
        returns None if none came."""
        self.connect()
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._queue:
            self.flush()
        while not self._queue:
            if self._lines():
                self._lost("an answer from the agent that nobody asked for")
            if self._queue:
                break
            if not self._fill(deadline):
                return None
        return self._queue.popleft()

    def messages(self, timeout=None, count=None):
        """Iterate over messages as they come; stops after ``count`` messages, or when
        ``timeout`` seconds pass without one (None: never)."""
        n = 0
        while count is None or n < count:
            msg = self.receive(timeout)
            if msg is None:
                return
            n += 1
            yield msg

    __iter__ = messages


class AsyncMessenger:
    """The asyncio flavour of :class:`Messenger`: the same methods, as coroutines, and
    ``async for msg in m.messages(...)``::

        async with AsyncMessenger() as m:
            await m.register(7)
            await m.send(1, 7, b"hi")
            msg = await m.receive(timeout=5)
    """

    def __init__(self, path=None, timeout=10.0):
        self.path = path or default_socket()
        self.timeout = timeout
        self._reader = self._writer = None
        self._queue = asyncio.Queue()
        self._answers = asyncio.Queue()
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._task = None
        self._error = None
        self.srvids = set()

    async def connect(self):
        if self._writer is not None:
            return self
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(
                self.path, limit=2 ** 21)
        except OSError as exc:
            raise AgentUnavailable(f"cannot connect to pyctdbd at {self.path}: "
                                   f"{exc.strerror or exc} (is pyctdbd running?)") from None
        self._task = asyncio.get_running_loop().create_task(self._read_loop())
        return self

    async def _read_loop(self):
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                if line.startswith(b'{"message":'):
                    self._queue.put_nowait(_message(json.loads(line)))
                elif line.strip():
                    self._answers.put_nowait(json.loads(line))
        except (OSError, ValueError, asyncio.LimitOverrunError) as exc:
            self._error = exc
        finally:
            self._error = self._error or "the agent closed the connection"
            self._answers.put_nowait(None)
            self._queue.put_nowait(None)

    async def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.srvids.clear()

    async def __aenter__(self):
        return await self.connect()

    async def __aexit__(self, *exc):
        await self.close()

    async def call(self, command, **args):
        await self.connect()
        async with self._lock:
            req = json.dumps({"version": API_VERSION, "id": next(self._ids),
                              "command": command, "args": args}) + "\n"
            self._writer.write(req.encode())
            try:
                resp = await asyncio.wait_for(self._answers.get(), self.timeout)
            except asyncio.TimeoutError:
                raise AgentUnavailable(f"pyctdbd at {self.path}: no answer to {command} "
                                       f"within {self.timeout}s") from None
            if resp is None:
                raise AgentUnavailable(f"pyctdbd at {self.path}: {self._error}")
            return _check_result(resp)

    async def register(self, srvid):
        res = await self.call("message_register", srvid=srvid)
        self.srvids.add(srvid)
        return res["changed"]

    async def deregister(self, srvid):
        await self.call("message_deregister", srvid=srvid)
        self.srvids.discard(srvid)

    async def send(self, pnn, srvid, data=b""):
        return (await self.call("message_send", pnn=pnn, srvid=srvid,
                                data=_b64(data)))["pnns"]

    async def broadcast(self, srvid, data=b"", connected_only=False):
        return await self.send(BROADCAST_CONNECTED if connected_only else BROADCAST_ALL,
                               srvid, data)

    async def check(self, srvids):
        res = await self.call("message_check", srvids=list(srvids))
        return {e["srvid"]: e["registered"] for e in res["srvids"]}

    async def receive(self, timeout=None):
        await self.connect()
        try:
            msg = await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None
        if msg is None:
            self._queue.put_nowait(None)
            raise AgentUnavailable(f"pyctdbd at {self.path}: {self._error}")
        return msg

    async def messages(self, timeout=None, count=None):
        n = 0
        while count is None or n < count:
            msg = await self.receive(timeout)
            if msg is None:
                return
            n += 1
            yield msg
