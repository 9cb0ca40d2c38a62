"""Node operations of messaging (CTDB's srvids): register and deregister a srvid on a
client's connection, send to a node or broadcast, check srvids, the status. Message
data is base64 text, the form the node-to-node wire carries (see server/messaging.py);
errors are MessagingError with their code."""

from __future__ import annotations

from pyctdb.errors import ApiError
from pyctdb.server.messaging import check_data, check_srvid


class MessageOperations:
    """Messaging (``messaging``, a Messaging, or None: not running) for clients."""

    def __init__(self, cluster, messaging=None):
        self.cluster = cluster
        self.messaging = messaging

    def _msg(self):
        if self.messaging is None:
            raise ApiError("EIO", "messaging is not running in this agent")
        return self.messaging

    def register(self, conn, srvid):
        """Register ``srvid`` on the client connection ``conn`` (a ClientConnection);
        its registrations go when it closes."""
        m = self._msg()
        check_srvid(srvid)
        if not m.is_client(conn):
            conn.on_close.append(lambda: m.drop_client(conn))
        return {"srvid": srvid, "changed": m.register(conn, srvid)}

    def deregister(self, conn, srvid):
        m = self._msg()
        check_srvid(srvid)
        if not m.deregister(conn, srvid):
            raise ApiError("ENOENT", f"srvid {srvid} is not registered on this connection")
        return {"srvid": srvid, "changed": True}

    def send(self, pnn, srvid, data=""):
        """Send ``data`` to ``srvid`` on node ``pnn`` (or ``"all"``, ``"connected"``)."""
        m = self._msg()
        check_srvid(srvid)
        check_data(data)
        return {"pnns": m.send(pnn, srvid, data), "srvid": srvid}

    def check(self, srvids):
        m = self._msg()
        if not isinstance(srvids, list):
            raise ApiError("EINVAL", "srvids must be a list of srvids")
        for srvid in srvids:
            check_srvid(srvid)
        return {"pnn": self.cluster.pnn,
                "srvids": [{"srvid": s, "registered": m.registered(s)} for s in srvids]}

    def registered_by(self, conn, srvid) -> bool:
        """Whether the client connection ``conn`` registered ``srvid``."""
        return self._msg().registered(check_srvid(srvid), conn)

    def status(self):
        return self._msg().status()
