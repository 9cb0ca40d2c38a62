"""CTDB's socket: the second client front end, CTDB's own binary client protocol
(:mod:`pyctdb.protocol.ctdb`) on a Unix socket, ``/run/ctdb/ctdbd.socket`` by default,
for CTDB's ``ctdb`` tool and, later, Samba's smbd and winbindd.

Each packet is answered as ctdbd answers it, from the same node operations as the JSON
API (:class:`pyctdb.server.api.operations.NodeOperations`). This first part serves the
controls CTDB's tool needs to start and to show the cluster (GET_PNN, GET_NODEMAP,
GETVNNMAP, GET_RECMODE, GET_RECMASTER, GET_RUNSTATE, GET_CAPABILITIES, UPTIME, PING,
GET_PID, PROCESS_EXISTS, REGISTER_SRVID and DEREGISTER_SRVID, ECHO_DATA) and the leader
message (CTDB_SRVID_LEADER) the tool waits for. Any other control gets CTDB's error
reply (status -1 and a message naming it), never a dropped connection. A packet that
cannot be read (bad length, magic or version) is logged and the connection closed; a
control addressed to another node is refused (EHOSTUNREACH) for now. Only root may
connect (SO_PEERCRED), and the socket is mode 0600.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os

from pyctdb.errors import PyctdbError
from pyctdb.protocol.ctdb import marshal as M
from pyctdb.protocol.ctdb import packet as P
from pyctdb.server.api.frontend import ClientConnection
from pyctdb.server.api.server import ApiServer, UnixSocketFrontend, listen_unix

log = logging.getLogger(__name__)

DEFAULT_PATH = "/run/ctdb/ctdbd.socket"
INVALID_GENERATION = 1  # CTDB's, for "no generation yet"


class CtdbConnection(ClientConnection):
    """A client of CTDB's socket: messages for its srvids go out as REQ_MESSAGE
    packets."""

    __slots__ = ("pnn",)

    def __init__(self, transport, pnn):
        super().__init__(transport)
        self.pnn = pnn

    def encode_message(self, srvid, src, data, dropped=0) -> bytes:
        return P.pack(P.REQ_MESSAGE, 0, P.message_body(srvid, base64.b64decode(data)),
                      destnode=self.pnn, srcnode=src)


class CtdbProtocol(asyncio.Protocol):
    def __init__(self, server):
        self.server = server
        self.reader = P.PacketReader()
        self.transport = None
        self.conn = None

    def connection_made(self, transport):
        self.transport = transport
        if not ApiServer.peer_allowed(transport):
            log.warning("CTDB socket: a client that is not root was refused")
            transport.close()
            return
        self.conn = CtdbConnection(transport, self.server.ops.info.pnn()["pnn"])
        self.server.clients += 1

    def connection_lost(self, exc):
        if self.conn is not None:
            self.server.clients -= 1
            self.conn.closed()
            self.conn = None

    def data_received(self, data):
        if self.conn is None:
            return
        try:
            packets = self.reader.feed(data)
        except P.PacketError as exc:
            log.warning("CTDB socket: %s: closing the connection", exc.message)
            self.transport.close()
            return
        for header, body in packets:
            self.server.serve(self, header, body)


class CtdbSocketServer(UnixSocketFrontend):
    """CTDB's socket at ``path``, answering from ``ops`` (a NodeOperations)."""

    def __init__(self, path, ops):
        super().__init__(path, ops)
        self.clients = 0
        self.handlers = {
            M.GET_PNN: self._get_pnn, M.GET_RECMODE: self._get_recmode,
            M.GET_RECMASTER: self._get_recmaster, M.GET_PID: self._get_pid,
            M.PING: self._ping, M.GET_NODEMAP: self._get_nodemap,
            M.GETVNNMAP: self._getvnnmap, M.GET_RUNSTATE: self._get_runstate,
            M.GET_CAPABILITIES: self._get_capabilities, M.UPTIME: self._uptime,
            M.PROCESS_EXISTS: self._process_exists, M.ECHO_DATA: self._echo_data,
            M.REGISTER_SRVID: self._register_srvid,
            M.DEREGISTER_SRVID: self._deregister_srvid,
        }

    async def start(self):
        self._server = await listen_unix(self.path, lambda: CtdbProtocol(self),
                                         f"a ctdbd (or another pyctdbd) serves {self.path}")
        log.info("CTDB socket %s: serving CTDB's client protocol", self.path)

    # -- packets ---------------------------------------------------------------------------
    def serve(self, proto, h, body):
        if h.operation == P.REQ_CONTROL:
            self._control(proto, h, body)
        elif h.operation == P.REQ_MESSAGE:
            self._message(proto, h, body)
        else:
            log.warning("CTDB socket: operation %d is not served yet: packet dropped",
                        h.operation)

    @staticmethod
    def _parsed(proto, parse, body):
        """``parse(body)``, or None when the body cannot be read (logged, connection
        closed)."""
        try:
            return parse(body)
        except P.PacketError as exc:
            log.warning("CTDB socket: %s: closing the connection", exc.message)
            proto.transport.close()
            return None

    def _control(self, proto, h, body):
        c = self._parsed(proto, P.parse_control, body)
        if c is None:
            return
        me = proto.conn.pnn
        if h.destnode not in (me, P.CURRENT_NODE):
            status, data, err = -1, b"", (f"control {M.NAMES.get(c.opcode, c.opcode)} for "
                                          f"node {h.destnode}: only this node ({me}) "
                                          "answers on this socket yet")
        else:
            handler = self.handlers.get(c.opcode)
            if handler is None:
                status, data, err = -1, b"", (f"control {M.NAMES.get(c.opcode, c.opcode)} "
                                              "is not supported by pyctdbd")
                log.info("CTDB socket: %s", err)
            else:
                try:
                    status, data = handler(proto.conn, c)
                    err = None
                except (PyctdbError, ValueError) as exc:
                    status, data, err = -1, b"", str(getattr(exc, "message", exc))
        if not c.flags & P.CTRL_FLAG_NOREPLY:
            proto.transport.write(P.pack(
                P.REPLY_CONTROL, h.reqid, P.reply_control_body(status, data, err),
                destnode=h.srcnode, srcnode=me, generation=h.generation))
        if c.opcode == M.REGISTER_SRVID and c.srvid == M.SRVID_LEADER and err is None:
            self._send_leader(proto.conn)

    def _message(self, proto, h, body):
        m = self._parsed(proto, P.parse_message, body)
        if m is None:
            return
        dest = "all" if h.destnode in (P.BROADCAST_ALL, P.BROADCAST_ACTIVE) else \
            "connected" if h.destnode == P.BROADCAST_CONNECTED else \
            proto.conn.pnn if h.destnode == P.CURRENT_NODE else h.destnode
        try:
            self.ops.messages.send(dest, m.srvid, base64.b64encode(m.data).decode())
        except PyctdbError as exc:
            log.info("CTDB socket: message to srvid 0x%x not sent: %s", m.srvid, exc.message)

    def _send_leader(self, conn):
        leader = self.ops.info.leader()["leader"]
        if leader is not None:
            conn.transport.write(conn.encode_message(
                M.SRVID_LEADER, conn.pnn, base64.b64encode(M.u32(leader)).decode()))

    # -- controls --------------------------------------------------------------------------
    def _get_pnn(self, conn, c):
        return conn.pnn, b""

    def _get_recmode(self, conn, c):
        return self.ops.info.status()["recovery_mode_value"], b""

    def _get_recmaster(self, conn, c):
        leader = self.ops.info.leader()["leader"]
        return (-1 if leader is None else leader), b""

    def _get_pid(self, conn, c):
        return os.getpid(), b""

    def _ping(self, conn, c):
        return self.clients, b""

    def _get_nodemap(self, conn, c):
        st = self.ops.info.status()
        return 0, M.node_map([(n["pnn"], n["flags"], n["address"]) for n in st["nodes"]])

    def _getvnnmap(self, conn, c):
        st = self.ops.info.status()
        return 0, M.vnn_map(st["generation"] or INVALID_GENERATION, st["vnnmap"])

    def _get_runstate(self, conn, c):
        joined = self.ops.info.status()["joined"]
        return 0, M.u32(M.RUNSTATE_RUNNING if joined else M.RUNSTATE_FIRST_RECOVERY)

    def _get_capabilities(self, conn, c):
        return 0, M.u32(M.CAP_DEFAULT)

    def _uptime(self, conn, c):
        u = self.ops.info.uptime()
        return 0, M.uptime(u["current_time"], u["start_time"], u["last_recovery_started"],
                           u["last_recovery_finished"])

    def _process_exists(self, conn, c):
        pid = M.parse_u32(c.data)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return -1, b""
        except PermissionError:
            pass
        return 0, b""

    def _echo_data(self, conn, c):
        return 0, c.data

    def _register_srvid(self, conn, c):
        self.ops.messages.register(conn, c.srvid)
        return 0, b""

    def _deregister_srvid(self, conn, c):
        self.ops.messages.deregister(conn, c.srvid)
        return 0, b""
