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
control addressed to another node is forwarded to it (pyctdb's control
``ctdb_control``) and answered there by the same handlers. Only root may
connect (SO_PEERCRED), and the socket is mode 0600.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import struct

from pyctdb.errors import PyctdbError
from pyctdb.protocol.ctdb import marshal as M
from pyctdb.protocol.ctdb import packet as P
from pyctdb.rules import nodeflags
from pyctdb.server.api.frontend import ClientConnection
from pyctdb.server.api.server import ApiServer, UnixSocketFrontend, listen_unix
from pyctdb.server.ctdbdb import CtdbDatabases
from pyctdb.server.ctdbtcp import CtdbTcpControls
from pyctdb.server.tasks import spawn

log = logging.getLogger(__name__)

DEFAULT_PATH = "/run/ctdb/ctdbd.socket"
FORWARD_TIMEOUT = 10.0  # seconds for a control forwarded to another node
TAKEOVER_RUN_WAIT = 9.0  # seconds a client's takeover run waits out a recovery
LEADER_BROADCAST = 1.0  # seconds between CTDB_SRVID_LEADER messages to local clients
PUBLIC_IP_ONLY_AVAILABLE = 0x1  # GET_PUBLIC_IPS flag: only addresses some node hosts
INVALID_GENERATION = 1  # CTDB's, for "no generation yet"


def peer_pid(transport):
    """The process at the other end of a Unix socket connection (SO_PEERCRED), or 0."""
    sock = transport.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return 0
    return struct.unpack("3i", creds)[0]


def link_up(iface) -> bool:
    """Whether ``iface``'s link is up (its operstate in sysfs: a small file read)."""
    try:
        with open(f"/sys/class/net/{iface}/operstate") as f:
            return f.read().strip() in ("up", "unknown")
    except OSError:
        return False


class CtdbConnection(ClientConnection):
    """A client of CTDB's socket (process ``pid``): messages for its srvids go out as
    REQ_MESSAGE packets."""

    __slots__ = ("pnn", "pid", "notes")

    def __init__(self, transport, pnn, pid):
        super().__init__(transport)
        self.pnn = pnn
        self.pid = pid
        self.notes = {}  # srvid -> data sent to it on this node when this client goes

    def encode_message(self, srvid, src, data, dropped=0) -> bytes:
        return self.encode_raw(srvid, src, base64.b64decode(data))

    def encode_raw(self, srvid, src, data: bytes) -> bytes:
        """A REQ_MESSAGE packet of ``data`` (bytes) to this client's ``srvid``."""
        return P.pack(P.REQ_MESSAGE, 0, P.message_body(srvid, data), destnode=self.pnn,
                      srcnode=src)


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
        self.conn = CtdbConnection(transport, self.server.ops.info.pnn()["pnn"],
                                   peer_pid(transport))
        self.server.conns.add(self.conn)

    def connection_lost(self, exc):
        if self.conn is not None:
            self.server.conns.discard(self.conn)
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
        self.cluster = ops.info.cluster
        self.conns = set()  # CtdbConnection: the clients connected now
        self._tasks = set()
        self._broadcaster = None
        # (every node answers the controls other nodes' CTDB sockets forward to it,
        # whether or not it serves a socket itself)
        self.cluster.control_handlers["ctdb_control"] = self._ctl_ctdb_control
        self.handlers = {
            M.GET_PNN: self._get_pnn, M.GET_RECMODE: self._get_recmode,
            M.GET_RECMASTER: self._get_recmaster, M.GET_PID: self._get_pid,
            M.PING: self._ping, M.GET_NODEMAP: self._get_nodemap,
            M.GETVNNMAP: self._getvnnmap, M.GET_RUNSTATE: self._get_runstate,
            M.GET_CAPABILITIES: self._get_capabilities, M.UPTIME: self._uptime,
            M.GET_PUBLIC_IPS: self._get_public_ips, M.GET_IFACES: self._get_ifaces,
            M.GET_PUBLIC_IP_INFO: self._get_public_ip_info,
            M.RELEASE_IP: self._release_ip, M.TAKEOVER_IP: self._takeover_ip,
            M.LIST_TUNABLES: self._list_tunables, M.GET_TUNABLE: self._get_tunable,
            M.SET_TUNABLE: self._set_tunable,
            M.GET_DEBUG: self._get_debug, M.SET_DEBUG: self._set_debug,
            M.DISABLE_NODE: self._admin("disable"), M.ENABLE_NODE: self._admin("enable"),
            M.STOP_NODE: self._admin("stop"), M.CONTINUE_NODE: self._admin("continue"),
            M.SET_BAN_STATE: self._set_ban_state, M.GET_RECLOCK_FILE: self._get_reclock,
            M.RELOAD_PUBLIC_IPS: self._reload_public_ips,
            M.PROCESS_EXISTS: self._process_exists, M.ECHO_DATA: self._echo_data,
            M.CHECK_PID_SRVID: self._check_pid_srvid,
            M.REGISTER_SRVID: self._register_srvid,
            M.DEREGISTER_SRVID: self._deregister_srvid,
            M.REGISTER_NOTIFY: self._register_notify,
            M.DEREGISTER_NOTIFY: self._deregister_notify,
        }
        #: the database part: attach, REQ_CALL, TRANS3_COMMIT (ctdbdb.py)
        self.databases = CtdbDatabases(ops)
        self.handlers.update(self.databases.handlers())
        #: the connections of public addresses (tickles) and gratuitous ARP (ctdbtcp.py)
        self.handlers.update(CtdbTcpControls(ops).handlers())

    async def start(self):
        self._server = await listen_unix(self.path, lambda: CtdbProtocol(self),
                                         f"a ctdbd (or another pyctdbd) serves {self.path}")
        log.info("CTDB socket %s: serving CTDB's client protocol", self.path)
        self._broadcaster = spawn(self._broadcast_leader(), "ctdb leader broadcast",
                                  owner=self._tasks)

    async def stop(self):
        if self._broadcaster is not None:
            self._broadcaster.cancel()
        await super().stop()

    async def _broadcast_leader(self):
        """As CTDB's leader broadcasts CTDB_SRVID_LEADER every second, this node tells
        its own clients registered for it who leads, every LEADER_BROADCAST seconds."""
        while True:
            await asyncio.sleep(LEADER_BROADCAST)
            leader = self.cluster.leader
            if leader is None:
                continue
            try:
                if self.ops.messages.check([M.SRVID_LEADER])["srvids"][0]["registered"]:
                    self.ops.messages.send(self.cluster.pnn, M.SRVID_LEADER,
                                           base64.b64encode(M.u32(leader)).decode())
            except PyctdbError as exc:
                log.debug("leader broadcast: %s", exc.message)

    # -- packets ---------------------------------------------------------------------------
    def serve(self, proto, h, body):
        if h.operation == P.REQ_CONTROL:
            self._control(proto, h, body)
        elif h.operation == P.REQ_MESSAGE:
            self._message(proto, h, body)
        elif h.operation == P.REQ_CALL:
            call = self._parsed(proto, P.parse_call, body)
            if call is not None:
                spawn(self._call(proto, h, call), "ctdb call", owner=self._tasks)
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
        conn = proto.conn
        if h.destnode in (conn.pnn, P.CURRENT_NODE):
            result = self.answer(conn, c)
        else:
            result = self._forward(h.destnode, c)
        if asyncio.iscoroutine(result):
            spawn(self._finish(proto, h, c, result), "ctdb control", owner=self._tasks)
        else:
            self._reply(proto, h, c, *result)

    async def _finish(self, proto, h, c, coro):
        self._reply(proto, h, c, *(await coro))

    async def _call(self, proto, h, call):
        """A REQ_CALL (smbd wants a record here): REPLY_CALL, or REPLY_ERROR with why."""
        try:
            status, data = await self.databases.call(call)
            op, body = P.REPLY_CALL, P.reply_call_body(status, data)
        except (PyctdbError, ValueError) as exc:
            msg = str(getattr(exc, "message", exc))
            log.warning("CTDB socket: call on database 0x%08x (key of %d bytes) failed: %s",
                        call.db_id, len(call.key), msg)
            op, body = P.REPLY_ERROR, P.reply_error_body(-1, msg)
        if proto.conn is not None:
            proto.transport.write(P.pack(op, h.reqid, body, destnode=h.srcnode,
                                         srcnode=proto.conn.pnn, generation=h.generation))

    def _reply(self, proto, h, c, status, data, err):
        if proto.conn is None:  # (the client went meanwhile)
            return
        if not c.flags & P.CTRL_FLAG_NOREPLY:
            proto.transport.write(P.pack(
                P.REPLY_CONTROL, h.reqid, P.reply_control_body(status, data, err),
                destnode=h.srcnode, srcnode=proto.conn.pnn, generation=h.generation))
        if c.opcode == M.REGISTER_SRVID and c.srvid == M.SRVID_LEADER and err is None:
            self._send_leader(proto.conn)

    def answer(self, conn, c):
        """This node's answer to control ``c`` of the client ``conn`` (None: a control
        forwarded from another node): ``(status, data, error or None)``, or a coroutine
        that returns it."""
        handler = self.handlers.get(c.opcode)
        if handler is None:
            err = f"control {M.NAMES.get(c.opcode, c.opcode)} is not supported by pyctdbd"
            log.info("CTDB socket: %s", err)
            return -1, b"", err
        try:
            result = handler(conn, c)
        except (PyctdbError, ValueError) as exc:
            return -1, b"", str(getattr(exc, "message", exc))
        if asyncio.iscoroutine(result):
            return self._answered(result)
        return result[0], result[1], None

    @staticmethod
    async def _answered(coro):
        try:
            status, data = await coro
        except (PyctdbError, ValueError) as exc:
            return -1, b"", str(getattr(exc, "message", exc))
        return status, data, None

    async def _forward(self, dest, c):
        """A control for node ``dest``, answered there by its CTDB socket's handlers."""
        try:
            res = await self.cluster.control(dest, "ctdb_control", {
                "opcode": c.opcode, "data": base64.b64encode(c.data).decode(),
                "srvid": c.srvid, "flags": c.flags}, timeout=FORWARD_TIMEOUT)
        except PyctdbError as exc:
            return -1, b"", f"node {dest}: {exc.message}"
        return res["status"], base64.b64decode(res["data"]), res.get("error")

    async def _ctl_ctdb_control(self, src, args):
        """(Control ``ctdb_control``, from another node's CTDB socket.)"""
        c = P.Control(args["opcode"], args.get("srvid", 0), 0, args.get("flags", 0),
                      base64.b64decode(args["data"]))
        result = self.answer(None, c)
        if asyncio.iscoroutine(result):
            result = await result
        status, data, err = result
        out = {"status": status, "data": base64.b64encode(data).decode()}
        if err is not None:
            out["error"] = err
        return out

    def _message(self, proto, h, body):
        m = self._parsed(proto, P.parse_message, body)
        if m is None:
            return
        if m.srvid == M.SRVID_TAKEOVER_RUN:  # (ctdb ipreallocate, ctdb disable, ...)
            spawn(self._takeover_run(proto.conn, m.data), "ctdb takeover run",
                  owner=self._tasks)
            return
        if m.srvid == M.SRVID_DISABLE_TAKEOVER_RUNS:  # (ctdb reloadips)
            dest = proto.conn.pnn if h.destnode == P.CURRENT_NODE else h.destnode
            spawn(self._disable_takeover_runs(proto.conn, dest, m.data),
                  "ctdb disable takeover runs", owner=self._tasks)
            return
        dest = "all" if h.destnode in (P.BROADCAST_ALL, P.BROADCAST_ACTIVE) else \
            "connected" if h.destnode == P.BROADCAST_CONNECTED else \
            proto.conn.pnn if h.destnode == P.CURRENT_NODE else h.destnode
        try:
            self.ops.messages.send(dest, m.srvid, base64.b64encode(m.data).decode())
        except PyctdbError as exc:
            log.info("CTDB socket: message to srvid 0x%x not sent: %s", m.srvid, exc.message)

    async def _takeover_run(self, conn, data):
        """CTDB_SRVID_TAKEOVER_RUN: the leader's takeover run, answered to the srvid the
        request names with the leader's PNN (or -1: it failed), as CTDB's recovery
        daemon answers it."""
        try:
            _pnn, reply_to = M.parse_srvid_message(data)
        except ValueError as exc:
            log.warning("CTDB socket: takeover run request ignored: %s", exc)
            return
        deadline = asyncio.get_running_loop().time() + TAKEOVER_RUN_WAIT
        while True:  # (as CTDB's recovery daemon, a run asked during a recovery waits)
            try:
                await self.ops.ips.ipreallocate()
                result = self.cluster.leader if self.cluster.leader is not None else -1
                break
            except PyctdbError as exc:
                if asyncio.get_running_loop().time() < deadline and (
                        self.cluster.recmode != 0 or self.cluster.leader is None
                        or exc.code == "EAGAIN"):
                    await asyncio.sleep(0.1)
                    continue
                log.warning("CTDB socket: takeover run asked by a client failed: %s",
                            exc.message)
                result = -1
                break
        if reply_to:
            self._tell(conn, reply_to, self.cluster.pnn, M.i32(result))

    async def _disable_takeover_runs(self, conn, dest, data):
        """CTDB_SRVID_DISABLE_TAKEOVER_RUNS, sent by the tool to each node: in pyctdb only
        the leader runs takeover runs, so the leader is told (once per message; the same
        request again changes nothing), and the answer comes back on the srvid the
        request names as node ``dest``'s, as each of CTDB's recovery daemons answers."""
        try:
            _pnn, reply_to, timeout = M.parse_disable_message(data)
        except ValueError as exc:
            log.warning("CTDB socket: disable-takeover-runs request ignored: %s", exc)
            return
        leader = self.cluster.leader
        try:
            if leader is None:
                raise PyctdbError("no leader")
            await self.cluster.control(leader, "disable_takeover_runs",
                                       {"seconds": timeout}, timeout=FORWARD_TIMEOUT)
            result = dest
        except PyctdbError as exc:
            log.warning("CTDB socket: takeover runs not disabled: %s", exc.message)
            result = -1
        if reply_to:
            self._tell(conn, reply_to, dest if result >= 0 else self.cluster.pnn,
                       M.i32(result))

    def _send_leader(self, conn):
        leader = self.ops.info.leader()["leader"]
        if leader is not None:
            self._tell(conn, M.SRVID_LEADER, conn.pnn, M.u32(leader))

    @staticmethod
    def _tell(conn, srvid, src, payload):
        """A message for the client ``conn`` alone (an answer of this node's)."""
        if not conn.transport.is_closing():
            conn.transport.write(conn.encode_raw(srvid, src, payload))

    # -- controls --------------------------------------------------------------------------
    def _get_pnn(self, conn, c):
        return self.cluster.pnn, b""

    def _get_recmode(self, conn, c):
        return self.ops.info.status()["recovery_mode_value"], b""

    def _get_recmaster(self, conn, c):
        leader = self.ops.info.leader()["leader"]
        return (-1 if leader is None else leader), b""

    def _get_pid(self, conn, c):
        return os.getpid(), b""

    def _ping(self, conn, c):
        return len(self.conns), b""

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
        """As ctdbd: the process must be a client of this node's socket, and alive; on an
        inactive node (banned, stopped) none is."""
        pid = struct.unpack_from("<i", c.data)[0] if len(c.data) >= 4 else None
        if pid is None:
            raise ValueError("PROCESS_EXISTS without a pid")
        if self.cluster.my_flags & nodeflags.INACTIVE or not any(
                k.pid == pid for k in self.conns):
            return -1, b""
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return -1, b""
        except PermissionError:
            pass
        return 0, b""

    def _check_pid_srvid(self, conn, c):
        """Whether process ``pid``, a client of this node's socket, registered
        ``srvid`` (Samba's check that a process it knows of is still there)."""
        pid, srvid = M.parse_pid_srvid(c.data)
        return (0 if any(k.pid == pid and self.ops.messages.registered_by(k, srvid)
                         for k in self.conns) else -1), b""

    def _echo_data(self, conn, c):
        return 0, c.data

    @staticmethod
    def _client(conn, c):
        if conn is None:
            raise ValueError(f"control {M.NAMES.get(c.opcode, c.opcode)} is for the "
                             "client's own node")
        return conn

    def _register_notify(self, conn, c):
        """REGISTER_NOTIFY: when this client's connection closes, ``data`` is sent to
        ``srvid`` on this node (as ctdbd does)."""
        srvid, data = M.parse_notify_data(c.data)
        if conn is None:
            raise ValueError("a notification is registered by a local client only")
        if not conn.notes:
            conn.on_close.append(lambda: self._notify_closed(conn))
        conn.notes[srvid] = data
        return 0, b""

    @staticmethod
    def _deregister_notify(conn, c):
        if len(c.data) < 8:
            raise ValueError(f"srvid of {len(c.data)} bytes, not 8")
        srvid = struct.unpack_from("<Q", c.data)[0]
        if conn is None or conn.notes.pop(srvid, None) is None:
            raise ValueError(f"no notification registered for srvid 0x{srvid:x}")
        return 0, b""

    def _notify_closed(self, conn):
        notes, conn.notes = conn.notes, {}
        for srvid, data in notes.items():
            try:
                self.ops.messages.send(self.cluster.pnn, srvid,
                                       base64.b64encode(data).decode())
            except PyctdbError as exc:
                log.info("CTDB socket: notification to srvid 0x%x not sent: %s", srvid,
                         exc.message)

    def released(self, addr):
        """This node released public address ``addr``: its clients registered for
        CTDB_SRVID_RELEASE_IP (smbd) are told, with the address as a string, so that
        they end the sessions served on it (their clients reconnect to its new node)."""
        try:
            self.ops.messages.send(self.cluster.pnn, M.SRVID_RELEASE_IP,
                                   base64.b64encode(addr.encode() + b"\0").decode())
        except PyctdbError as exc:
            log.debug("release of %s not told to the clients: %s", addr, exc.message)

    def _register_srvid(self, conn, c):
        self.ops.messages.register(self._client(conn, c), c.srvid)
        return 0, b""

    def _deregister_srvid(self, conn, c):
        self.ops.messages.deregister(self._client(conn, c), c.srvid)
        return 0, b""

    async def _get_public_ips(self, conn, c):
        ips = (await self.ops.ips.ip())["ips"]
        if c.flags & PUBLIC_IP_ONLY_AVAILABLE:
            ips = [ip for ip in ips if ip["pnn"] != -1]
        return 0, M.public_ip_list([(ip["pnn"], ip["address"]) for ip in ips])

    def _refs(self, ips):
        """{interface: how many of this node's hosted addresses list it first}."""
        refs = {}
        for ip in ips:
            for i, iface in enumerate(ip.get("interfaces", [])):
                refs.setdefault(iface, 0)
                if i == 0 and ip["pnn"] == self.cluster.pnn:
                    refs[iface] += 1
        return refs

    def _list_tunables(self, conn, c):
        return 0, M.var_list([t["name"] for t in self.ops.tunables.listvars()["tunables"]])

    def _get_tunable(self, conn, c):
        name, _ = M.parse_stringn(c.data, "tunable name")
        value = self.ops.tunables.getvar(name)["value"]
        return 0, M.u32(int(value))

    def _set_tunable(self, conn, c):
        name, value = M.parse_tunable(c.data)
        self.ops.tunables.setvar(name, value)
        return 0, b""

    def _get_debug(self, conn, c):
        level = self.ops.info.getdebug()["level"]
        return 0, M.u32(M.DEBUG_LEVELS.get(level, M.DEBUG_LEVELS["NOTICE"]))

    def _set_debug(self, conn, c):
        self.ops.info.setdebug(M.debug_level_name(M.parse_u32(c.data)))
        return 0, b""

    def _admin(self, action):
        """DISABLE_NODE, ENABLE_NODE, STOP_NODE, CONTINUE_NODE: ``action`` on this node."""
        async def handler(conn, c):
            await self.ops.admin.act(action)
            return 0, b""
        return handler

    async def _set_ban_state(self, conn, c):
        pnn, seconds = M.parse_ban_state(c.data)
        if pnn != self.cluster.pnn:
            raise ValueError(f"ban state for node {pnn} sent to node {self.cluster.pnn}")
        if seconds:
            await self.ops.admin.ban(seconds)
        else:
            await self.ops.admin.act("unban")
        return 0, b""

    async def _reload_public_ips(self, conn, c):
        """This node's public_addresses file read again (a takeover run follows when it
        changed and runs are not disabled; the tool asks for one at its end)."""
        await self.ops.ips.reloadips()
        return 0, b""

    def _get_reclock(self, conn, c):
        lock = self.ops.info.status()["cluster_lock"]
        return 0, M.string(lock["lock"] if lock["configured"] else None)

    def _release_ip(self, conn, c):
        """CTDB's ``ctdb moveip`` first sends RELEASE_IP to every active node but the
        target, then TAKEOVER_IP to the target. In pyctdb the leader moves an address
        (release, then take, in its term: address fencing), so the release is a no-op
        here and the take below is the whole move."""
        M.parse_public_ip(c.data)
        return 0, b""

    async def _takeover_ip(self, conn, c):
        pnn, addr = M.parse_public_ip(c.data)
        if pnn != self.cluster.pnn:
            raise ValueError(f"TAKEOVER_IP of {addr} for node {pnn} sent to node "
                             f"{self.cluster.pnn}")
        await self.ops.ips.moveip(addr, pnn)
        return 0, b""

    async def _get_ifaces(self, conn, c):
        refs = self._refs((await self.ops.ips.ip())["ips"])
        link = self.ops.ips.iface_link
        return 0, M.iface_list([(name, link(name, link_up(name)), n)
                                for name, n in sorted(refs.items())])

    async def _get_public_ip_info(self, conn, c):
        addr, _port = M.parse_sock_addr(c.data)
        ips = (await self.ops.ips.ip())["ips"]
        ip = next((ip for ip in ips if ip["address"] == addr), None)
        if ip is None:
            raise ValueError(f"{addr} is not a public address of node {self.cluster.pnn}")
        refs = self._refs(ips)
        names = ip.get("interfaces", [])
        active = 0 if ip["pnn"] == self.cluster.pnn and names else 0xFFFFFFFF
        return 0, M.public_ip_info(ip["pnn"], addr, active,
                                   [(n, self.ops.ips.iface_link(n, link_up(n)),
                                     refs.get(n, 0)) for n in names])
