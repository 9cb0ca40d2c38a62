"""The lease rule (pyctdb.rules.lease) and the leader's hold on a down node's addresses
(Membership.held): the two halves of address fencing, without a network."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pyctdb.rules import lease
from pyctdb.server.membership import FENCE_MARGIN, Membership, Peer

W = 1.5  # KeepaliveInterval 0.5 x KeepaliveLimit 3


@pytest.mark.parametrize("total,need", [(1, 0), (2, 1), (3, 1), (4, 2), (5, 2), (8, 4)])
def test_a_majority_needs_half_the_nodes_as_peers(total, need):
    assert lease.majority_peers(total) == need
    assert 2 * (1 + need) > total and 2 * need <= total


def test_one_node_needs_nobody_and_a_lock_leader_is_unbounded():
    assert lease.expiry(total=1, acks=[], window=W) is None
    assert lease.expiry(total=3, acks=[], window=W, unbounded=True) is None


def test_the_lease_ends_a_window_after_the_newest_keepalive_a_majority_acknowledged():
    # 5 nodes: two peers must have acknowledged; the second newest counts
    assert lease.expiry(total=5, acks=[10.0, 12.0, 11.0], window=W) == 11.0 + W
    assert lease.expiry(total=3, acks=[10.0, 12.0], window=W) == 12.0 + W


def test_too_few_acknowledgements_is_no_lease():
    assert lease.expiry(total=5, acks=[10.0], window=W) == lease.NO_LEASE
    assert lease.expiry(total=2, acks=[], window=W) == lease.NO_LEASE


def test_a_released_peer_counts_until_its_time():
    # two-node cluster, the peer died with its guard: the survivor keeps its lease
    assert lease.expiry(total=2, acks=[], window=W, released_until=[20.0]) == 20.0
    # a live acknowledgement later than that wins
    assert lease.expiry(total=2, acks=[19.0], window=W, released_until=[20.0]) == 19.0 + W


def _membership(peers, now):
    m = Membership.__new__(Membership)
    m.peers = {p.pnn: p for p in peers}
    m.tunables = SimpleNamespace(get=lambda name: {"KeepaliveInterval": 0.5,
                                                   "KeepaliveLimit": 3}[name])
    m.clock = lambda: now
    return m


def test_the_leader_holds_a_down_node_until_its_deadline_plus_the_margin():
    now = 100.0
    gone = Peer(1, "a", link_up=False, last_heard=99.0)  # silent 1 s: held
    old = Peer(2, "b", link_up=False, last_heard=90.0)  # silent 10 s: fenced
    up = Peer(3, "c", link_up=True, last_heard=99.9)
    released = Peer(4, "d", link_up=False, last_heard=99.9, released=True)  # its guard
    m = _membership([gone, old, up, released], now)
    assert m.held(now) == {1: pytest.approx(99.0 + W + FENCE_MARGIN)}
    assert m.held(99.0 + W + FENCE_MARGIN + 0.001) == {}


def test_lease_inputs_count_connected_acks_and_released_peers():
    a = Peer(1, "a", link_up=True, acked=5.0)
    b = Peer(2, "b", link_up=True, acked=None)
    c = Peer(3, "c", link_up=False, acked=None, released=True, released_at=7.0)
    d = Peer(4, "d", link_up=False, acked=6.0)  # (down: its old acknowledgement is void)
    m = _membership([a, b, c, d], 10.0)
    assert m.lease_inputs(4.75) == ([5.0], [11.75])


class _Transport:
    def __init__(self):
        self.dropped = []

    def drop(self, pnn, reason):
        self.dropped.append((pnn, reason))


def test_a_peer_that_speaks_but_acknowledges_nothing_is_reconnected():
    """A half-open outgoing connection (the peer restarted, and this node still writes
    to the old one): the peer is heard, but acknowledges none of this node's keepalives;
    the link is dropped (and dialled again), not left up for ever."""
    now = 100.0
    deaf = Peer(1, "a", link_up=True, acks=True, acked=None, up_since=97.0, last_heard=99.9)
    late = Peer(2, "b", link_up=True, acks=True, acked=97.9, up_since=90.0, last_heard=99.9)
    fine = Peer(3, "c", link_up=True, acks=True, acked=99.8, up_since=90.0, last_heard=99.9)
    young = Peer(4, "d", link_up=True, acks=True, acked=None, up_since=99.5, last_heard=99.9)
    old = Peer(5, "e", link_up=True, acks=False, acked=None, up_since=90.0, last_heard=99.9)
    m = _membership([deaf, late, fine, young, old], now)
    m.transport = _Transport()
    assert m.drop_silent(now) == [1, 2]
    assert [r for _, r in m.transport.dropped] == ["keepalives not acknowledged"] * 2


def test_a_paused_peer_is_left_to_the_silence_rule():
    """Paused: neither heard nor acknowledging; not dropped as deaf (its keepalive
    limit applies, as before)."""
    now = 100.0
    paused = Peer(1, "a", link_up=True, acks=True, acked=98.5, up_since=90.0, last_heard=99.5)
    m = _membership([paused], now)
    m.transport = _Transport()
    assert m.drop_silent(now) == [] and m.transport.dropped == []


def test_the_minority_wait_is_skipped_only_when_every_missing_peer_is_known_gone():
    """A cut-off leader whose peers are still linked but silent (no state) must wait
    out the leader timeout before it campaigns again (it took the lock back at once,
    in the nemesis, and served every address beside the majority)."""
    gone = Peer(1, "a", link_up=False, released=True)
    silent = Peer(2, "b", link_up=False)
    stateless = Peer(3, "c", link_up=True, state=None)
    fine = Peer(4, "d", link_up=True, state={"flags": 0})
    assert _membership([gone, fine], 0).missing_all_released()
    assert not _membership([gone, silent], 0).missing_all_released()
    assert not _membership([gone, stateless], 0).missing_all_released()
    assert not _membership([fine], 0).missing_all_released()  # (nobody missing)
