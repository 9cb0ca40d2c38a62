"""The cluster layer's parts without a network: controls and their error codes, the
background-task helper, the cycle's report and its timing."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest

from pyctdb.common.logsetup import NOTICE
from pyctdb.errors import ControlError
from pyctdb.protocol import frames
from pyctdb.rules.election import Decision
from pyctdb.server import tasks
from pyctdb.server.cluster import Cluster, CycleReport
from pyctdb.server.controls import Controls


def run(coro):
    return asyncio.run(coro)


# -- tasks.spawn -------------------------------------------------------------------------
def test_spawn_keeps_a_reference_until_done_and_logs_a_crash(caplog):
    async def main():
        owner = set()

        async def boom():
            raise RuntimeError("boom")

        async def fine():
            await asyncio.sleep(0)
            return 1

        t1 = tasks.spawn(fine(), name="fine", owner=owner)
        assert t1 in owner and t1.get_name() == "fine"
        t2 = tasks.spawn(boom(), name="boomer")
        assert t2 in tasks._running
        t3 = tasks.spawn(asyncio.sleep(10), name="sleeper")
        await asyncio.sleep(0.01)
        t3.cancel()
        await asyncio.gather(t3, return_exceptions=True)
        await asyncio.sleep(0)
        assert not owner and t2 not in tasks._running and t3 not in tasks._running

    with caplog.at_level(logging.DEBUG, logger="pyctdb"):
        run(main())
    errors = [r for r in caplog.records if r.name == "pyctdb.server.tasks"]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR
    assert "boomer" in errors[0].getMessage() and errors[0].exc_info[0] is RuntimeError


# -- controls ----------------------------------------------------------------------------
class Pair:
    """Two nodes' Controls (0 and 1) wired back to back: a frame sent is delivered in
    the next pass of the event loop; ``up`` says whether the link is up."""

    def __init__(self):
        self.up = True
        self.sent = []
        self.nodes = {}
        for pnn in (0, 1):
            self.nodes[pnn] = Controls(pnn, f"i{pnn}", send=self._sender(pnn),
                                       is_connected=lambda dst: self.up)

    def _sender(self, src):
        def send(dst, msg_type, payload):
            if not self.up:
                return False
            self.sent.append((src, dst, msg_type, payload))
            c = self.nodes[dst]
            deliver = c.on_control if msg_type == frames.MsgType.CONTROL else c.on_reply
            asyncio.get_running_loop().call_soon(deliver, src, payload)
            return True
        return send


def _ask(op, args=None, handler=None, timeout=2.0):
    """Run control ``op`` from node 0 on node 1 (whose handler is ``handler``); returns
    (result or the ControlError, the REPLY payload, the handler's calls)."""
    calls = []

    async def main():
        pair = Pair()
        if handler is not None:
            async def h(src, a):
                calls.append(a)
                return handler(a)
            pair.nodes[1].control_handlers[op] = h
        try:
            out = await pair.nodes[0].call(1, op, args, timeout=timeout)
        except ControlError as exc:
            out = exc
        replies = [p for _, _, t, p in pair.sent if t == frames.MsgType.REPLY]
        return out, (replies[0] if replies else None), calls

    return run(main())


def test_control_result():
    out, reply, _ = _ask("ping")
    assert out["pnn"] == 1 and reply["ok"] is True and "code" not in reply


def _raise(exc):
    def handler(args):
        raise exc
    return handler


def test_control_error_carries_the_handlers_code():
    out, reply, _ = _ask("admin", {"action": "x"},
                         _raise(ControlError(1, "frozen", code="EAGAIN")))
    assert isinstance(out, ControlError) and out.code == "EAGAIN" and out.message == "frozen"
    assert reply == {"pnn": 1, "instance": "i1", "req_id": reply["req_id"], "ok": False,
                     "error": "frozen", "code": "EAGAIN"}


def test_a_handlers_value_error_is_einval_with_its_message(caplog):
    with caplog.at_level(logging.DEBUG, logger="pyctdb"):
        out, reply, _ = _ask("admin", {"action": "x"}, _raise(ValueError("no such action")))
    assert out.code == "EINVAL" and out.message == "no such action"
    assert not [r for r in caplog.records if r.exc_info]  # the caller's mistake


@pytest.mark.parametrize("exc", [TypeError("t"), KeyError("k")])
def test_type_and_key_errors_are_einval(exc):
    out, _, _ = _ask("admin", {"action": "x"}, _raise(exc))
    assert out.code == "EINVAL" and out.message.startswith(type(exc).__name__ + ": ")


def test_any_other_failure_is_eio_with_a_traceback(caplog):
    with caplog.at_level(logging.DEBUG, logger="pyctdb"):
        out, _, _ = _ask("admin", {"action": "x"}, _raise(RuntimeError("bug")))
    assert out.code == "EIO" and out.message == "RuntimeError: bug"
    assert [r for r in caplog.records if r.exc_info and r.exc_info[0] is RuntimeError]


def test_unknown_control_is_enosys():
    out, _, _ = _ask("no-such-op")
    assert out.code == "ENOSYS" and out.message == "unknown control 'no-such-op'"


def test_arguments_are_checked_before_the_handler_runs():
    out, _, calls = _ask("reload_nodes", {}, lambda a: {"changes": []})
    assert out.code == "EINVAL" and "digest" in out.message and calls == []
    out, _, calls = _ask("reload_nodes", {"digest": 5}, lambda a: {"changes": []})
    assert out.code == "EINVAL" and calls == []
    out, _, calls = _ask("reload_nodes", {"digest": "d"}, lambda a: {"changes": []})
    assert out == {"changes": []} and calls == [{"digest": "d"}]


def test_not_connected_and_timeout_codes():
    async def main():
        pair = Pair()
        pair.up = False
        with pytest.raises(ControlError) as e:
            await pair.nodes[0].call(1, "ping")
        assert e.value.code == "ENOTCONN" and e.value.message == "node 1 is not connected"
        pair.up = True

        async def slow(src, args):
            await asyncio.sleep(5)
        pair.nodes[1].control_handlers["admin"] = slow
        with pytest.raises(ControlError) as e:
            await pair.nodes[0].call(1, "admin", {"action": "x"}, timeout=0.05)
        assert e.value.code == "ETIMEDOUT" and "timed out" in e.value.message
        call = asyncio.ensure_future(pair.nodes[0].call(1, "admin", {"action": "x"}))
        await asyncio.sleep(0.01)
        pair.nodes[0].on_link_lost(1, "keepalive timeout")
        with pytest.raises(ControlError) as e:
            await call
        assert e.value.code == "ENOTCONN" and e.value.message == "node 1 disconnected"
        await pair.nodes[1].stop()
    run(main())


def test_a_reply_without_code_is_eio():
    async def main():
        sent = []
        c = Controls(0, "i0", send=lambda dst, t, p: sent.append(p) or True,
                     is_connected=lambda dst: True)
        fut = asyncio.ensure_future(c.call(1, "ping"))
        await asyncio.sleep(0)
        c.on_reply(1, {"pnn": 1, "instance": "i1", "req_id": sent[0]["req_id"], "ok": False,
                       "error": "nope"})
        with pytest.raises(ControlError) as e:
            await fut
        assert e.value.code == "EIO" and e.value.message == "nope"
    run(main())


def test_malformed_control_and_reply_are_logged_once_and_dropped(caplog):
    async def main():
        pair = Pair()
        c = pair.nodes[1]
        c.on_control(0, {"pnn": 0, "instance": "i0", "req_id": "x", "op": "ping", "args": {}})
        c.on_control(0, {"pnn": 0, "instance": "i0", "req_id": 1, "args": {}})
        c.on_reply(0, {"pnn": 0, "instance": "i0", "ok": True})
        await asyncio.sleep(0.01)
        assert pair.sent == []
    with caplog.at_level(logging.DEBUG, logger="pyctdb"):
        run(main())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "malformed CONTROL" in warnings[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info]


# -- the cycle's report and timing -------------------------------------------------------
class Tunables:
    def __init__(self, **values):
        self.values = {"KeepaliveInterval": 5, "KeepaliveLimit": 5, **values}

    def get(self, name):
        return self.values[name]


def _cluster(clock):
    nodes = [SimpleNamespace(pnn=p, address=f"127.0.0.{p + 1}", deleted=False)
             for p in range(3)]
    config = SimpleNamespace(nodes=nodes, port=1, start_as_stopped=False,
                             start_as_disabled=False, leader_capability=True,
                             lmaster_capability=True, leader_timeout=5)
    return Cluster(config, nodes[0], Tunables(), clock=clock)


def test_the_cycle_report_is_logged_when_it_says_something_new(caplog):
    now = [100.0]
    c = _cluster(lambda: now[0])
    follow = Decision("follow", 1, "node 1 is the leader")
    with caplog.at_level(logging.DEBUG, logger="pyctdb"):
        c.view.leader = 1
        r = c._report(follow, [])
        assert isinstance(r, CycleReport)
        c._report(follow, [])  # a routine repeat
        c._report(follow, ["adopted generation 7 of leader 1, members [0, 1]"])
        c._report(follow, [])  # back to routine: not news
        c.view.leader = None
        c._report(Decision("wait", None, "no leader"), [])
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if "cycle:" in r.getMessage()]
    assert [lvl for lvl, _ in lines] == [NOTICE, logging.DEBUG, NOTICE, logging.DEBUG, NOTICE]
    assert lines[0][1] == ("cycle: follower of node 1, decided follow node 1 (node 1 is the "
                           "leader)")
    assert lines[2][1].endswith("; did: adopted generation 7 of leader 1, members [0, 1]")
    assert lines[4][1] == "cycle: no leader, decided wait (no leader)"


def test_next_wake_is_the_tick_a_silent_peer_or_a_campaign_retry():
    now = [100.0]
    c = _cluster(lambda: now[0])
    assert c._next_wake(100.0) == 0.25
    peer = c.peers[1]
    peer.link_up, peer.last_heard = True, 100.0 - 24.9  # silent at 100.102
    assert c._next_wake(100.0) == pytest.approx(0.102)
    peer.last_heard = 100.0
    c.leadership._retry_at = 100.05
    assert c._next_wake(100.0) == pytest.approx(0.05)
    assert c._next_wake(100.06) == 0.25  # (a retry that is past is no reason to wake)


def test_an_error_of_ours_is_answered_with_its_own_code_and_message():
    from pyctdb.errors import DbError, FrozenError
    out, reply, _ = _ask("admin", {"action": "x"}, _raise(DbError("ENOENT", "no such db")))
    assert out.code == "ENOENT" and out.message == "no such db"
    assert reply["code"] == "ENOENT" and reply["error"] == "no such db"
    out, _, _ = _ask("admin", {"action": "x"}, _raise(FrozenError("databases frozen")))
    assert out.code == "EAGAIN" and out.message == "databases frozen"
