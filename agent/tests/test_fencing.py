"""Address fencing without a network: a takeover run belongs to one leadership term.

The term rules (rules/election.py), the leader's term (server/leadership.py), the runner
that abandons a run whose term ended before its next change (server/failover.py), and
the receiver that refuses an order of an older term (server/localips.py). The plan's
rule for a connected-but-silent node is in test_takeover.py."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest

from pyctdb.common.logsetup import NOTICE
from pyctdb.errors import PyctdbError
from pyctdb.rules import election, nodeflags
from pyctdb.rules.election import StaleTerm, next_term, order_refused, state_term
from pyctdb.server import tasks
from pyctdb.server.failover import TakeoverRunner
from pyctdb.server.ipevents import FailoverEvents
from pyctdb.server.localips import LocalAddresses
from test_cluster_parts import _cluster
from test_takeover import A2, A3, FakeCluster, balanced


# -- the rules -------------------------------------------------------------------------------
def test_a_new_term_is_above_every_term_seen_and_the_clock():
    assert next_term(0, 1_700_000_000_000) == 1_700_000_000_000
    assert next_term(1_700_000_000_005, 1_700_000_000_000) == 1_700_000_000_006
    assert next_term(41, 12.7) == 42


@pytest.mark.parametrize("state,term", [
    (None, None), ({}, None), ({"term": 12}, 12), ({"term": 0}, 0),
    ({"term": -1}, None), ({"term": True}, None), ({"term": "12"}, None),
    ({"term": 1.5}, None), ({"term": None}, None)])
def test_a_peer_s_term_is_read_only_when_well_formed(state, term):
    assert state_term(state) == term


def test_an_order_of_an_older_term_is_refused():
    assert order_refused("take_ip", None, 10) is None  # (this node's own, older agents)
    assert order_refused("take_ip", 10, 10) is None
    assert order_refused("take_ip", 11, 10) is None
    why = order_refused("take_ip", 9, 10)
    assert why == "take_ip of term 9 refused: a newer leader term 10 is known"
    assert StaleTerm(why).code == "ESTALE"


# -- the leader's term -----------------------------------------------------------------------
def _leadership():
    c = _cluster(lambda: 100.0)
    c.leadership.wallclock = lambda: 1000.0  # 1,000,000 ms
    return c


def test_becoming_leader_starts_a_term_above_what_the_peers_have_seen():
    c = _leadership()
    c.peers[1].state = {"term": 5_000_000}
    asyncio.run(c.leadership._campaign("test"))
    assert c.am_leader and c.term == 5_000_001
    assert c._state_fields()["term"] == 5_000_001  # published in STATE
    ended = []
    c.on_step_down(ended.append)
    asyncio.run(c.leadership.step_down("test"))
    assert c.term is None and ended == [5_000_001]
    assert c.newest_term() == 5_000_001  # (never goes back)
    asyncio.run(c.leadership._campaign("again"))
    assert c.term == 5_000_002  # a new leadership of the same node: a new term


def test_without_peers_the_term_is_the_clock():
    c = _leadership()
    asyncio.run(c.leadership._campaign("test"))
    assert c.term == 1_000_000


def test_a_leader_that_sees_a_newer_term_goes_above_it(caplog):
    c = _leadership()
    asyncio.run(c.leadership._campaign("test"))
    c.peers[2].state = {"term": 2_000_000}  # e.g. a node that restarted, clock behind
    with caplog.at_level(logging.DEBUG, logger="pyctdb"):
        d = asyncio.run(c.leadership.elect(100.0))
    assert d.action == "lead" and c.term == 2_000_001
    assert any(r.levelno == NOTICE and "leader term 2000001 replaces term 1000000"
               in r.getMessage() for r in caplog.records)


def test_a_malformed_term_in_a_state_is_logged_once_and_ignored(caplog):
    c = _leadership()
    c.peers[1].state = {"term": "soon"}
    with caplog.at_level(logging.DEBUG, logger="pyctdb"):
        assert c.newest_term() == 0
        assert c.newest_term() == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "malformed term" in warnings[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info]


# -- the runner: a run stops when its term ends --------------------------------------------
def _runner(cluster, spawn=None):
    tunables = SimpleNamespace(get=lambda name: {"IPAllocAlgorithm": 2}.get(name, 0))
    return TakeoverRunner(cluster, tunables, SimpleNamespace(version=1),
                          FailoverEvents(cluster, None), spawn=spawn, disabled=False)


def _step_down(c):
    """What Leadership.step_down does to the view and the hooks."""
    ended, c.term, c.am_leader = c.term, None, False
    for hook in c.step_down_hooks:
        hook(ended)


def _abandoned(caplog, term=7):
    return [r for r in caplog.records
            if r.getMessage() == f"takeover run of term {term} abandoned: no longer leader"]


@pytest.mark.parametrize("how", ["step down", "new term"])
def test_a_run_that_loses_its_term_mid_run_stops_before_its_next_take(caplog, how):
    """The releases are done, then the leader steps down (or a new term begins): the
    run sends no take_ip and no ipreallocated, and says so once at NOTICE."""
    c = FakeCluster(balanced(), [0, nodeflags.BANNED, nodeflags.BANNED])
    control = c.control

    async def lose_it(pnn, op, args=None, timeout=None):
        res = await control(pnn, op, args, timeout)
        if op == "release_ip":
            if how == "step down":
                _step_down(c)
            else:
                c.term = 8
        return res
    c.control = lose_it
    runner = _runner(c)
    with caplog.at_level(logging.DEBUG, logger="pyctdb"):
        with pytest.raises(StaleTerm):
            asyncio.run(runner.run("test"))
    ops = [op for op, _, _ in c.calls]
    assert "release_ip" in ops
    assert "take_ip" not in ops
    assert [e for op, _, e in c.calls if op == "run_event"] == ["startipreallocate"] * 3
    lines = _abandoned(caplog)
    assert len(lines) == 1 and lines[0].levelno == NOTICE
    assert runner._key is None


def test_the_run_s_orders_carry_its_term():
    c = FakeCluster(balanced(), [0, nodeflags.BANNED, 0])
    seen = []
    control = c.control

    async def spy(pnn, op, args=None, timeout=None):
        if op in ("release_ip", "take_ip"):
            seen.append((op, args["term"]))
        return await control(pnn, op, args, timeout)
    c.control = spy
    asyncio.run(_runner(c).run("test"))
    assert seen == [("release_ip", 7), ("take_ip", 7)]


def test_a_run_asked_for_when_not_leading_does_nothing(caplog):
    c = FakeCluster(balanced(), [0, nodeflags.BANNED, 0])
    c.am_leader, c.term = False, None
    with caplog.at_level(logging.DEBUG, logger="pyctdb"):
        with pytest.raises(StaleTerm) as e:
            asyncio.run(_runner(c).run("test"))
    assert e.value.code == "ESTALE"
    assert c.calls == []


def test_a_run_waiting_for_the_one_under_way_is_abandoned_if_the_term_ends(caplog):
    """A run started in term 7 waits for the run under way; meanwhile the node steps
    down and leads again (term 8): the waiting run is not carried into term 8."""
    c = FakeCluster(balanced(), [0, nodeflags.BANNED, 0])
    runner = _runner(c)

    async def main():
        async with runner._lock:  # a run under way
            waiting = asyncio.ensure_future(runner.run("test"))
            await asyncio.sleep(0.01)
            c.term = 8
        return await asyncio.gather(waiting, return_exceptions=True)

    with caplog.at_level(logging.DEBUG, logger="pyctdb"):
        [res] = asyncio.run(main())
    assert isinstance(res, StaleTerm)
    assert not [x for x in c.calls if x[0] in ("release_ip", "take_ip")]


def test_stepping_down_cancels_the_run_under_way(caplog):
    """A background run (a recovery's, a periodic one) waits for a node's report when
    the leader steps down: the run is cancelled, nothing is taken, and it is said once."""
    c = FakeCluster(balanced(), [0, nodeflags.BANNED, nodeflags.BANNED])
    gate = asyncio.Event
    control = c.control

    async def main():
        hold = gate()

        async def slow(pnn, op, args=None, timeout=None):
            if op == "get_public_ips" and pnn == 2:
                await hold.wait()
            return await control(pnn, op, args, timeout)
        c.control = slow
        owner = set()
        runner = _runner(c, spawn=lambda coro, name=None: tasks.spawn(coro, name, owner))
        runner.start("recovery of [0, 1, 2]", 0.0)
        task = runner._task
        await asyncio.sleep(0.01)
        assert not task.done()
        _step_down(c)
        hold.set()
        await asyncio.gather(task, return_exceptions=True)
        return task

    with caplog.at_level(logging.DEBUG, logger="pyctdb"):
        task = asyncio.run(main())
    assert task.cancelled()
    assert {op for op, _, _ in c.calls} <= {"get_public_ips"}
    assert len(_abandoned(caplog)) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- the receiver: no order of an older term --------------------------------------------
class Receiver:
    """What LocalAddresses needs of the cluster: it has seen term 10."""

    pnn = 1
    control_handlers = {}

    @staticmethod
    def newest_term():
        return 10


def _local():
    addresses = SimpleNamespace(configured={}, lookup=lambda a: None, removed={})
    return LocalAddresses(Receiver(), addresses, net=None, record=None, tickles=None,
                          events=None)


@pytest.mark.parametrize("op", ["take_ip", "release_ip"])
def test_a_node_refuses_an_order_of_an_older_term(op, caplog):
    local = _local()
    handler = local.cluster.control_handlers[op]
    with caplog.at_level(logging.DEBUG, logger="pyctdb"):
        with pytest.raises(StaleTerm) as e:
            asyncio.run(handler(0, {"address": A3, "term": 9}))
    assert e.value.code == "ESTALE"
    assert str(e.value) == f"{op} of term 9 refused: a newer leader term 10 is known"
    assert any(r.levelno == logging.WARNING and "node 0 asked to" in r.getMessage()
               for r in caplog.records)


def test_a_take_of_the_current_term_or_without_one_goes_on():
    local = _local()
    for args in ({"address": A2, "term": 10}, {"address": A2}):
        # past the term check: refused only because the address is not listed here
        with pytest.raises(ValueError, match="not one of this node's public addresses"):
            asyncio.run(local._ctl_take_ip(0, args))


def test_stale_term_is_a_pyctdb_error_answered_by_its_code():
    assert issubclass(election.StaleTerm, PyctdbError)
