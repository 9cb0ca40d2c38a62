"""pyctdb.client: the client library of pyctdb (databases: db.py; messaging: messaging.py;
the local API connection: connection.py). It imports nothing of the daemon
(the daemon's package): only ``pyctdb.protocol``, ``pyctdb.rules`` and ``pyctdb.errors``.
Its errors derive from :class:`pyctdb.errors.PyctdbError` (``code``, ``message``).

See docs/client.md."""

#: the names ``from pyctdb.client import ...`` gives, and the module that holds each
_MESSAGING = {"AsyncMessenger", "BROADCAST_ALL", "BROADCAST_CONNECTED", "Message",
              "Messenger"}
_DB = {"Database", "DatabaseError", "LocalRecord", "LockedRecord", "Transaction", "attach"}

__all__ = sorted(_MESSAGING | _DB)


def __getattr__(name):
    """The names of ``__all__``, imported at their first use (PEP 562)."""
    # not imported with the package: pyctdb.client.messaging (asyncio) and
    # pyctdb.client.db (lmdb) would be imported by every command of the CLI, which
    # imports pyctdb.client.connection, so this package: 105 ms of imports at start
    # with them, 63 ms without (python -X importtime -m pyctdb.tools.cli --help, best
    # of 12)
    if name in _MESSAGING:
        from pyctdb.client import messaging as module
    elif name in _DB:
        from pyctdb.client import db as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = getattr(module, name)
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
