"""How long this node may serve its public addresses: its *lease* (address fencing).

Pure: no I/O, no clocks; times are the node's own monotonic seconds.

Every keepalive (STATE) a node sends carries its send time ``ts``; a peer that receives
it answers at once with an ACK of that ``ts``. A node's lease runs until ``t_e +
window``, where ``window`` is KeepaliveInterval x KeepaliveLimit and ``t_e`` is the send
time of its newest keepalive that enough peers acknowledged to make a majority with it.
A peer that acknowledged a keepalive sent at ``t_e`` heard from this node at ``t_e`` or
later, so it drops this node as silent no sooner than ``t_e + window``, and the leader
moves this node's addresses no sooner than ``window + margin`` after it last heard from
it (:meth:`pyctdb.server.membership.Membership.held`). Since any two majorities share
a node, a node cut off from the majority has dropped its addresses before the majority
may move them, whichever way the cut runs (the asymmetric case too).

Exceptions:

* a one-node cluster needs nobody: unbounded;
* a leader that has led without a majority (the lone survivor of a two-node cluster,
  which took the cluster lock after the leader timeout) holds its lease by the lock:
  unbounded while it leads (the guard kills the lock helper when it drops the
  addresses of a wedged agent, so the lock goes with them); so does a leader without a
  cluster lock (no protection against split brain, as in CTDB);
* a peer whose addresses are known gone (its guard closed its links cleanly: the agent
  died) counts as acknowledging for a while (``released_until``), because it cannot move
  anything before it has restarted and waited out the leader timeout.
"""

from __future__ import annotations

NO_LEASE = float("-inf")


def majority_peers(total: int) -> int:
    """How many peers must join this node for a majority of ``total`` nodes."""
    return total // 2


def expiry(*, total, acks, window, released_until=(), unbounded=False):
    """When this node's lease ends: None (unbounded) or a time (``NO_LEASE``: none).

    ``acks``: the newest acknowledged send time per connected peer (those that
    acknowledged none left out); ``released_until``: per released peer, until when it
    counts as acknowledging; ``unbounded``: the lease is held by the cluster lock (see
    the module doc)."""
    need = majority_peers(total)
    if unbounded or need == 0:
        return None
    times = sorted([float(t) + window for t in acks] + [float(t) for t in released_until],
                   reverse=True)
    if len(times) < need:
        return NO_LEASE
    return times[need - 1]
