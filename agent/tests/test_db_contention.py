"""Migration contention is a typed error (pyctdb.errors.RecordBusy: EBUSY, RecordMoved:
EAGAIN), answered by the control layer with its code and no traceback; a requester
retries it and ends with that code."""

import asyncio
import logging

import pytest

from pyctdb.errors import PyctdbError, RecordBusy, RecordMoved
from pyctdb.rules import records as L
from pyctdb.server.controls import Controls
from pyctdb.server.db.wire import b64, handover
from test_db_chunk import make_databases  # noqa: E402 (same directory)

DB = "c.tdb"


def key_with_lmaster(lm, vnnmap):
    return next(k for k in (b"k%d" % i for i in range(1000)) if L.lmaster(k, vnnmap) == lm)


def serve(dbs, op, args):
    """Serve control ``op`` from node 0 on node 1 (dbs) through the real control layer:
    the REPLY it sends."""
    replies = []
    ctl = Controls(1, "test", send=lambda pnn, t, p: replies.append(p) or True,
                   is_connected=lambda pnn: True)
    ctl.control_handlers.update(dbs.cluster.control_handlers)

    async def go():
        ctl.on_control(0, {"req_id": 7, "op": op, "args": args})
        while not replies:
            await asyncio.sleep(0.01)
    return go, replies


def test_contention_errors_are_typed_and_answered_by_code_without_traceback(
        tmp_path, caplog):
    assert issubclass(RecordBusy, PyctdbError) and RecordBusy.code == "EBUSY"
    assert issubclass(RecordMoved, PyctdbError) and RecordMoved.code == "EAGAIN"
    with pytest.raises(RecordMoved):
        handover(0, 1, must_hold=True)(L.Record(1, 2, 0, b"x"))
    dbs = make_databases(tmp_path)
    c = dbs.cluster
    c.vnnmap, c.members = [0, 1], [0, 1]
    held = key_with_lmaster(1, c.vnnmap)
    other = key_with_lmaster(0, c.vnnmap)

    async def go():
        await dbs.ensure(DB, False)
        st = dbs.stores[False]
        await st.store(DB, held, L.Record(3, 1, 0, b"mine"))
        await dbs.migration.client_locks.acquire((DB, held))  # a client holds it here
        answers = {}
        for what, op, key in (("locked", "db_give", held), ("moved", "db_give", other),
                              ("not lmaster", "db_migrate", other)):
            run, replies = serve(dbs, op, {"db": DB, "key": b64(key), "to": 0})
            await run()
            answers[what] = replies[0]
        return answers
    with caplog.at_level(logging.DEBUG, logger="pyctdb"):
        try:
            answers = asyncio.run(go())
        finally:
            dbs.close()
    assert answers["locked"]["ok"] is False and answers["locked"]["code"] == "EBUSY"
    assert "locked on its dmaster" in answers["locked"]["error"]
    assert answers["moved"]["code"] == "EAGAIN"          # not the dmaster of it
    assert answers["not lmaster"]["code"] == "EAGAIN"    # the vnn map changed
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert "Traceback" not in caplog.text
