"""pyctdb: a Python reimplementation of Samba's CTDB cluster manager."""

__version__ = "0.4.0"

#: Version of the node-to-node wire protocol (see docs/protocol.md).
PROTOCOL_VERSION = 1
#: Version of the local JSON API (see docs/api.md).
API_VERSION = 1
