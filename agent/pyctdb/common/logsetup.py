"""Logging as configured by ``[logging] location`` and ``log level``.

Levels are CTDB's: ERROR, WARNING, NOTICE, INFO, DEBUG. NOTICE (the default) sits
between WARNING and INFO; pyctdb logs every state change of the cluster at NOTICE or
above, and per-cycle detail at DEBUG.
"""

from __future__ import annotations

import collections
import logging
import logging.handlers
import os
import sys

NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")
LEVELS = {"ERROR": logging.ERROR, "WARNING": logging.WARNING, "NOTICE": NOTICE,
          "INFO": logging.INFO, "DEBUG": logging.DEBUG}

FORMAT = "%(asctime)s.%(msecs)03d %(prog)s[%(process)d]: %(name)s: %(levelname)s: %(message)s"
DATEFMT = "%Y-%m-%dT%H:%M:%S"


class RingBuffer(logging.Handler):
    """Keeps the most recent records in memory for the API's ``log`` command."""

    def __init__(self, size=1000):
        super().__init__()
        self.lines = collections.deque(maxlen=size)

    def emit(self, record):
        try:
            self.lines.append(self.format(record))
        except Exception:
            pass

    def __iter__(self):
        return iter(list(self.lines))


class _ProgFilter(logging.Filter):
    def __init__(self, prog):
        super().__init__()
        self.prog = prog

    def filter(self, record):
        # Libraries log their internals at DEBUG (pyroute2 a lot); only their warnings
        # matter here.
        if record.levelno < logging.WARNING and not record.name.startswith("pyctdb"):
            return False
        record.prog = self.prog
        return True


def setup(location: str, level: str, prog="pyctdbd") -> RingBuffer:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = logging.Formatter(FORMAT, DATEFMT)
    if location.startswith("file:"):
        path = location[5:]
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        handler = logging.handlers.WatchedFileHandler(path)
    elif location.startswith("syslog"):
        handler = logging.handlers.SysLogHandler(address="/dev/log")
        fmt = logging.Formatter("%(prog)s[%(process)d]: %(name)s: %(message)s")
    else:  # stderr
        handler = logging.StreamHandler(sys.stderr)
    ring = RingBuffer()
    for h in (handler, ring):
        h.setFormatter(fmt)
        h.addFilter(_ProgFilter(prog))
        root.addHandler(h)
    root.setLevel(LEVELS.get(level.upper(), NOTICE))
    # Libraries log their internals at DEBUG; only their warnings matter here.
    for name in ("pyroute2", "asyncio"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return ring
