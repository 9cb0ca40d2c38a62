"""Leader election as pure decisions (no I/O, no clocks): tested without a network.

Every cycle each node feeds what it knows into :func:`decide` and acts on the result.
The rules:

1. A node that is BANNED, STOPPED or has no leader capability never leads; a leader
   that becomes so steps down.
2. If any eligible node claims leadership (its last state says it is leader), the lowest
   claiming PNN is the leader. Everyone else follows it; a leader that sees a lower
   claimant steps down. With a cluster lock only the lock holder can claim, so there is
   never more than one; without one (unsafe against split brain, as in CTDB), this rule
   resolves the double leadership that a partition heals into.
3. Nobody claims: after the start-up grace, the lowest eligible PNN campaigns (tries to
   take the cluster lock, then claims). The others wait for it, but only for a while
   (``candidate_wait_expired``): then every eligible node campaigns, and the lock decides.
4. With a cluster lock: a leader that loses touch with the majority of the nodes steps
   down and lets go of the lock, so the majority side can take it (an isolated leader
   would otherwise keep the lock and no one else could lead). A node that sees no
   majority waits the leader timeout before it campaigns, giving the majority a head
   start; if the others really are gone, it then takes over anyway and keeps leading
   (``led_with_quorum`` is false then), so a lone survivor of a 2-node cluster still
   leads.

A node that already leads keeps leading while rule 2 allows: a returning node with a
lower PNN follows the leader it finds instead of taking over (no needless failover).

**Leadership terms** (address fencing). Every leadership has a term: a number above
every term the new leader has seen (:func:`next_term`; at least the wall clock in ms, so
that a node restarted without memory of earlier terms still starts above them as long as
the clocks agree). Each node publishes the newest term it has seen in its STATE
(:func:`state_term` reads it back). A takeover run belongs to the term it started in and
is abandoned when that term ends; a node refuses a ``take_ip`` or ``release_ip`` of a
term older than the newest it has seen (:func:`order_refused`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyctdb.errors import PyctdbError
from pyctdb.rules import nodeflags

#: Flags that make a node ineligible to lead.
NOT_ELIGIBLE = nodeflags.INACTIVE | nodeflags.UNKNOWN


@dataclass(frozen=True)
class PeerView:
    """One peer as the election sees it: connected, its flags, whether it claims to
    lead and may lead."""

    pnn: int
    connected: bool
    flags: int = 0
    claims_leader: bool = False
    leader_capable: bool = True


@dataclass(frozen=True)
class ElectionInput:
    """All that one node's election decides on (see :func:`decide`)."""

    me: int
    my_flags: int = 0
    my_leader_capable: bool = True
    am_leader: bool = False
    peers: tuple = ()
    #: the start-up grace is over (or every peer has been heard from)
    settled: bool = True
    #: we have waited longer than the leader timeout for the expected candidate
    candidate_wait_expired: bool = False
    #: a cluster lock is configured (the quorum rules below apply only then)
    lock_configured: bool = False
    #: this node sees more than half of the (non-deleted) nodes, itself included
    quorum: bool = True
    #: this node, leading, had a majority at some point of its leadership
    led_with_quorum: bool = True
    #: this node has been without a majority for longer than the leader timeout
    minority_wait_expired: bool = False


@dataclass(frozen=True)
class Decision:
    """What :func:`decide` tells the node to do, the leader it recognises and why."""

    #: "lead" (keep leading), "campaign" (try to become leader), "follow",
    #: "step_down" (stop leading, then follow ``leader`` if any), "wait"
    action: str
    leader: object = None  # PNN or None
    reason: str = ""
    candidates: tuple = field(default=())


def peer_eligible(p: PeerView) -> bool:
    return p.connected and p.leader_capable and not (p.flags & NOT_ELIGIBLE)


def self_eligible(inp: ElectionInput) -> bool:
    return inp.my_leader_capable and not (inp.my_flags & (nodeflags.BANNED | nodeflags.STOPPED | nodeflags.DELETED))


def decide(inp: ElectionInput) -> Decision:
    me_ok = self_eligible(inp)
    eligible = sorted(p.pnn for p in inp.peers if peer_eligible(p))
    claimants = sorted(p.pnn for p in inp.peers if peer_eligible(p) and p.claims_leader)
    if inp.am_leader and me_ok:
        claimants = sorted(claimants + [inp.me])

    if (inp.am_leader and me_ok and inp.lock_configured and inp.led_with_quorum
            and not inp.quorum):
        return Decision("step_down", None,
                        "lost touch with the majority of nodes: letting go of the cluster "
                        "lock so that the majority can elect a leader", tuple(claimants))

    if inp.am_leader and not me_ok:
        winner = claimants[0] if claimants else None
        why = "this node is " + (nodeflags.pretty(inp.my_flags) if inp.my_flags else
                                 "not leader capable")
        return Decision("step_down", winner, f"{why}; it may not lead", tuple(claimants))

    if claimants:
        winner = claimants[0]
        if inp.am_leader:
            if winner == inp.me:
                others = [c for c in claimants if c != inp.me]
                why = ("no other claimant" if not others else
                       f"lowest PNN among claimants {claimants}")
                return Decision("lead", inp.me, why, tuple(claimants))
            return Decision("step_down", winner,
                            f"node {winner} also leads and has the lower PNN "
                            f"(claimants {claimants})", tuple(claimants))
        if len(claimants) == 1:
            why = f"node {winner} is the leader"
        else:
            why = f"node {winner} has the lowest PNN among claimants {claimants}"
        return Decision("follow", winner, why, tuple(claimants))

    # Nobody leads.
    if not inp.settled:
        return Decision("wait", None, "start-up grace: waiting to hear from peers")
    candidates = sorted(eligible + ([inp.me] if me_ok else []))
    if not candidates:
        return Decision("wait", None, "no node is eligible to lead", ())
    if (inp.lock_configured and not inp.quorum and not inp.minority_wait_expired
            and me_ok):
        return Decision("wait", None,
                        "no leader, and this node sees no majority: giving the majority a "
                        "head start before campaigning", tuple(candidates))
    if candidates[0] == inp.me:
        return Decision("campaign", inp.me,
                        f"no leader; this node has the lowest eligible PNN of {candidates}",
                        tuple(candidates))
    if me_ok and inp.candidate_wait_expired:
        return Decision("campaign", inp.me,
                        f"no leader; node {candidates[0]} did not take over within the "
                        f"leader timeout, so this node tries", tuple(candidates))
    return Decision("wait", None,
                    f"no leader; expecting node {candidates[0]} (lowest eligible PNN of "
                    f"{candidates}) to take over", tuple(candidates))


def vnnmap_for(members, lmaster_capable) -> list:
    """The vnn map: active members that can be location masters, by PNN."""
    return sorted(p for p in members if lmaster_capable.get(p, True))


def recovery_abort(members, me, connected, leading=True):
    """Why the leader's recovery for ``members`` must stop and start again, or None: a
    member other than this node (``me``) is no longer connected (``connected``: the
    PNNs with a link up). Waiting for its controls to time out would hold up the whole
    cluster, and the recovery's result would not include it anyway. Or this node no
    longer leads (``leading`` false: it lost the cluster lock): another leader's
    recovery must not meet this one's pushes."""
    if not leading:
        return "this node is no longer the leader"
    lost = sorted(m for m in members if m != me and m not in connected)
    if not lost:
        return None
    return (f"lost member{'s' if len(lost) > 1 else ''} {lost} during the recovery of "
            f"{sorted(members)}")


# -- leadership terms ----------------------------------------------------------------------
class StaleTerm(PyctdbError):
    """An order of a leadership term that has ended (code ESTALE): a takeover run of a
    leader that stepped down, or a ``take_ip`` older than the newest term a node has
    seen."""

    code = "ESTALE"


def next_term(newest_seen, now_ms) -> int:
    """The term of a new leadership: above ``newest_seen`` (the newest term this node
    has seen, its own included) and at least ``now_ms`` (wall-clock milliseconds), so
    that a node that lost its memory (restart) still starts above earlier terms."""
    return max(int(newest_seen) + 1, int(now_ms))


def state_term(state):
    """The term a peer's STATE names (``term``: the newest it has seen), or None when
    absent (an older agent) or malformed (not a non-negative integer)."""
    if not state:
        return None
    t = state.get("term")
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        return None
    return t


def order_refused(op, term, newest_seen):
    """Why an order ``op`` (``take_ip``, ``release_ip``) of leader term ``term`` (None:
    an order without a term, from an older agent or this node itself) must be refused,
    or None. Refused: a newer term than ``term`` has been seen."""
    if term is None or term >= newest_seen:
        return None
    return f"{op} of term {term} refused: a newer leader term {newest_seen} is known"
