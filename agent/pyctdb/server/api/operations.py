"""The node operations: everything a client may ask of this node, whichever front end
(:mod:`pyctdb.server.api.frontend`) it speaks.

Each group of operations is an object of its own module, delegating to the agent's
components (cluster, failover, event runner, messaging, databases)::

    ops.info       ping, version, status, listnodes, pnn, leader, uptime, log
    ops.tunables   listvars, getvar, setvar
    ops.admin      act (disable, enable, stop, continue, unban), ban, recover, reloadnodes
    ops.ips        ip, moveip, addip, delip, reloadips, ipreallocate
    ops.events     event_status, event_run, event_script
    ops.messages   register, deregister, send, check, status (srvids)
    ops.databases  attach, getdbmap, readkey, writekey, fetch_lock, pstore, ptrans, ...
    ops.registry   conf_list, conf_update, conf_import, ... (the cluster registry)
    ops.tdb        attach, open_flags, trans3_commit, traverse, migrate_here, ... by
                   db_id (the TDB databases CTDB's socket serves to Samba)

Arguments and results are Python values (numbers, strings, lists, dicts; bytes for
database keys and values; a ClientConnection for what belongs to a client's
connection). A failure is a :class:`pyctdb.errors.PyctdbError` whose ``code`` (an errno
name) the front end answers in its own form. No wire form is known here.
"""

from __future__ import annotations

from pyctdb.server.api.admin_ops import AdminOperations
from pyctdb.server.api.controls import NodeControls
from pyctdb.server.api.db_ops import DatabaseOperations
from pyctdb.server.api.event_ops import EventOperations
from pyctdb.server.api.info_ops import InfoOperations, TunableOperations
from pyctdb.server.api.ip_ops import IpOperations
from pyctdb.server.api.message_ops import MessageOperations
from pyctdb.server.api.registry_ops import RegistryOperations
from pyctdb.server.api.tdb_ops import TdbOperations


class NodeOperations:
    """The one interface the client front ends call: this node's operations in groups
    (``info``, ``tunables``, ``admin``, ``ips``, ``events``, ``messages``,
    ``databases``, ``registry``, ``tdb``), made from the agent's components. A component left
    None (no failover, messaging or databases) answers that it is not running."""

    def __init__(self, cluster, tunables, *, log_buffer=None, failover=None, events=None,
                 databases=None, messaging=None):
        self.cluster = cluster
        controls = NodeControls(cluster)
        self.info = InfoOperations(cluster, log_buffer)
        self.tunables = TunableOperations(cluster, tunables)
        self.admin = AdminOperations(cluster, controls)
        self.ips = IpOperations(cluster, failover, controls)
        self.events = EventOperations(events)
        self.messages = MessageOperations(cluster, messaging)
        self.databases = DatabaseOperations(databases)
        self.tdb = TdbOperations(databases)
        self.registry = RegistryOperations(databases)
