"""The CTDB socket's controls about the TCP connections of public addresses and their
announcements (docs/protocol.md, "CTDB's client protocol"), answered from
``ops.ips`` (:class:`~pyctdb.server.api.ip_ops.IpOperations`):

- TCP_CLIENT: smbd registers a client's connection to a public address; it is kept
  (and tickled after a takeover) until smbd's connection to the socket ends, as in
  CTDB;
- TCP_ADD, TCP_ADD_DELAYED_UPDATE (``ctdb addtickle``), TCP_REMOVE (``ctdb
  deltickle``): register and remove a connection;
- GET_TCP_TICKLE_LIST (``ctdb gettickles IP [PORT]``): the connections known for an
  address (scanned by pyctdb, reported by other nodes, registered);
- SEND_GRATUITOUS_ARP (``ctdb gratarp IP IFACE``, which 10.interface's updateip
  calls): the address announced from the interface;
- SET_IFACE_LINK_STATE (``ctdb setifacelink IFACE up|down``, which 10.interface's
  monitor calls): recorded, and shown by GET_IFACES. pyctdb decides where addresses go
  from the kernel's link state, read at each check (what 10.interface reports too).

A connection is ``ctdb_connection``: the client's address first (``src``), then the
public address (``dst``), as CTDB keeps its tickles.
"""

from __future__ import annotations

import logging

from pyctdb.errors import PyctdbError
from pyctdb.protocol.ctdb import marshal as M

log = logging.getLogger(__name__)


class CtdbTcpControls:
    """The handlers (``handlers()``) of the controls above, for :class:`CtdbSocketServer`."""

    def __init__(self, ops):
        self.ips = ops.ips

    def handlers(self):
        return {M.TCP_CLIENT: self._tcp_client, M.TCP_ADD: self._tcp_add,
                M.TCP_ADD_DELAYED_UPDATE: self._tcp_add, M.TCP_REMOVE: self._tcp_remove,
                M.GET_TCP_TICKLE_LIST: self._get_tickle_list,
                M.SEND_GRATUITOUS_ARP: self._gratarp,
                M.SET_IFACE_LINK_STATE: self._set_iface_link}

    def _tcp_client(self, conn, c):
        """smbd's connection from a client to a public address of this node: kept until
        smbd's connection to this socket ends (ctdbd drops it then too)."""
        client, server = M.parse_connection(c.data)
        try:
            self.ips.add_tickle(client, server)
        except PyctdbError as exc:  # (not a public address: nothing to tickle; accepted)
            log.debug("TCP_CLIENT %s:%d -> %s:%d: %s", *client, *server, exc.message)
            return 0, b""
        if conn is not None:
            conn.on_close.append(lambda: self.ips.del_tickle(client, server))
        return 0, b""

    def _tcp_add(self, conn, c):
        client, server = M.parse_connection(c.data)
        self.ips.add_tickle(client, server)
        return 0, b""

    def _tcp_remove(self, conn, c):
        client, server = M.parse_connection(c.data)
        self.ips.del_tickle(client, server)
        return 0, b""

    def _get_tickle_list(self, conn, c):
        address, port = M.parse_sock_addr(c.data)
        return 0, M.tickle_list(address, self.ips.tickles(address, port))

    async def _gratarp(self, conn, c):
        address, _mask, iface = M.parse_addr_info(c.data)
        await self.ips.gratarp(address, iface)
        return 0, b""

    def _set_iface_link(self, conn, c):
        name, up = M.parse_iface(c.data)
        self.ips.set_iface_link(name, up)
        return 0, b""

