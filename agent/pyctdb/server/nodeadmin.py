"""This node's administrative flags: disable/enable, stop/continue, ban/unban."""

from __future__ import annotations

import logging

from pyctdb.common.logsetup import NOTICE
from pyctdb.rules import nodeflags

log = logging.getLogger(__name__)


class NodeAdmin:
    """Sets and clears this node's administrative flags (in the
    :class:`~pyctdb.server.clusterview.ClusterView`), and lifts a ban when its time is
    up."""

    ADMIN = {
        "disable": (nodeflags.PERMANENTLY_DISABLED, 0),
        "enable": (0, nodeflags.PERMANENTLY_DISABLED),
        "stop": (nodeflags.STOPPED, 0), "continue": (0, nodeflags.STOPPED),
        "ban": (nodeflags.BANNED, 0), "unban": (0, nodeflags.BANNED),
    }

    def __init__(self, view, clock, kick):
        self.view = view
        self.clock = clock
        self._kick = kick
        self._ban_until = None

    def admin(self, action, ban_seconds=None) -> dict:
        """Set or clear one of this node's administrative flags; returns old and new flags.

        A ban lifts itself after ``ban_seconds``. BANNED and STOPPED nodes are inactive:
        the leader drops them from the generation, and a leader that becomes one steps
        down."""
        v = self.view
        set_mask, clear_mask = self.ADMIN[action]
        old = v.my_flags
        v.my_flags = (v.my_flags | set_mask) & ~clear_mask
        if action == "ban":
            self._ban_until = self.clock() + float(ban_seconds)
        elif action == "unban":
            self._ban_until = None
        if v.my_flags != old:
            log.log(NOTICE, "node %d: %s%s: flags %s -> %s", v.pnn, action,
                    f" for {ban_seconds}s" if action == "ban" else "", nodeflags.pretty(old),
                    nodeflags.pretty(v.my_flags))
        self._kick()
        return {"pnn": v.pnn, "old_flags": old, "flags": v.my_flags,
                "state": nodeflags.pretty(v.my_flags), "changed": old != v.my_flags}

    def expire_ban(self, now) -> bool:
        """Lift the ban once its time is up; True when it was lifted now."""
        until = self._ban_until
        if until is not None and now >= until:
            self._ban_until = None
            if self.view.my_flags & nodeflags.BANNED:
                self.view.my_flags &= ~nodeflags.BANNED
                log.log(NOTICE, "node %d: ban period over, no longer BANNED", self.view.pnn)
                return True
        return False
