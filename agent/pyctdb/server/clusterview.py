"""What this node holds true of the cluster right now, shared by the cluster's
components (:mod:`pyctdb.server.cluster`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from pyctdb.rules import nodeflags

RECMODE_NORMAL = 0
RECMODE_ACTIVE = 1
INVALID_GENERATION = 1  # as CTDB: never handed out


@dataclass
class ClusterView:
    """This node's view of the cluster: its own flags, who leads, and the generation
    (number, vnn map, members, recovery mode) it is in. Leadership writes ``am_leader``
    and ``leader``; the recovery driver writes the generation; node administration
    writes ``my_flags``. Everyone else reads."""

    pnn: int
    my_flags: int = 0
    am_leader: bool = False
    leader: Optional[int] = None
    generation: Optional[int] = None
    vnnmap: list = field(default_factory=list)
    members: list = field(default_factory=list)
    recmode: int = RECMODE_ACTIVE

    def is_joined(self) -> bool:
        """A leader is known, its generation adopted and recovery mode is NORMAL (and
        this node is a member of it, unless it is inactive)."""
        return (self.leader is not None and self.generation is not None
                and self.recmode == RECMODE_NORMAL
                and (self.am_leader or self.pnn in self.members
                     or not nodeflags.is_active(self.my_flags)))
