"""pyctdb: a Python reimplementation of Samba's CTDB cluster manager."""

__version__ = "0.4.0"

#: Version of the node-to-node wire protocol (see docs/protocol.md): 2 brings the
#: authenticated transport; connections without a transport key keep version 1 frames.
PROTOCOL_VERSION = 2
#: Version of the local JSON API (see docs/api.md).
API_VERSION = 1
