"""The local JSON API on a Unix socket (see docs/api.md): the first client front end.

Newline-delimited JSON requests and responses. Only root, or the user the daemon runs
as, is served (checked with SO_PEERCRED); the socket itself is mode 0600. Each request
names a command (commands.py, db_commands.py), which calls the node operations
(operations.py); an error is answered by its code (``PyctdbError.code``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import struct

from pyctdb import API_VERSION
from pyctdb.errors import ApiError, PyctdbError
from pyctdb.server.api import commands, db_commands
from pyctdb.server.api.commands import NO_ANSWER
from pyctdb.server.api.connection import ApiProtocol
from pyctdb.server.api.frontend import Frontend

log = logging.getLogger(__name__)


def check_directory(path):
    """The socket's directory must not let others replace the socket: not writable by
    group or others unless sticky (as /tmp). ApiError (EPERM) otherwise."""
    st = os.stat(path)
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise ApiError("EPERM", f"{path} (the API socket's directory) is writable by "
                       f"{'group and others' if st.st_mode & 0o002 else 'its group'} "
                       f"(mode {stat.S_IMODE(st.st_mode):04o}): another user could "
                       "replace the socket; make it 0755 or stricter")


def check_socket(path):
    """The socket must be this process's and mode 0600: only root and the agent's user
    may connect (checked at start: CTDB's socket and ours stay root-only)."""
    st = os.stat(path)
    if stat.S_IMODE(st.st_mode) != 0o600 or st.st_uid != os.geteuid():
        raise ApiError("EPERM", f"{path}: the API socket has mode "
                       f"{stat.S_IMODE(st.st_mode):04o} and owner {st.st_uid}, not 0600 and "
                       f"{os.geteuid()}")
    log.info("API socket %s: mode 0600, owner %d", path, st.st_uid)


async def listen_unix(path, factory, busy):
    """A root-only Unix socket server at ``path`` (its directory made 0755 if missing and
    checked, a stale socket file removed, mode 0600 checked): the asyncio server.
    ApiError EEXIST with ``busy`` when a live server answers on ``path``."""
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, mode=0o755, exist_ok=True)
    check_directory(d or ".")
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # (stale)
        else:
            raise ApiError("EEXIST", busy)
        finally:
            probe.close()
    old = os.umask(0o177)
    try:
        server = await asyncio.get_running_loop().create_unix_server(factory, path=path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    check_socket(path)
    return server


class UnixSocketFrontend(Frontend):
    """A front end on a root-only Unix socket at ``path`` (:func:`listen_unix`); ``stop``
    closes it and removes the socket file."""

    def __init__(self, path, ops):
        super().__init__(ops)
        self.path = path
        self._server = None

    async def stop(self):
        if self._server is not None:
            self._server.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


class ApiServer(UnixSocketFrontend):
    """The JSON front end: serves the API socket, decodes each request line, calls the
    command's node operation (``ops``, a NodeOperations) and encodes its result or
    error. ``commands``: command name -> handler; ``conn_commands``: those whose
    handler takes the client's connection (``conn=ApiConnection``)."""

    def __init__(self, path, ops):
        super().__init__(path, ops)
        self.commands = commands.node_commands(ops)
        msg_cmds, msg_conn = commands.message_commands(ops)
        db_cmds, db_conn = db_commands.commands(ops)
        self.commands.update(msg_cmds)
        self.commands.update(db_cmds)
        self.commands.update(commands.conf_commands(ops))
        self.conn_commands = msg_conn | db_conn

    async def start(self):
        self._server = await listen_unix(self.path, lambda: ApiProtocol(self),
                                         f"another pyctdbd is serving {self.path}")

    @staticmethod
    def peer_allowed(transport) -> bool:
        """Whether the peer of ``transport`` is root or the agent's own user."""
        sock = transport.get_extra_info("socket")
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
        except OSError:
            return False
        return uid in (0, os.getuid())

    @staticmethod
    def _encode(obj) -> bytes:
        return (json.dumps(obj, separators=(",", ":")) + "\n").encode()

    def error_line(self, req_id, code, message) -> bytes:
        return self._encode({"version": API_VERSION, "id": req_id, "ok": False,
                             "error": {"code": code, "message": message}})

    def dispatch(self, line, conn=None):
        """The answer to one request line (bytes; b"" for none), or, for a command that
        must wait, a coroutine that returns it."""
        try:
            req = json.loads(line)
        except ValueError as exc:
            return self.error_line(None, "EPROTO", f"request is not valid JSON: {exc}")
        if not isinstance(req, dict):
            return self.error_line(None, "EPROTO", "request must be a JSON object")
        req_id = req.get("id")
        if req.get("version") != API_VERSION:
            return self.error_line(req_id, "EPROTO",
                                   f"unsupported API version {req.get('version')!r} "
                                   f"(this agent speaks {API_VERSION})")
        cmd = req.get("command")
        args = req.get("args") or {}
        if not isinstance(args, dict):
            return self.error_line(req_id, "EINVAL", "args must be an object")
        handler = self.commands.get(cmd)
        if handler is None:
            return self.error_line(req_id, "EINVAL", f"unknown command {cmd!r} (known: "
                                   f"{', '.join(sorted(self.commands))})")
        try:
            if cmd in self.conn_commands:
                if "conn" in args:
                    raise TypeError("unexpected argument 'conn'")
                result = handler(conn=conn, **args)
            else:
                result = handler(**args)
        except Exception as exc:
            return self._failed(req_id, cmd, exc)
        if asyncio.iscoroutine(result):
            return self._finish(req_id, cmd, result)
        return self._answer(req_id, result)

    async def _finish(self, req_id, cmd, coro) -> bytes:
        try:
            result = await coro
        except Exception as exc:
            return self._failed(req_id, cmd, exc)
        return self._answer(req_id, result)

    def _failed(self, req_id, cmd, exc) -> bytes:
        """The answer to a failed command: a PyctdbError by its code and message; a
        TypeError (bad arguments: the handler's call did not fit) EINVAL; else EIO."""
        if isinstance(exc, PyctdbError):
            return self.error_line(req_id, exc.code, exc.message)
        if isinstance(exc, TypeError):
            return self.error_line(req_id, "EINVAL", f"bad arguments for {cmd}: {exc}")
        log.error("API command %s failed", cmd, exc_info=exc)
        return self.error_line(req_id, "EIO", f"{cmd} failed: {exc}")

    def _answer(self, req_id, result) -> bytes:
        if result is NO_ANSWER:
            return b""
        return self._encode({"version": API_VERSION, "id": req_id, "ok": True,
                             "result": result})
