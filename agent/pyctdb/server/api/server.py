"""The local JSON API on a Unix socket (see docs/api.md).

Newline-delimited JSON requests and responses. Only root, or the user the daemon runs
as, is served (checked with SO_PEERCRED); the socket itself is mode 0600.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import socket
import struct
import time

from pyctdb import API_VERSION, PROTOCOL_VERSION, __version__
from pyctdb.server import messaging
from pyctdb.server.transport import hold, release
from pyctdb.errors import ApiError
from pyctdb.protocol.api import MAX_LINE

log = logging.getLogger("pyctdb.api")



#: a handler's result for a request that gets no answer (``message_send`` with ``quiet``)
NO_ANSWER = object()


class ApiConnection:
    """One client connection. Commands listed in ``ApiServer.conn_commands`` get it as
    ``conn``: state that belongs to the connection (messaging's srvids) hangs on it, and
    ``on_close`` callables run when it closes (after the command it was running, if
    any, has finished). ``transport``: its asyncio transport."""

    __slots__ = ("transport", "on_close")

    def __init__(self, transport):
        self.transport = transport
        self.on_close = []

    def closed(self):
        for cb in self.on_close:
            try:
                cb()
            except Exception:
                log.exception("API connection close callback failed")
        self.on_close.clear()


class ApiServer:
    def __init__(self, path, cluster, tunables, log_buffer=None, failover=None, events=None,
                 db=None):
        self.path = path
        self.db = db  # the database layer (pyctdb.db.layer.Databases)
        self.events = events
        self.failover = failover
        self.cluster = cluster
        self.tunables = tunables
        self.log_buffer = log_buffer
        self._server = None
        self.commands = {
            "ping": self.cmd_ping, "version": self.cmd_version, "status": self.cmd_status,
            "listnodes": self.cmd_listnodes, "pnn": self.cmd_pnn, "leader": self.cmd_leader,
            "uptime": self.cmd_uptime, "listvars": self.cmd_listvars,
            "getvar": self.cmd_getvar, "setvar": self.cmd_setvar, "log": self.cmd_log,
            "disable": self._admin("disable"), "enable": self._admin("enable"),
            "stop": self._admin("stop"), "continue": self._admin("continue"),
            "ban": self.cmd_ban, "unban": self._admin("unban"),
            "ip": self.cmd_ip, "moveip": self.cmd_moveip,
            "addip": self.cmd_addip, "delip": self.cmd_delip,
            "reloadips": self.cmd_reloadips, "ipreallocate": self.cmd_ipreallocate,
            "recover": self.cmd_recover, "reloadnodes": self.cmd_reloadnodes,
            "event_status": self.cmd_event_status, "event_run": self.cmd_event_run,
            "event_script": self.cmd_event_script,
        }
        #: commands whose handler takes the connection (``conn=ApiConnection``)
        self.conn_commands = set()
        from pyctdb.server.api.db_commands import (commands as _db_commands)  # databases: see db/api.py
        self.commands.update(_db_commands(self))
        from pyctdb.server.api.conf_commands import (commands as _conf_commands)  # registry: pyctdb conf
        self.commands.update(_conf_commands(self))
        # `pyctdb -n PNN disable` etc.: the API of one node administers another
        cluster.control_handlers["admin"] = self._ctl_admin
        self._init_messaging()

    async def start(self):
        d = os.path.dirname(self.path)
        if d:
            os.makedirs(d, mode=0o755, exist_ok=True)
        if os.path.exists(self.path):
            # A live daemon answers on it; a stale socket file is removed.
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.path)
            except OSError:
                os.unlink(self.path)
            else:
                raise ApiError("EEXIST", f"another pyctdbd is serving {self.path}")
            finally:
                probe.close()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.get_running_loop().create_unix_server(
                lambda: _ApiProtocol(self), path=self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def stop(self):
        if self._server is not None:
            self._server.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    @staticmethod
    def _peer_allowed(transport) -> bool:
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

    def _error(self, req_id, code, message) -> bytes:
        return self._encode({"version": API_VERSION, "id": req_id, "ok": False,
                             "error": {"code": code, "message": message}})

    def _dispatch_now(self, line, conn=None):
        """The answer to one request line (bytes; b"" for none), or, for a command that
        must wait, a coroutine that returns it."""
        try:
            req = json.loads(line)
        except ValueError as exc:
            return self._error(None, "EPROTO", f"request is not valid JSON: {exc}")
        if not isinstance(req, dict):
            return self._error(None, "EPROTO", "request must be a JSON object")
        req_id = req.get("id")
        if req.get("version") != API_VERSION:
            return self._error(req_id, "EPROTO",
                               f"unsupported API version {req.get('version')!r} "
                               f"(this agent speaks {API_VERSION})")
        cmd = req.get("command")
        args = req.get("args") or {}
        if not isinstance(args, dict):
            return self._error(req_id, "EINVAL", "args must be an object")
        handler = self.commands.get(cmd)
        if handler is None:
            return self._error(req_id, "EINVAL", f"unknown command {cmd!r} (known: "
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
        if isinstance(exc, ApiError):
            return self._error(req_id, exc.code, exc.message)
        if isinstance(exc, TypeError):
            return self._error(req_id, "EINVAL", f"bad arguments for {cmd}: {exc}")
        log.error("API command %s failed", cmd, exc_info=exc)
        return self._error(req_id, "EIO", f"{cmd} failed: {exc}")

    def _answer(self, req_id, result) -> bytes:
        if result is NO_ANSWER:
            return b""
        return self._encode({"version": API_VERSION, "id": req_id, "ok": True,
                             "result": result})

    # -- commands ------------------------------------------------------------------------
    async def cmd_ping(self, pnn=None):
        """Without ``pnn``: this agent answers. With one: a round trip to that node."""
        import time as _t
        if pnn is None or pnn == self.cluster.pnn:
            return {"pnn": self.cluster.pnn, "pid": os.getpid(), "time": 0.0}
        if isinstance(pnn, bool) or not isinstance(pnn, int):
            raise ApiError("EINVAL", "pnn must be an integer")
        from pyctdb.errors import ControlError
        t0 = _t.monotonic()
        try:
            res = await self.cluster.control(pnn, "ping", timeout=5.0)
        except ControlError as exc:
            raise ApiError("ENOTCONN", str(exc)) from None
        return {"pnn": res["pnn"], "time": _t.monotonic() - t0}

    def cmd_version(self):
        return {"version": __version__, "protocol_version": PROTOCOL_VERSION,
                "api_version": API_VERSION}

    def cmd_status(self):
        return self.cluster.status()

    def cmd_listnodes(self):
        return {"nodes": [{"pnn": n.pnn, "address": n.address, "deleted": n.deleted}
                          for n in self.cluster.nodes]}

    def cmd_pnn(self):
        return {"pnn": self.cluster.pnn}

    def cmd_leader(self):
        return {"leader": self.cluster.leader}

    def cmd_uptime(self):
        return self.cluster.uptime()

    def cmd_listvars(self):
        return {"tunables": [{"name": n, "value": v} for n, v in self.tunables.items()]}

    def _lookup(self, name):
        from pyctdb.common import tunables as tunable_defs
        if not isinstance(name, str):
            raise ApiError("EINVAL", "name must be a string")
        try:
            return tunable_defs.lookup(name)
        except KeyError as exc:
            raise ApiError("ENOENT", str(exc).strip("'\"")) from None

    def cmd_getvar(self, name):
        t = self._lookup(name)
        return {"name": t.name, "value": self.tunables.get(t.name)}

    def cmd_setvar(self, name, value):
        from pyctdb.common import tunables as tunable_defs
        t = self._lookup(name)
        try:
            if isinstance(value, str):
                value = tunable_defs.parse_value(t, value)
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"value must be a number, not {type(value).__name__}")
            previous = self.tunables.set(t.name, value)
        except ValueError as exc:
            raise ApiError("EINVAL", str(exc)) from None
        log.warning("tunable %s set to %s (was %s)", t.name, self.tunables.get(t.name),
                    previous)
        self.cluster.kick()
        return {"name": t.name, "value": self.tunables.get(t.name), "previous": previous}

    # -- commands that may act on another node (``pnn``) --------------------------------
    def _target(self, pnn):
        """The PNN a command acts on: this node when ``pnn`` is None; ApiError for a PNN
        that is not a node of the cluster."""
        c = self.cluster
        if pnn is None:
            return c.pnn
        if isinstance(pnn, bool) or not isinstance(pnn, int):
            raise ApiError("EINVAL", f"pnn must be an integer, not {pnn!r}")
        node = next((n for n in c.nodes if n.pnn == pnn), None)
        if node is None:
            raise ApiError("ENOENT", f"node {pnn} does not exist (nodes: "
                           f"{', '.join(str(n.pnn) for n in c.nodes if not n.deleted)})")
        if node.deleted:
            raise ApiError("ENOENT", f"node {pnn} is deleted")
        return pnn

    async def _on_node(self, pnn, op, args, timeout=10.0):
        """Run control ``op`` on node ``pnn`` (this node: directly). A ValueError of the
        handler, here or there, is the caller's mistake (EINVAL)."""
        from pyctdb.errors import ControlError
        try:
            return await self.cluster.control(pnn, op, args, timeout=timeout)
        except ValueError as exc:
            raise ApiError("EINVAL", str(exc)) from None
        except ControlError as exc:
            if exc.message.startswith("ValueError: "):
                raise ApiError("EINVAL", exc.message[len("ValueError: "):]) from None
            if pnn != self.cluster.pnn and "not connected" in exc.message:
                raise ApiError("ENOTCONN", f"node {pnn} is not connected") from None
            raise ApiError("EIO", str(exc)) from None

    async def _ctl_admin(self, src, args):
        action = args.get("action")
        if action not in self.cluster.ADMIN:
            raise ValueError(f"unknown administrative action {action!r}")
        seconds = args.get("seconds")
        if action == "ban" and (isinstance(seconds, bool) or not isinstance(
                seconds, (int, float)) or seconds <= 0):
            raise ValueError("seconds must be a positive number")
        if src != self.cluster.pnn:
            log.warning("node %d asks this node to %s", src, action)
        return self.cluster.admin(action, ban_seconds=seconds)

    def _admin(self, action):
        async def handler(pnn=None):
            return await self._on_node(self._target(pnn), "admin", {"action": action})
        return handler

    async def cmd_ban(self, seconds, pnn=None):
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
            raise ApiError("EINVAL", "seconds must be a positive number")
        return await self._on_node(self._target(pnn), "admin",
                                   {"action": "ban", "seconds": seconds})

    async def _ipreallocate(self, reason):
        """Ask the leader for a takeover run and wait for it. Returns the run's summary,
        ``{"skipped": why}`` when there is nothing to ask, or ``{"error": ...}``."""
        from pyctdb.errors import ControlError
        c = self.cluster
        if self.failover is None or self.failover.disabled:
            return {"skipped": "failover is disabled"}
        if c.leader is None:
            return {"skipped": "no leader: the next leader's takeover run applies it"}
        try:
            return await c.control(c.leader, "ipreallocate", {"reason": reason},
                                   timeout=20.0)
        except ControlError as exc:
            return {"error": str(exc)}

    async def cmd_ipreallocate(self):
        res = await self._ipreallocate("ipreallocate")
        if "error" in res:
            raise ApiError("EIO", res["error"])
        return res

    async def cmd_reloadnodes(self, check=False):
        """CTDB's ``ctdb reloadnodes``: read this node's nodes list again and have every
        connected node apply it (each checks that its own file says the same). Nodes are
        added at the end and deleted by commenting them out; a node must be disconnected
        (its agent stopped) before it is deleted."""
        from pyctdb.server.cluster import nodes_digest
        from pyctdb.errors import ConfigError
        from pyctdb.common.config import nodes_changes, read_nodes
        c = self.cluster
        try:
            new = read_nodes(c.config)
        except ConfigError as exc:
            raise ApiError("EINVAL", str(exc)) from None
        changes, errors = nodes_changes(c.nodes, new)
        for pnn, what in changes:
            if what != "DELETED":
                continue
            if pnn == c.pnn:
                errors.append(f"this node ({pnn}) is deleted in the new list: run "
                              "reloadnodes on a node that stays")
            elif c.peers.get(pnn) is not None and c.peers[pnn].link_up:
                errors.append(f"node {pnn} is still connected: stop its agent before "
                              "deleting it")
        if errors:
            raise ApiError("EINVAL", "; ".join(errors))
        nodes = [{"pnn": p, "change": w} for p, w in changes]
        digest = nodes_digest(new)
        if digest == c.digest or check:
            return {"changed": digest != c.digest, "nodes": nodes, "reloaded": [],
                    "failed": {}}
        targets = [c.pnn] + sorted(p.pnn for p in c.peers.values() if p.link_up)
        res = await asyncio.gather(*(c.control(p, "reload_nodes", {"digest": digest},
                                               timeout=10.0) for p in targets),
                                   return_exceptions=True)
        failed = {str(p): (r.message if hasattr(r, "message") else str(r))
                  for p, r in zip(targets, res) if isinstance(r, Exception)}
        return {"changed": True, "nodes": nodes,
                "reloaded": [p for p, r in zip(targets, res) if not isinstance(r, Exception)],
                "failed": failed}

    async def cmd_recover(self):
        """CTDB's ``ctdb recover``: the leader runs a recovery now; returns once the
        cluster has a new generation."""
        from pyctdb.errors import ControlError
        c = self.cluster
        before = c.generation
        try:
            leader = await c.ask_recovery("pyctdb recover")
        except ControlError as exc:
            raise ApiError("EAGAIN", exc.message) from None
        deadline = time.monotonic() + 30.0
        while c.generation in (before, None) or c.recmode != 0:
            if time.monotonic() > deadline:
                raise ApiError("ETIMEDOUT", "no new generation within 30 s")
            await asyncio.sleep(0.05)
        return {"leader": leader, "generation": c.generation}

    async def cmd_addip(self, address, prefix, interfaces, pnn=None, check=False):
        target = self._target(pnn)
        res = await self._on_node(target, "add_public_ip", {
            "address": address, "prefix": prefix, "interfaces": interfaces,
            "check": bool(check)})
        if res["changed"] and not check:
            res["takeover"] = await self._ipreallocate(f"addip {res['address']} on node "
                                                       f"{target}")
        return res

    async def cmd_delip(self, address, pnn=None, check=False):
        target = self._target(pnn)
        res = await self._on_node(target, "del_public_ip",
                                  {"address": address, "check": bool(check)})
        if res["changed"] and not check:
            res["takeover"] = await self._ipreallocate(f"delip {res['address']} on node "
                                                       f"{target}")
        return res

    async def cmd_reloadips(self, pnns=None, check=False):
        """Re-read the public_addresses file on ``pnns`` (a list, ``"all"``, or None for
        this node), then one takeover run."""
        c = self.cluster
        if pnns is None:
            targets = [c.pnn]
        elif pnns == "all":
            targets = [n.pnn for n in c.nodes if not n.deleted]
        elif isinstance(pnns, list) and pnns:
            targets = [self._target(p) for p in pnns]
        else:
            raise ApiError("EINVAL", "pnns must be a non-empty list of PNNs or \"all\"")
        results = await asyncio.gather(*(self._on_node(p, "reload_public_ips",
                                                       {"check": bool(check)})
                                         for p in targets), return_exceptions=True)
        nodes, failed = [], []
        for p, r in zip(targets, results):
            if isinstance(r, ApiError):
                failed.append({"pnn": p, "code": r.code, "error": r.message})
            elif isinstance(r, Exception):
                raise r
            else:
                nodes.append(r)
        res = {"nodes": nodes, "failed": failed}
        if not check and any(n["added"] or n["removed"] or n["changed"] for n in nodes):
            res["takeover"] = await self._ipreallocate(
                "reloadips on node" + ("s " if len(targets) > 1 else " ")
                + ",".join(map(str, targets)))
        return res

    async def cmd_ip(self, all=False):
        """Public addresses and who hosts them, as this node learns from the cluster.

        ``all``: every address known to any connected node; otherwise this node's."""
        from pyctdb.errors import ControlError
        c = self.cluster
        targets = [c.pnn] + ([p.pnn for p in c.peers.values() if p.link_up] if all else [])
        infos = await asyncio.gather(*(c.control(p, "get_public_ips", timeout=3.0)
                                       for p in targets), return_exceptions=True)
        ips = {}
        for pnn, info in zip(targets, infos):
            if isinstance(info, ControlError) or isinstance(info, Exception):
                continue
            for a in info["configured"]:
                e = ips.setdefault(a["address"], {"address": a["address"], "pnn": -1,
                                                  "prefix": a["prefix"], "nodes": []})
                e["nodes"].append(pnn)
                if pnn == c.pnn:
                    e["interfaces"] = a["interfaces"]
                    e["prefix"] = a["prefix"]
            for addr in info["hosted"]:
                e = ips.setdefault(addr, {"address": addr, "pnn": -1, "nodes": []})
                e["pnn"] = pnn
        if not all:
            mine = {a["address"] for a in (infos[0]["configured"]
                                           if not isinstance(infos[0], Exception) else [])}
            # this node's view of who hosts its addresses comes from the cluster
            others = [p.pnn for p in c.peers.values() if p.link_up]
            more = await asyncio.gather(*(c.control(p, "get_public_ips", timeout=3.0)
                                          for p in others), return_exceptions=True)
            for pnn, info in zip(others, more):
                if isinstance(info, Exception):
                    continue
                for addr in info["hosted"]:
                    if addr in ips:
                        ips[addr]["pnn"] = pnn
            ips = {k: v for k, v in ips.items() if k in mine}
        import ipaddress as _ia
        order = sorted(ips, key=lambda a: (_ia.ip_address(a).version, int(_ia.ip_address(a))))
        return {"pnn": c.pnn, "all": bool(all), "ips": [ips[a] for a in order]}

    async def cmd_moveip(self, address, pnn):
        c = self.cluster
        self._target(pnn)
        if c.leader is None:
            raise ApiError("ENOTCONN", "no leader: cannot move addresses now")
        return await self._on_node(c.leader, "move_ip", {"address": address, "pnn": pnn},
                                   timeout=20.0)

    def cmd_event_status(self, event="monitor"):
        from pyctdb.server.events import EVENTS
        if event not in EVENTS:
            raise ApiError("EINVAL", f"unknown event {event!r}")
        res = self.events.last.get(event)
        if res is None:
            raise ApiError("ENOENT", f"event {event} has not run yet")
        return res

    async def cmd_event_run(self, event, args=(), timeout=None):
        from pyctdb.server.events import EventError
        try:
            return await self.events.run(event, *list(args), timeout=timeout)
        except EventError as exc:
            raise ApiError("EINVAL", str(exc)) from None

    def cmd_event_script(self, action, script=None):
        from pyctdb.server.events import EventError
        if action == "list":
            return {"scripts": [{"script": n, "enabled": en}
                                for n, _, en in self.events.scripts()]}
        if action not in ("enable", "disable") or not script:
            raise ApiError("EINVAL", "usage: event_script action=list|enable|disable script=NAME")
        try:
            return self.events.set_enabled(script, action == "enable")
        except EventError as exc:
            raise ApiError("ENOENT", str(exc)) from None

    def cmd_log(self, lines=20):
        if not isinstance(lines, int) or isinstance(lines, bool) or lines < 0:
            raise ApiError("EINVAL", "lines must be a non-negative integer")
        buf = list(self.log_buffer or [])
        return {"lines": buf[-lines:] if lines else []}


    # -- messaging (srvids; messaging.py) ----------------------------------------------
    def _init_messaging(self):
        self.messaging = None  # the daemon sets a messaging.Messaging
        self.commands.update({
            "message_register": self.cmd_message_register,
            "message_deregister": self.cmd_message_deregister,
            "message_send": self.cmd_message_send,
            "message_check": self.cmd_message_check,
            "message_status": self.cmd_message_status,
        })
        self.conn_commands |= {"message_register", "message_deregister"}

    def _msg(self):
        if self.messaging is None:
            raise ApiError("EIO", "messaging is not running in this agent")
        return self.messaging

    @staticmethod
    def _msg_call(fn, *args):
        try:
            return fn(*args)
        except messaging.MessagingError as exc:
            raise ApiError(exc.code, exc.message) from None

    def cmd_message_register(self, conn, srvid):
        m = self._msg()
        self._msg_call(messaging.check_srvid, srvid)
        if not m.is_client(conn):
            conn.on_close.append(lambda: m.drop_client(conn))
        return {"srvid": srvid, "changed": m.register(conn, conn.transport, srvid)}

    def cmd_message_deregister(self, conn, srvid):
        m = self._msg()
        self._msg_call(messaging.check_srvid, srvid)
        if not m.deregister(conn, srvid):
            raise ApiError("ENOENT", f"srvid {srvid} is not registered on this connection")
        return {"srvid": srvid, "changed": True}

    def cmd_message_send(self, pnn, srvid, data="", quiet=False):
        m = self._msg()
        if not isinstance(quiet, bool):
            raise ApiError("EINVAL", "quiet must be true or false")
        try:
            messaging.check_srvid(srvid)
            messaging.check_data(data)
            pnns = m.send(pnn, srvid, data)
        except messaging.MessagingError as exc:
            raise ApiError(exc.code, exc.message) from None
        if quiet:  # answered only when it fails
            return NO_ANSWER
        return {"pnns": pnns, "srvid": srvid}

    def cmd_message_check(self, srvids):
        m = self._msg()
        if not isinstance(srvids, list):
            raise ApiError("EINVAL", "srvids must be a list of srvids")
        for s_ in srvids:
            self._msg_call(messaging.check_srvid, s_)
        return {"pnn": self.cluster.pnn,
                "srvids": [{"srvid": s_, "registered": m.registered(s_)} for s_ in srvids]}

    def cmd_message_status(self):
        return self._msg().status()


class _ApiProtocol(asyncio.Protocol):
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
        if not self.server._peer_allowed(transport):
            transport.write(self.server._error(None, "EPERM",
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
        dispatch, conn, out = self.server._dispatch_now, self.conn, self.out
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
                self.task = asyncio.ensure_future(self._wait(answer))
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
        self.transport.write(self.server._error(None, "E2BIG",
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
            self.transport.write(self.server._error(None, "EPROTO",
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
