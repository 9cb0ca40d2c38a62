"""A small synchronous client of the local API (used by the CLI and the test harness)."""

from __future__ import annotations

import itertools
import json
import os
import socket

from pyctdb import API_VERSION
from pyctdb.errors import PyctdbError
from pyctdb.protocol.api import DEFAULT_SOCKET


class ApiCallError(PyctdbError):
    """The agent answered a request with an error: its ``code`` (errno name) and
    ``message``; ``str()`` is ``"CODE: message"``."""

    def __init__(self, code, message):
        super().__init__(message, code)
        Exception.__init__(self, f"{code}: {message}")


class AgentUnavailable(PyctdbError):
    """The agent's socket cannot be reached, or the connection to it was lost, or the
    agent did not answer in time (code ENOTCONN)."""

    code = "ENOTCONN"


def default_socket() -> str:
    return os.environ.get("PYCTDB_SOCKET") or DEFAULT_SOCKET


class Client:
    """A synchronous connection to the local agent's API (``path``: its socket, default
    ``$PYCTDB_SOCKET`` or /run/pyctdb/pyctdbd.socket): :meth:`call` sends one request and
    returns its result. Connects at the first call."""

    def __init__(self, path=None, timeout=10.0):
        self.path = path or default_socket()
        self.timeout = timeout
        self._sock = None
        self._buf = b""
        self._ids = itertools.count(1)

    def _connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except FileNotFoundError:
            s.close()
            raise AgentUnavailable(f"cannot connect to pyctdbd at {self.path}: no such socket "
                                   "(is pyctdbd running?)") from None
        except OSError as exc:
            s.close()
            raise AgentUnavailable(f"cannot connect to pyctdbd at {self.path}: "
                                   f"{exc.strerror or exc} (is pyctdbd running?)") from None
        self._sock = s

    def call(self, command, **args):
        fresh = self._sock is None
        if fresh:
            self._connect()
        req_id = next(self._ids)
        line = json.dumps({"version": API_VERSION, "id": req_id, "command": command,
                           "args": args}).encode() + b"\n"
        try:
            try:
                self._sock.sendall(line)
            except (BrokenPipeError, ConnectionResetError):
                if fresh:
                    raise
                # The agent this connection was made to has gone (a Unix socket whose
                # peer closed refuses the write: the request reached no one); an agent
                # started since answers on a new connection.
                self.close()
                self._connect()
                self._sock.sendall(line)
            while b"\n" not in self._buf:
                chunk = self._sock.recv(65536)
                if not chunk:
                    raise AgentUnavailable(f"pyctdbd at {self.path} closed the connection")
                self._buf += chunk
        except socket.timeout:
            self.close()
            raise AgentUnavailable(f"pyctdbd at {self.path} did not answer within "
                                   f"{self.timeout}s") from None
        except OSError as exc:
            self.close()
            raise AgentUnavailable(f"lost connection to pyctdbd at {self.path}: {exc}") from None
        resp_line, self._buf = self._buf.split(b"\n", 1)
        resp = json.loads(resp_line)
        if not resp.get("ok"):
            err = resp.get("error") or {}
            raise ApiCallError(err.get("code", "EIO"), err.get("message", "unknown error"))
        return resp.get("result")

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
