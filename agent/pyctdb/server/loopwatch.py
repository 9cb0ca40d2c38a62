"""A watch on the agent's event loop: says when it stalls, and where.

Everything the agent does for the cluster (keepalives, the guard's deadline, leases,
controls) runs on one event loop. A step that holds it for long delays all of them; held
longer than KeepaliveInterval x KeepaliveLimit, the node's guard fences it and its peers
drop it. :class:`LoopWatch` is a thread that sees such a stall while it lasts: the loop
beats every :data:`BEAT` seconds; when a beat is more than ``threshold`` seconds late, the
thread logs (WARNING, once per stall) the stack of the loop's thread at that moment, the
code that holds it, and when the loop beats again, how long the stall lasted.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback

log = logging.getLogger(__name__)

BEAT = 0.1  # seconds between the loop's beats
THRESHOLD = 0.5  # seconds late before a stall is reported
FRAMES = 6  # innermost frames of the stack in the report


class LoopWatch:
    def __init__(self, loop, threshold=THRESHOLD):
        self.loop = loop
        self.threshold = threshold
        self._beat = time.monotonic()
        self._loop_thread = None
        self._stop = threading.Event()
        self._thread = None
        self._handle = None
        self.stalls = 0  # stalls reported
        self.longest = 0.0  # seconds, the longest stall seen

    def start(self):
        """(On the loop.) Start beating and watching."""
        self._loop_thread = threading.get_ident()
        self._tick()
        self._thread = threading.Thread(target=self._watch, name="loopwatch", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
        if self._thread is not None:
            self._thread.join(1)

    def _tick(self):
        self._beat = time.monotonic()
        self._handle = self.loop.call_later(BEAT, self._tick)

    def _watch(self):
        stalled_since = None
        while not self._stop.wait(BEAT):
            beat = self._beat
            late = time.monotonic() - beat - BEAT
            if stalled_since is None and late > self.threshold:
                stalled_since = beat
                self.stalls += 1
                log.warning("event loop stalled for %.2f s, in: %s", late, self.where())
            elif stalled_since is not None and beat != stalled_since:
                took = beat - stalled_since - BEAT
                self.longest = max(self.longest, took)
                log.warning("event loop ran again after a stall of %.2f s", took)
                stalled_since = None

    def where(self) -> str:
        """The innermost frames of the loop thread's stack, innermost last."""
        frame = sys._current_frames().get(self._loop_thread)
        if frame is None:
            return "?"
        stack = traceback.extract_stack(frame)[-FRAMES:]
        return " <- ".join(f"{fs.name} ({_short(fs.filename)}:{fs.lineno})"
                           for fs in reversed(stack))


def _short(path):
    """``pyctdb/server/x.py`` for the agent's files, the base name for others."""
    i = path.rfind("pyctdb/")
    return path[i:] if i >= 0 else path.rsplit("/", 1)[-1]
