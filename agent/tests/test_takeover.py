"""The takeover plan (rules/takeover.py) and the leader's execution of it
(server/failover.py's TakeoverRunner), without namespaces or agents: who releases and
who takes which public address, in which order, and what stays unassigned and why."""

import asyncio
import time
import re
from types import SimpleNamespace

import pytest

from pyctdb.common.config import PublicAddress
from pyctdb.errors import ControlError
from pyctdb.rules import nodeflags
from pyctdb.rules import takeover
from pyctdb.rules.takeover import MoveRefused, Release, Take, plan_move, plan_takeover
from pyctdb.server.failover import TakeoverRunner
from pyctdb.server.ipevents import FailoverEvents

A1, A2, A3 = "10.0.0.1", "10.0.0.2", "10.0.0.3"
ALL = [A1, A2, A3]


def report(listed, hosted, interfaces=("eth0",)):
    """A node's get_public_ips answer."""
    return {"configured": [{"address": a, "prefix": 24, "interfaces": list(interfaces)}
                           for a in listed], "hosted": list(hosted)}


def balanced():
    return {0: report(ALL, [A1]), 1: report(ALL, [A2]), 2: report(ALL, [A3])}


# -- the plan -------------------------------------------------------------------------------
def test_nothing_changes_no_op_plan():
    plan = plan_takeover(balanced(), [0, 0, 0])
    assert plan.releases == () and plan.takes == ()
    assert not plan.moving
    assert plan.allocation == {A1: 0, A2: 1, A3: 2}
    assert plan.previous == {A1: 0, A2: 1, A3: 2}
    assert plan.unassigned == {}
    assert plan.changes([]) == []


def test_a_dead_node_s_address_is_planned_onto_another():
    # node 2 did not report (unreachable): its address has no holder and goes elsewhere
    reports = {0: report(ALL, [A1]), 1: report(ALL, [A2])}
    plan = plan_takeover(reports, [0, 0, nodeflags.DISCONNECTED])
    assert plan.releases == ()
    assert plan.takes == (Take(A3, 0, -1, ("eth0",)),)
    assert plan.allocation == {A1: 0, A2: 1, A3: 0}
    assert plan.moving
    assert plan.changes(plan.takes) == [f"{A3} -1->0"]


def test_a_banned_node_releases_and_another_takes():
    plan = plan_takeover(balanced(), [0, nodeflags.BANNED, 0])
    assert plan.releases == (Release(A2, 1, takeover.MOVED),)
    assert plan.takes == (Take(A2, 0, 1, ("eth0",)),)
    assert plan.allocation[A2] == 0


def test_a_disabled_node_releases_too():
    plan = plan_takeover(balanced(), [0, 0, nodeflags.PERMANENTLY_DISABLED])
    assert [(r.address, r.pnn) for r in plan.releases] == [(A3, 2)]
    assert [(t.address, t.pnn) for t in plan.takes] == [(A3, 0)]


def test_an_address_with_no_eligible_node_is_released_and_stays_unassigned():
    # A3 is listed only on node 1, which is unhealthy: nobody may host it
    reports = {0: report([A1, A2], [A1]), 1: report(ALL, [A2, A3])}
    plan = plan_takeover(reports, [0, nodeflags.UNHEALTHY])
    assert plan.releases == (Release(A2, 1, takeover.MOVED),
                             Release(A3, 1, takeover.UNASSIGNED))
    assert plan.takes == (Take(A2, 0, 1, ("eth0",)),)
    assert plan.allocation[A3] == -1
    assert plan.unassigned == {A3: takeover.NO_ELIGIBLE_NODE}
    assert plan.changes(plan.takes) == [f"{A2} 1->0", f"{A3} 1->-1"]


def test_no_ip_takeover_leaves_a_banned_node_s_address_unassigned():
    plan = plan_takeover(balanced(), [0, nodeflags.BANNED, 0], no_ip_takeover=True)
    assert plan.releases == (Release(A2, 1, takeover.UNASSIGNED),)
    assert plan.takes == ()
    assert plan.unassigned == {A2: takeover.NO_TAKEOVER}


def test_an_address_on_two_nodes_stays_on_the_lower_one():
    reports = balanced()
    reports[2]["hosted"].append(A1)
    plan = plan_takeover(reports, [0, 0, 0])
    assert plan.releases == (Release(A1, 2, takeover.DUPLICATE),)
    assert plan.takes == ()


def test_an_address_no_node_lists_is_released():
    reports = balanced()
    reports[1]["hosted"].append("10.0.0.9")
    plan = plan_takeover(reports, [0, 0, 0])
    assert plan.releases == (Release("10.0.0.9", 1, takeover.UNLISTED),)
    assert plan.takes == ()
    assert plan.unassigned == {"10.0.0.9": takeover.UNLISTED}
    assert plan.changes([]) == ["10.0.0.9 1->-1"]


def test_a_forced_move_goes_where_it_is_told_on_that_node_s_interfaces():
    reports = balanced()
    reports[2] = report(ALL, [A3], interfaces=("eth1", "eth2"))
    plan = plan_takeover(reports, [0, 0, 0], moves={A1: 2})
    # node 0, emptied by the move, is a rebalance candidate: LCP2 gives it node 2's A3
    assert plan.releases == (Release(A1, 0, takeover.MOVED), Release(A3, 2, takeover.MOVED))
    assert plan.takes == (Take(A3, 0, 2, ("eth0",)), Take(A1, 2, 0, ("eth1", "eth2")))
    assert plan.allocation == {A1: 2, A2: 1, A3: 0}


def test_blocked_release_keeps_its_address_from_being_taken():
    plan = plan_takeover(balanced(), [0, nodeflags.BANNED, nodeflags.BANNED])
    assert {(r.address, r.pnn) for r in plan.releases} == {(A2, 1), (A3, 2)}
    failures = [(r, OSError("boom")) for r in plan.releases]
    # node 1 is still connected (the address may still be there), node 2 is gone
    blocking = plan.blocking(failures, connected={0, 1})
    assert [r.address for r, _ in blocking] == [A2]
    assert [t.address for t in plan.takes_after({A2})] == [A3]


def test_allocation_flags():
    nodes = [SimpleNamespace(pnn=0, deleted=False), SimpleNamespace(pnn=1, deleted=False),
             SimpleNamespace(pnn=2, deleted=True), SimpleNamespace(pnn=3, deleted=False)]
    flags = takeover.allocation_flags(nodes, 0, nodeflags.STOPPED,
                                      {1: nodeflags.UNKNOWN | nodeflags.UNHEALTHY, 3: 0},
                                      unreachable={3})
    assert flags == [nodeflags.STOPPED, nodeflags.DISCONNECTED | nodeflags.UNHEALTHY,
                     nodeflags.DELETED | nodeflags.DISCONNECTED, nodeflags.DISCONNECTED]


def test_algorithm_names():
    assert [takeover.algorithm_name(v) for v in (0, 1, 2, 7)] == ["det", "nondet", "lcp2",
                                                                   "lcp2"]


def test_interface_moves_is_part_of_the_plan_rules():
    conf = {A1: PublicAddress(A1, 24, ("eth0", "eth1"))}
    assert takeover.interface_moves({A1: "eth0"}, conf, {"eth1"}) == [(A1, "eth0", "eth1")]


# -- no take from a connected-but-silent node (address fencing) ----------------------------
def test_a_silent_node_s_addresses_are_kept_where_they_are():
    # node 2's link is up but it did not answer: it may still serve A3
    reports = {0: report(ALL, [A1]), 1: report(ALL, [A2])}
    plan = plan_takeover(reports, [0, 0, nodeflags.DISCONNECTED], silent={2},
                         presumed={A1: 0, A2: 1, A3: 2})
    assert plan.takes == () and plan.releases == ()
    assert not plan.moving
    assert plan.kept == {A3: "holder 2 did not answer"}
    assert plan.allocation == {A1: 0, A2: 1, A3: 2}  # (where it presumably is)
    assert plan.unassigned == {}


def test_with_a_silent_node_an_address_of_unknown_holder_is_kept():
    # a new term: the leader does not know who holds A3, and node 2 is silent
    reports = {0: report(ALL, [A1]), 1: report(ALL, [A2])}
    plan = plan_takeover(reports, [0, 0, nodeflags.DISCONNECTED], silent={2})
    assert plan.takes == ()
    assert plan.kept == {A3: "holder unknown: node 2 did not answer"}
    assert A3 not in plan.allocation
    plan = plan_takeover({0: report(ALL, [A1])},
                         [0, nodeflags.DISCONNECTED, nodeflags.DISCONNECTED], silent={1, 2},
                         presumed={A1: 0})
    assert plan.kept == {A2: "holder unknown: nodes 1, 2 did not answer",
                         A3: "holder unknown: nodes 1, 2 did not answer"}


def test_a_disconnected_node_s_addresses_move_even_while_another_is_silent():
    # node 2 was dropped (DISCONNECTED: not silent), node 1 is silent; the last run of
    # this term left A3 on node 2, A2 on node 1
    reports = {0: report(ALL, [A1])}
    plan = plan_takeover(reports, [0, nodeflags.DISCONNECTED, nodeflags.DISCONNECTED],
                         silent={1}, presumed={A1: 0, A2: 1, A3: 2})
    assert plan.takes == (Take(A3, 0, -1, ("eth0",)),)
    assert plan.kept == {A2: "holder 1 did not answer"}
    assert plan.allocation == {A1: 0, A2: 1, A3: 0}


def test_an_address_nobody_held_in_this_term_is_placed_despite_a_silent_node():
    reports = {0: report(ALL, [A1]), 1: report(ALL, [A2])}
    plan = plan_takeover(reports, [0, 0, nodeflags.DISCONNECTED], silent={2},
                         presumed={A1: 0, A2: 1, A3: -1})
    assert [(t.address, t.pnn) for t in plan.takes] == [(A3, 0)]
    assert plan.kept == {}


def test_an_answering_node_s_moves_go_on_beside_a_silent_node():
    # node 1 (banned) answered and releases A2; node 2 is silent and keeps A3
    reports = {0: report(ALL, [A1]), 1: report(ALL, [A2])}
    plan = plan_takeover(reports, [0, nodeflags.BANNED, nodeflags.DISCONNECTED],
                         silent={2}, presumed={A1: 0, A2: 1, A3: 2})
    assert plan.releases == (Release(A2, 1, takeover.MOVED),)
    assert plan.takes == (Take(A2, 0, 1, ("eth0",)),)
    assert plan.kept == {A3: "holder 2 did not answer"}


def test_moveip_does_not_take_a_kept_address():
    reports = {0: report(ALL, [A1]), 1: report(ALL, [A2])}
    plan = plan_takeover(reports, [0, 0, nodeflags.DISCONNECTED], silent={2},
                         presumed={A1: 0, A2: 1, A3: 2}, moves={A3: 1})
    assert plan.takes == ()
    assert plan.allocation[A3] == 2


def test_without_a_silent_node_nothing_is_kept():
    reports = {0: report(ALL, [A1]), 1: report(ALL, [A2])}
    plan = plan_takeover(reports, [0, 0, nodeflags.DISCONNECTED], presumed={A3: 2})
    assert plan.kept == {} and [t.address for t in plan.takes] == [A3]


# -- moveip ---------------------------------------------------------------------------------
def test_a_move_releases_on_the_holder_and_takes_on_the_target_and_nothing_else():
    reports = {0: report(ALL, [A1, A3]), 1: report(ALL, [A2]), 2: report(ALL, [],
                                                                          ("eth1", "eth0"))}
    plan = plan_move(reports, [0, 0, 0], A1, 2)
    assert plan.releases == (Release(A1, 0, takeover.MOVED),)
    assert plan.takes == (Take(A1, 2, 0, ("eth1", "eth0")),)
    assert plan.allocation == {A1: 2, A2: 1, A3: 0}  # (A3 is not rebalanced)
    assert plan.changes(plan.takes) == [f"{A1} 0->2"]


def test_a_move_of_an_address_on_two_nodes_releases_both():
    reports = {0: report(ALL, [A1]), 1: report(ALL, [A1, A2]), 2: report(ALL, [A3])}
    plan = plan_move(reports, [0, 0, 0], A1, 2)
    assert [r.pnn for r in plan.releases] == [0, 1] and plan.takes[0].previous == 0


def test_a_move_to_the_holder_changes_nothing():
    plan = plan_move(balanced(), [0, 0, 0], A2, 1)
    assert not plan.moving


def test_a_move_of_an_unhosted_address_takes_it():
    reports = {0: report(ALL, [A1]), 1: report(ALL, [A2]), 2: report(ALL, [])}
    plan = plan_move(reports, [0, 0, 0], A3, 0)
    assert plan.releases == () and plan.takes == (Take(A3, 0, -1, ("eth0",)),)


def test_a_move_is_refused_when_the_target_cannot_host_it():
    reports = {0: report(ALL, [A1]), 1: report([A1, A2], [A2]), 2: report(ALL, [A3])}
    for flags, target, addr, why in (
            ([0, 0, 0], 1, A3, "Node 1 CANNOT host IP address 10.0.0.3"),
            ([0, 0, nodeflags.PERMANENTLY_DISABLED], 2, A1, "node 2 cannot host addresses "
                                                              "now (DISABLED)"),
            ([0, 0, nodeflags.UNHEALTHY], 2, A1, "(UNHEALTHY)"),
            ([0, 0, 0], 3, A1, "node 3 did not report")):
        with pytest.raises(MoveRefused, match=re.escape(why)):
            plan_move(reports, flags, addr, target)


def test_a_move_does_not_take_an_address_a_silent_node_may_serve():
    reports = {0: report(ALL, [A1]), 1: report(ALL, [A2])}
    with pytest.raises(MoveRefused, match="holder 2 did not answer"):
        plan_move(reports, [0, 0, nodeflags.DISCONNECTED], A3, 1, silent={2},
                  presumed={A1: 0, A2: 1, A3: 2})


# -- the leader executes the plan -----------------------------------------------------------
class FakeCluster:
    """Three connected nodes answering controls from ``reports``; every control is
    recorded in ``calls`` as (op, pnn, address)."""

    def __init__(self, reports, flags, fail_release=(), connected=(1, 2)):
        self.pnn = 0
        self.my_flags = flags[0]
        self.flags = flags
        self.nodes = [SimpleNamespace(pnn=p, deleted=False) for p in range(len(flags))]
        self.peers = {p: SimpleNamespace(pnn=p, link_up=p in connected, state={})
                      for p in range(1, len(flags))}
        self.reports = reports
        self.fail_release = set(fail_release)
        self.control_handlers = {}
        self.calls = []
        self.am_leader = True
        self.term = 7
        self.step_down_hooks = []

    def on_step_down(self, hook):
        self.step_down_hooks.append(hook)

    def held_down(self):
        """The down nodes not fenced yet: the tests set ``held`` to have some."""
        return getattr(self, "held", {})

    def peer_flags(self, peer):
        return self.flags[peer.pnn]

    async def control(self, pnn, op, args=None, timeout=None):
        await asyncio.sleep(0)
        self.calls.append((op, pnn, (args or {}).get("address", (args or {}).get("event"))))
        if op == "get_public_ips":
            return self.reports[pnn]
        if op == "release_ip":
            if (args["address"], pnn) in self.fail_release:
                raise ControlError(pnn, "cannot release")
            return {"released": True, "connections": [[args["address"], 445, "10.9.9.9", 5000]]}
        if op == "take_ip":
            return {"taken": True, "iface": "eth0", "connections": args["connections"]}
        if op == "run_event":
            return {"status": "NONE"}
        raise AssertionError(op)


def run_takeover(cluster):
    tunables = SimpleNamespace(get=lambda name: {"IPAllocAlgorithm": 2}.get(name, 0))
    runner = TakeoverRunner(cluster, tunables, SimpleNamespace(version=1),
                            FailoverEvents(cluster, None), spawn=None, disabled=False)
    return runner, asyncio.run(runner.run("test"))


def test_the_leader_releases_everywhere_before_it_takes():
    c = FakeCluster(balanced(), [0, nodeflags.BANNED, nodeflags.BANNED])
    runner, run = run_takeover(c)
    ops = [op for op, _, _ in c.calls if op != "get_public_ips"]
    assert ops == (["run_event"] * 3 + ["release_ip"] * 2 + ["take_ip"] * 2
                   + ["run_event"] * 3)
    events = [e for op, _, e in c.calls if op == "run_event"]
    assert events == ["startipreallocate"] * 3 + ["ipreallocated"] * 3
    assert {(p, a) for op, p, a in c.calls if op == "take_ip"} == {(0, A2), (0, A3)}
    assert sorted(run["moves"]) == [f"{A2} 1->0", f"{A3} 2->0"]
    assert runner.last_allocation == {A1: 0, A2: 0, A3: 0}


def test_the_leader_hands_the_released_connections_to_the_taker():
    c = FakeCluster(balanced(), [0, nodeflags.BANNED, 0])
    seen = []
    control = c.control

    async def spy(pnn, op, args=None, timeout=None):
        if op == "take_ip":
            seen.append(args)
        return await control(pnn, op, args, timeout)
    c.control = spy
    run_takeover(c)
    assert seen == [{"address": A2, "connections": [[A2, 445, "10.9.9.9", 5000]],
                     "term": 7}]


def test_a_failed_release_on_a_connected_node_blocks_its_address():
    c = FakeCluster(balanced(), [0, nodeflags.BANNED, nodeflags.BANNED],
                    fail_release={(A2, 1)})
    runner, run = run_takeover(c)
    assert {(p, a) for op, p, a in c.calls if op == "take_ip"} == {(0, A3)}
    assert run["moves"] == [f"{A3} 2->0"]
    assert runner._key is None  # tried again next cycle


def test_nothing_to_move_runs_no_event_and_no_control():
    c = FakeCluster(balanced(), [0, 0, 0])
    runner, run = run_takeover(c)
    assert {op for op, _, _ in c.calls} == {"get_public_ips"}
    assert run["moves"] == [] and run["unreachable"] == []


def test_a_silent_peer_keeps_its_addresses_a_disconnected_one_loses_them(caplog):
    """The leader's run: node 2 does not answer get_public_ips. While its link is up
    (connected but silent) nothing of its is taken; once it is dropped (link down,
    DISCONNECTED) its address moves."""
    flags = [0, 0, 0]
    c = FakeCluster(balanced(), flags)
    control = c.control

    async def silent_2(pnn, op, args=None, timeout=None):
        if pnn == 2:
            raise ControlError(2, "timed out", code="ETIMEDOUT")
        return await control(pnn, op, args, timeout)
    c.control = silent_2
    runner, run = run_takeover(c)
    assert not [x for x in c.calls if x[0] in ("take_ip", "release_ip")]
    assert run["unreachable"] == [2] and run["kept"] == {A3: "holder unknown: node 2 did "
                                                         "not answer"}
    c.calls.clear()
    c.peers[2].link_up = False  # dropped by the keepalive rule: DISCONNECTED
    c.flags = [0, 0, nodeflags.DISCONNECTED]
    run = asyncio.run(runner.run("test"))
    assert [(p, a) for op, p, a in c.calls if op == "take_ip"] in ([(0, A3)], [(1, A3)])
    assert run["kept"] == {}


def move_with(cluster, addr, pnn):
    tunables = SimpleNamespace(get=lambda name: {"IPAllocAlgorithm": 2}.get(name, 0))
    spawned = []

    async def main():
        def spawn(coro, name):
            t = asyncio.ensure_future(coro)
            spawned.append(t)
            return t
        runner = TakeoverRunner(cluster, tunables, SimpleNamespace(version=1),
                                FailoverEvents(cluster, None), spawn=spawn, disabled=False)
        try:
            return runner, await runner.move(addr, pnn)
        finally:
            await asyncio.gather(*spawned)
    return asyncio.run(main())


def test_moveip_is_one_release_and_one_take_with_no_event_before_them():
    """CTDB's moveip: no startipreallocate, no other address touched; ipreallocated
    after the take."""
    c = FakeCluster(balanced(), [0, 0, 0])
    runner, run = move_with(c, A1, 2)
    ops = [(op, p, a) for op, p, a in c.calls if op != "get_public_ips"]
    assert ops[:2] == [("release_ip", 0, A1), ("take_ip", 2, A1)]
    assert sorted(ops[2:]) == [("run_event", p, "ipreallocated") for p in range(3)]
    assert run["moves"] == [f"{A1} 0->2"] and run["algorithm"] == "moveip"


def test_moveip_refused_or_failed_is_a_control_error_and_takes_nothing():
    c = FakeCluster(balanced(), [0, 0, nodeflags.PERMANENTLY_DISABLED])
    with pytest.raises(ControlError, match="DISABLED") as exc:
        move_with(c, A1, 2)
    assert exc.value.code == "EINVAL"
    c = FakeCluster(balanced(), [0, 0, 0], fail_release={(A1, 0)})
    with pytest.raises(ControlError, match="failed to release") as exc:
        move_with(c, A1, 2)
    assert exc.value.code == "EIO"
    assert not [x for x in c.calls if x[0] == "take_ip"]


def test_moveip_beside_a_node_held_down_is_a_full_run():
    c = FakeCluster(balanced(), [0, 0, 0])
    c.held = {2: 1.0}
    runner, run = move_with(c, A1, 1)
    assert run["algorithm"] == "lcp2"
    assert ("run_event", 0, "startipreallocate") in c.calls


def test_takeover_runs_disabled_for_a_while_start_none_and_refuse_a_requested_one():
    c = FakeCluster(balanced(), [0, 0, nodeflags.BANNED])
    c.recmode, c.generation = 0, 5
    spawned = []
    tunables = SimpleNamespace(get=lambda name: {"IPAllocAlgorithm": 2}.get(name, 0))
    class Done:  # (a task that has finished)
        def done(self):
            return True

        def add_done_callback(self, fn):
            pass

    def spawn(coro, name):
        coro.close()
        spawned.append(name)
        return Done()
    runner = TakeoverRunner(c, tunables, SimpleNamespace(version=1),
                            FailoverEvents(c, None), spawn=spawn, disabled=False)
    c.peer_flags = lambda p: c.flags[p.pnn]
    c.held_down = lambda: {}

    async def main():
        await runner._ctl_disable_takeover_runs(1, {"seconds": 30})
        assert runner.on_cycle(time.monotonic()) is None and not spawned
        with pytest.raises(ControlError, match="disabled") as exc:
            await runner._ctl_ipreallocate(1, {})
        assert exc.value.code == "EAGAIN"
        await runner._ctl_disable_takeover_runs(1, {"seconds": 0})
        assert runner.on_cycle(time.monotonic()) == "takeover run (cluster changed)"
        assert len(spawned) == 1
    asyncio.run(main())
