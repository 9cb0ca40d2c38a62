from pyctdb.rules import nodeflags as F
from pyctdb.rules.election import (Decision, ElectionInput, PeerView, decide,
                                   recovery_abort, vnnmap_for)


def peers(*specs):
    """specs: (pnn, connected, flags, claims)"""
    return tuple(PeerView(pnn=p, connected=c, flags=f, claims_leader=cl)
                 for p, c, f, cl in specs)


def test_lowest_pnn_campaigns_when_nobody_leads():
    d = decide(ElectionInput(me=0, peers=peers((1, True, 0, False), (2, True, 0, False))))
    assert d.action == "campaign" and d.leader == 0
    d = decide(ElectionInput(me=1, peers=peers((0, True, 0, False), (2, True, 0, False))))
    assert d.action == "wait" and "expecting node 0" in d.reason


def test_start_up_grace_waits():
    d = decide(ElectionInput(me=0, settled=False, peers=peers((1, False, F.DISCONNECTED, False))))
    assert d.action == "wait" and "grace" in d.reason


def test_grace_does_not_delay_following_an_existing_leader():
    d = decide(ElectionInput(me=0, settled=False, peers=peers((1, True, 0, True))))
    assert (d.action, d.leader) == ("follow", 1)


def test_returning_lower_pnn_follows_the_current_leader():
    # node 0 comes back while node 2 leads: it must not take over
    d = decide(ElectionInput(me=0, peers=peers((1, True, 0, False), (2, True, 0, True))))
    assert (d.action, d.leader) == ("follow", 2)


def test_leader_keeps_leading():
    d = decide(ElectionInput(me=2, am_leader=True,
                             peers=peers((0, True, 0, False), (1, True, 0, False))))
    assert (d.action, d.leader) == ("lead", 2)


def test_two_leaders_higher_pnn_steps_down():
    d = decide(ElectionInput(me=2, am_leader=True, peers=peers((1, True, 0, True))))
    assert (d.action, d.leader) == ("step_down", 1)
    d = decide(ElectionInput(me=1, am_leader=True, peers=peers((2, True, 0, True))))
    assert (d.action, d.leader) == ("lead", 1)


def test_disconnected_leader_is_ignored_and_next_campaigns():
    d = decide(ElectionInput(me=1, peers=peers((0, False, F.DISCONNECTED, True),
                                               (2, True, 0, False))))
    assert d.action == "campaign"
    d = decide(ElectionInput(me=2, peers=peers((0, False, F.DISCONNECTED, True),
                                               (1, True, 0, False))))
    assert d.action == "wait" and "expecting node 1" in d.reason


def test_candidate_that_does_not_take_over_is_replaced_after_timeout():
    inp = ElectionInput(me=2, candidate_wait_expired=True,
                        peers=peers((0, False, F.DISCONNECTED, False), (1, True, 0, False)))
    assert decide(inp).action == "campaign"


def test_banned_or_stopped_nodes_never_lead():
    d = decide(ElectionInput(me=0, my_flags=F.STOPPED, peers=peers((1, True, 0, False))))
    assert d.action == "wait" and "expecting node 1" in d.reason
    d = decide(ElectionInput(me=0, my_flags=F.BANNED, am_leader=True,
                             peers=peers((1, True, 0, False))))
    assert d.action == "step_down"
    # a banned peer's claim is not followed
    d = decide(ElectionInput(me=1, peers=peers((0, True, F.BANNED, True))))
    assert d.action == "campaign"


def test_unknown_peer_is_not_eligible():
    d = decide(ElectionInput(me=1, peers=peers((0, True, F.UNKNOWN, False))))
    assert d.action == "campaign"


def test_not_leader_capable():
    d = decide(ElectionInput(me=0, my_leader_capable=False, peers=peers((1, True, 0, False))))
    assert d.action == "wait"
    inp = ElectionInput(me=1, peers=(PeerView(0, True, 0, False, leader_capable=False),))
    assert decide(inp).action == "campaign"


def test_nobody_eligible():
    d = decide(ElectionInput(me=0, my_flags=F.STOPPED, peers=peers((1, False, 1, False))))
    assert d == Decision("wait", None, "no node is eligible to lead", ())


def test_disabled_and_unhealthy_nodes_may_lead():
    d = decide(ElectionInput(me=0, my_flags=F.DISABLED, peers=peers((1, True, 0, False))))
    assert d.action == "campaign"


def test_vnnmap():
    assert vnnmap_for([2, 0, 1], {1: False}) == [0, 2]


def test_isolated_leader_with_lock_steps_down():
    inp = ElectionInput(me=0, am_leader=True, lock_configured=True, quorum=False,
                        led_with_quorum=True,
                        peers=peers((1, False, F.DISCONNECTED, False),
                                    (2, False, F.DISCONNECTED, False)))
    d = decide(inp)
    assert d.action == "step_down" and "majority" in d.reason


def test_without_lock_isolated_leader_keeps_leading():
    inp = ElectionInput(me=0, am_leader=True, lock_configured=False, quorum=False,
                        peers=peers((1, False, F.DISCONNECTED, False)))
    assert decide(inp).action == "lead"


def test_minority_node_waits_then_campaigns():
    base = dict(me=0, lock_configured=True, quorum=False,
                peers=peers((1, False, F.DISCONNECTED, False), (2, False, F.DISCONNECTED, False)))
    d = decide(ElectionInput(**base))
    assert d.action == "wait" and "head start" in d.reason
    d = decide(ElectionInput(minority_wait_expired=True, **base))
    assert d.action == "campaign"


def test_lone_survivor_that_took_over_without_majority_keeps_leading():
    inp = ElectionInput(me=1, am_leader=True, lock_configured=True, quorum=False,
                        led_with_quorum=False, peers=peers((0, False, F.DISCONNECTED, False)))
    assert decide(inp).action == "lead"


def test_majority_side_campaigns_at_once():
    inp = ElectionInput(me=1, lock_configured=True, quorum=True,
                        peers=peers((0, False, F.DISCONNECTED, True), (2, True, 0, False)))
    assert decide(inp).action == "campaign"


def test_recovery_aborts_when_a_member_is_lost():
    assert recovery_abort([0, 1, 2], 0, {1, 2}) is None
    assert recovery_abort([0, 1, 2], 0, {1, 2, 3}) is None
    assert recovery_abort([0, 2], 0, {1}) == "lost member [2] during the recovery of [0, 2]"
    assert recovery_abort([2, 0, 1], 0, set()) == \
        "lost members [1, 2] during the recovery of [0, 1, 2]"
    assert recovery_abort([1], 1, set()) is None  # this node alone
    assert recovery_abort([0, 1], 0, {1}, leading=False) == "this node is no longer the leader"
