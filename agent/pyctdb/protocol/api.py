"""The local JSON API's wire form (docs/api.md), shared by the agent's API server and
the client library: newline-delimited JSON objects of at most ``MAX_LINE`` bytes on the
Unix socket ``DEFAULT_SOCKET`` (or ``$PYCTDB_SOCKET``), each request
``{"version", "id", "command", "args"}``, each answer ``{"version", "id", "ok",
"result" | "error": {"code", "message"}}``."""

from __future__ import annotations

from pyctdb import API_VERSION  # noqa: F401  (the version of this wire form)

MAX_LINE = 1024 * 1024
DEFAULT_SOCKET = "/run/pyctdb/pyctdbd.socket"
