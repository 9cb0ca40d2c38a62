"""pyctdb.client: the client library of pyctdb (databases: db.py; messaging: messaging.py;
the local API connection: connection.py). It imports nothing of the daemon
(``pyctdb.server``): only ``pyctdb.protocol``, ``pyctdb.rules`` and ``pyctdb.errors``.

See docs/client.md."""

from pyctdb.client.messaging import (AsyncMessenger, BROADCAST_ALL,  # noqa: F401
                                     BROADCAST_CONNECTED, Message, Messenger)
from pyctdb.client.db import (Database, DatabaseError, LocalRecord, LockedRecord,  # noqa: F401
                              Transaction, attach)
