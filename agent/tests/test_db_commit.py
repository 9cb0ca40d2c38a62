"""Persistent transactions at the coordinator: the ones that arrive while a commit round
is applied go together in the next round (one db_trans_apply per member), each with its
own sequence number, in order; a conflict fails only its own transaction."""

import asyncio

import pytest

from pyctdb.errors import ControlError
from pyctdb.server.db.wire import b64
from test_db_chunk import make_databases  # noqa: E402 (same directory)


def test_concurrent_transactions_share_rounds_in_order(tmp_path):
    dbs = make_databases(tmp_path)
    c = dbs.cluster
    c.members = [c.pnn]
    applies = []

    async def control(pnn, op, args, timeout=None):  # a one-node cluster
        if op == "db_trans_apply":
            applies.append(args["seqnum"])
            await asyncio.sleep(0.01)  # (an fsync)
        return await c.control_handlers[op](pnn, dict(args))
    c.control = control
    commit = c.control_handlers["db_trans_commit"]

    def txn(key, value, expect=None):
        return commit(0, {"db": "t.tdb", "writes": [[b64(key), b64(value)]],
                          "expect_seqnum": expect})

    async def go():
        await dbs.ensure("t.tdb", True)
        first = await txn(b"a", b"0")
        assert first["seqnum"] == 1 and applies == [1]
        res = await asyncio.gather(*(txn(b"a", b"%d" % i) for i in range(1, 6)),
                                   txn(b"b", b"x", expect=99), return_exceptions=True)
        assert [r["seqnum"] for r in res[:5]] == [2, 3, 4, 5, 6]
        assert isinstance(res[5], ControlError) and "transaction conflict" in res[5].message
        assert len(applies) < 6  # rounds shared, not one apply per transaction
        st = dbs.stores[True]
        assert st.meta["t.tdb"]["seqnum"] == 6
        assert st.get("t.tdb", b"a").value == b"5"   # the last one wins
        assert st.get("t.tdb", b"a").rsn == 6
        assert st.get("t.tdb", b"b") is None
        assert (await txn(b"b", b"y", expect=6))["seqnum"] == 7
    try:
        asyncio.run(go())
    finally:
        dbs.close()


def test_a_frozen_coordinator_refuses(tmp_path):
    dbs = make_databases(tmp_path)
    dbs.frozen = True
    commit = dbs.cluster.control_handlers["db_trans_commit"]

    async def go():
        with pytest.raises(RuntimeError, match="frozen"):
            await commit(0, {"db": "t.tdb", "writes": []})
    try:
        asyncio.run(go())
    finally:
        dbs.close()


def test_a_failed_commit_is_told_by_its_code_never_its_text():
    from pyctdb.server.db.transactions import AMBIGUOUS, AMBIGUOUS_CODE, CONFLICT, _failure
    assert _failure(ControlError(2, "whatever", code="EBUSY")) == "conflict"
    assert _failure(ControlError(2, "whatever", code=AMBIGUOUS_CODE)) == "doubt"
    assert _failure(ControlError(2, "node 2 disconnected", code="ENOTCONN")) == "unreachable"
    assert _failure(ControlError(2, "control x timed out", code="ETIMEDOUT")) == "timeout"
    assert _failure(ControlError(2, "databases frozen", code="EAGAIN")) == "frozen"
    # the text says nothing: without a code it is a failure
    assert _failure(ControlError(2, f"{CONFLICT}: sequence number 3")) == "fail"
    assert _failure(ControlError(2, f"{AMBIGUOUS}: not applied")) == "fail"
    assert _failure(ControlError(2, "RuntimeError: databases frozen: recovery")) == "fail"


def test_a_frozen_coordinator_answers_eagain_through_the_control_layer():
    from pyctdb.errors import FrozenError
    from pyctdb.server.db.transactions import _failure
    exc = FrozenError("databases frozen: recovery in progress")
    assert exc.code == "EAGAIN" and isinstance(exc, RuntimeError)
    assert _failure(ControlError(2, exc.message, code=exc.code)) == "frozen"
