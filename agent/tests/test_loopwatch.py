"""LoopWatch: a stall of the event loop is logged while it lasts, with the code that
holds the loop, and again when the loop runs."""

import asyncio
import logging
import time

from pyctdb.server.loopwatch import LoopWatch


def hold_the_loop(seconds):
    time.sleep(seconds)  # a synchronous step that blocks the loop


def test_a_stall_is_reported_with_where_it_is_and_how_long_it_lasted(caplog):
    async def main():
        w = LoopWatch(asyncio.get_running_loop(), threshold=0.3)
        w.start()
        await asyncio.sleep(0.3)
        hold_the_loop(0.8)
        await asyncio.sleep(0.3)
        w.stop()
        return w
    with caplog.at_level(logging.WARNING, logger="pyctdb.server.loopwatch"):
        w = asyncio.run(main())
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 2, msgs
    assert msgs[0].startswith("event loop stalled for 0.") and "hold_the_loop" in msgs[0]
    assert msgs[1].startswith("event loop ran again after a stall of")
    assert w.stalls == 1 and 0.6 < w.longest < 2.0


def test_a_loop_that_keeps_beating_is_not_reported(caplog):
    async def main():
        w = LoopWatch(asyncio.get_running_loop(), threshold=0.3)
        w.start()
        for _ in range(10):
            hold_the_loop(0.05)
            await asyncio.sleep(0.05)
        w.stop()
    with caplog.at_level(logging.WARNING, logger="pyctdb.server.loopwatch"):
        asyncio.run(main())
    assert not caplog.records
