"""pyctdb.client: the client library of pyctdb (databases: db.py; messaging: messaging.py).

See docs/client.md."""

from .messaging import (AsyncMessenger, BROADCAST_ALL, BROADCAST_CONNECTED,  # noqa: F401
                        Message, Messenger)
from .db import (Database, DatabaseError, LocalRecord, LockedRecord,  # noqa: F401
                 Transaction, attach)
