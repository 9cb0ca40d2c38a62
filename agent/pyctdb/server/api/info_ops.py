"""Node operations that report on the node and the cluster, and those on its tunables."""

from __future__ import annotations

import logging
import os
import time

from pyctdb import API_VERSION, PROTOCOL_VERSION, __version__
from pyctdb.common import tunables as tunable_defs
from pyctdb.common.logsetup import LEVELS, NOTICE
from pyctdb.errors import ApiError, ControlError

log = logging.getLogger(__name__)


class InfoOperations:
    """What this node knows of itself and the cluster: ping, version, status, nodes,
    PNN, leader, uptime, its recent log lines."""

    def __init__(self, cluster, log_buffer=None):
        self.cluster = cluster
        self.log_buffer = log_buffer

    async def ping(self, pnn=None):
        """Without ``pnn``: this agent answers. With one: a round trip to that node."""
        if pnn is None or pnn == self.cluster.pnn:
            return {"pnn": self.cluster.pnn, "pid": os.getpid(), "time": 0.0}
        if isinstance(pnn, bool) or not isinstance(pnn, int):
            raise ApiError("EINVAL", "pnn must be an integer")
        t0 = time.monotonic()
        try:
            res = await self.cluster.control(pnn, "ping", timeout=5.0)
        except ControlError as exc:
            raise ApiError("ENOTCONN", str(exc)) from None
        return {"pnn": res["pnn"], "time": time.monotonic() - t0}

    def version(self):
        return {"version": __version__, "protocol_version": PROTOCOL_VERSION,
                "api_version": API_VERSION}

    def status(self):
        return self.cluster.status()

    def listnodes(self):
        return {"nodes": [{"pnn": n.pnn, "address": n.address, "deleted": n.deleted}
                          for n in self.cluster.nodes]}

    def pnn(self):
        return {"pnn": self.cluster.pnn}

    def leader(self):
        return {"leader": self.cluster.leader}

    def uptime(self):
        return self.cluster.uptime()

    @staticmethod
    def getdebug():
        """This agent's log level now (``[logging] log level`` until ``setdebug``)."""
        return {"level": logging.getLevelName(logging.getLogger().level)}

    @staticmethod
    def setdebug(level):
        """Change this agent's log level at run time (ERROR, WARNING, NOTICE, INFO,
        DEBUG), as ``ctdb setdebug``; until the agent restarts."""
        if not isinstance(level, str) or level.upper() not in LEVELS:
            raise ApiError("EINVAL", f"log level must be one of {', '.join(LEVELS)}, not "
                                     f"{level!r}")
        root = logging.getLogger()
        was = logging.getLevelName(root.level)
        root.setLevel(LEVELS[level.upper()])
        log.log(NOTICE, "log level set to %s (was %s)", level.upper(), was)
        return {"level": level.upper(), "previous": was}

    def log(self, lines=20):
        if not isinstance(lines, int) or isinstance(lines, bool) or lines < 0:
            raise ApiError("EINVAL", "lines must be a non-negative integer")
        buf = list(self.log_buffer or [])
        return {"lines": buf[-lines:] if lines else []}


class TunableOperations:
    """This node's tunables: list, get, set (a change wakes the cluster's cycle)."""

    def __init__(self, cluster, tunables):
        self.cluster = cluster
        self.tunables = tunables

    def listvars(self):
        return {"tunables": [{"name": n, "value": v} for n, v in self.tunables.items()]}

    @staticmethod
    def _lookup(name):
        if not isinstance(name, str):
            raise ApiError("EINVAL", "name must be a string")
        try:
            return tunable_defs.lookup(name)
        except KeyError as exc:
            raise ApiError("ENOENT", str(exc).strip("'\"")) from None

    def getvar(self, name):
        t = self._lookup(name)
        return {"name": t.name, "value": self.tunables.get(t.name)}

    def setvar(self, name, value):
        t = self._lookup(name)
        try:
            if isinstance(value, str):
                value = tunable_defs.parse_value(t, value)
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"value must be a number, not {type(value).__name__}")
            previous = self.tunables.set(t.name, value)
        except ValueError as exc:
            raise ApiError("EINVAL", str(exc)) from None
        log.warning("tunable %s set to %s (was %s)", t.name, self.tunables.get(t.name),
                    previous)
        self.cluster.kick()
        return {"name": t.name, "value": self.tunables.get(t.name), "previous": previous}
