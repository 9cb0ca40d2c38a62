"""Two real transports on loopback addresses: how soon a link comes up when a node
starts while the other has been trying to reach it for a while."""

import asyncio
import random
import time

from pyctdb.server import transport as T
from pyctdb.testing.localcluster import _free_port


def make(pnn, nodes, port, events):
    return T.Transport(
        pnn=pnn, address=nodes[pnn], port=port, nodes=nodes,
        hello=lambda: {"pnn": pnn, "address": nodes[pnn], "instance": f"instance{pnn}",
                       "nodes_digest": "d", "agent_version": "0"},
        on_frame=lambda p, f: None,
        on_link_up=lambda p, hello: events.append(("up", pnn, p, time.monotonic())),
        on_link_down=lambda p, reason: events.append(("down", pnn, p, time.monotonic())))


def test_a_node_that_connects_is_connected_back_at_once(monkeypatch):
    # Node 0 has been failing to reach node 1 long enough for its backoff to be seconds
    # (BACKOFF_MAX raised to make that certain). When node 1 starts and connects to node
    # 0, node 0 connects back at once instead of after its backoff: a restarted node is
    # not kept waiting up to BACKOFF_MAX for the others.
    monkeypatch.setattr(T, "BACKOFF_MAX", 30.0)
    subnet = random.randint(20, 250)
    nodes = {0: f"127.0.{subnet}.1", 1: f"127.0.{subnet}.2"}
    port = _free_port(nodes[0])
    events = []

    async def go():
        a = make(0, nodes, port, events)
        await a.start()
        try:
            await asyncio.sleep(1.7)  # its backoff doubles from 0.05 s: 1.6 s by now
            b = make(1, nodes, port, events)
            t0 = time.monotonic()
            await b.start()
            try:
                while not (a.link_up(1) and b.link_up(0)):
                    assert time.monotonic() - t0 < 5.0, events
                    await asyncio.sleep(0.01)
                return time.monotonic() - t0
            finally:
                await b.stop()
        finally:
            await a.stop()
    elapsed = asyncio.run(go())
    assert elapsed < 0.5, (elapsed, events)
