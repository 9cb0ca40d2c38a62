"""Client front ends: what they are, and a client's connection as the node operations see it.

A front end is a listener for one client protocol: it accepts connections, checks who
may use them, reads its protocol's requests, turns each into a call of the node
operations (:class:`pyctdb.server.api.operations.NodeOperations`) and writes the result,
or the error by its code (``PyctdbError.code``), back in its protocol's form. It holds no
logic of the node's own: two front ends (the JSON API of docs/api.md; CTDB's binary client
protocol, ``ctdb_req_header`` framing on ctdbd.socket, next) call the same operations and
so behave alike.
"""

from __future__ import annotations

import abc
import logging

log = logging.getLogger(__name__)


class Frontend(abc.ABC):
    """A listener that turns its protocol's requests into calls of the node operations
    (``ops``, a NodeOperations) and their results or errors into its protocol's
    answers. ``start`` begins serving (raises ApiError EEXIST when another agent serves
    its address), ``stop`` ends it and removes what ``start`` made."""

    def __init__(self, ops):
        self.ops = ops

    @abc.abstractmethod
    async def start(self):
        """Listen and serve clients."""

    @abc.abstractmethod
    async def stop(self):
        """Stop listening; remove the listening address."""


class ClientConnection:
    """One client's connection as the node operations see it, whatever its front end.
    State of the connection (messaging's srvids, fetch-locks) hangs on it; ``on_close``
    callables run when it closes (after the request it was running, if any, has
    finished). ``transport``: its asyncio transport, which messages for the client are
    written to; a front end sets ``encode_message`` to its form of a message."""

    __slots__ = ("transport", "on_close")

    def __init__(self, transport):
        self.transport = transport
        self.on_close = []

    @staticmethod
    def encode_message(srvid, src, data, dropped=0) -> bytes:
        """A message for the client (``data``: base64 text) in its protocol's form;
        ``dropped``: how many messages were dropped for it before this one (0: none).
        A static function, the same object for every connection of one front end, has a
        message encoded once for all its clients; a bound method (CTDB's socket, whose
        packets name the node) once per client."""
        raise NotImplementedError

    def closed(self):
        for cb in self.on_close:
            try:
                cb()
            except Exception:
                log.exception("API connection close callback failed")
        self.on_close.clear()
