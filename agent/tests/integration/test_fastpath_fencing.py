"""Mutual exclusion of the client fast path when a node is fenced: the clients of a
killed or paused agent stop writing records (their gate closes before, or when, another
node may take the records), so no increment acknowledged on that node comes after one
acknowledged elsewhere (issue 11: up to 2.2 s of such writes, 111 acknowledged increments
lost in 9 of 18 kill rounds, before).

Each node runs a client process incrementing one shared record of a volatile database
with ``fetch_locked`` as fast as it can, recording the CLOCK_MONOTONIC time of every
acknowledged increment (one host: one clock for all)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pyctdb.testing.localcluster import LocalCluster

pytestmark = [pytest.mark.timeout(180)]

WORKER = textwrap.dedent("""\
    import sys, time
    from pyctdb.client import attach
    from pyctdb.client.db import DatabaseError
    from pyctdb.client.connection import ApiCallError
    sock, out, stop = sys.argv[1], sys.argv[2], sys.argv[3]
    import os
    db = attach("counter.tdb", socket=sock, timeout=5.0)
    with open(out, "w", buffering=1) as f:
        while not os.path.exists(stop):
            try:
                with db.fetch_locked(b"n") as rec:
                    v = int(rec.value or b"0") + 1
                    rec.store(str(v).encode())
                f.write(f"{time.monotonic():.6f} {v}\\n")
            except (DatabaseError, ApiCallError, OSError) as exc:
                f.write(f"{time.monotonic():.6f} ERR {type(exc).__name__}\\n")
                time.sleep(0.01)
""")


def acks(path):
    out = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2 and parts[1] != "ERR":
                out.append((float(parts[0]), int(parts[1])))
    return out


@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_a_fenced_node_s_clients_stop_before_another_node_writes(tmp_path, fault):
    with LocalCluster(3, base_dir=tmp_path / "c",
                      tunables={"KeepaliveInterval": "0.2", "KeepaliveLimit": "3"}) as c:
        c.start()
        c.wait_healthy(30)
        (tmp_path / "w.py").write_text(WORKER)
        stop = tmp_path / "stop"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        workers = [subprocess.Popen([sys.executable, str(tmp_path / "w.py"), c.socket(p),
                                     str(tmp_path / f"acks-{p}"), str(stop)], env=env)
                   for p in range(3)]
        try:
            c.wait_for(lambda: all(len(acks(tmp_path / f"acks-{p}")) > 20 for p in range(3)),
                       30, what="every client incrementing")
            leader = c.status(0)["leader"]
            victim = next(p for p in range(3) if p != leader)
            t_fault = time.monotonic()
            c.kill(victim, signal.SIGKILL if fault == "kill" else signal.SIGSTOP,
                   wait=fault == "kill")
            others = [p for p in range(3) if p != victim]
            c.wait_for(lambda: any(t > t_fault + 0.2 for t, _ in
                                   acks(tmp_path / f"acks-{others[0]}")), 20,
                       what="the others incrementing again")
            time.sleep(1.0)
        finally:
            stop.write_text("")
            t_end = time.monotonic()  # (after a resume the node rejoins: its writes count)
            if fault == "pause":
                c.resume(victim)
            for w in workers:
                try:
                    w.wait(10)
                except subprocess.TimeoutExpired:
                    w.kill()
        mine = [(t, v) for t, v in acks(tmp_path / f"acks-{victim}") if t_fault < t < t_end]
        theirs = [(t, v) for p in others for t, v in acks(tmp_path / f"acks-{p}")
                  if t_fault < t < t_end]
        assert theirs
        # Lost updates: a value acknowledged twice (two increments of one copy). The
        # fenced node's copy may be lost with it (a killed node's records: documented),
        # so the others may repeat values it acknowledged before it was fenced; but the
        # fenced node must never acknowledge a value the others reached after the fault.
        theirs_values = {v for _, v in theirs}
        repeated = [(round(t - t_fault, 3), v) for t, v in mine if v in theirs_values
                    and t > min(t2 for t2, v2 in theirs if v2 == v)]
        assert not repeated, repeated[:10]
        # and it stops within the keepalive window (0.6 s) and a margin
        late = [round(t - t_fault, 3) for t, _ in mine if t - t_fault > 0.6 + 0.25]
        assert not late, late[:10]
        print(f"{fault}: fenced node's last ack "
              f"{(max(t for t, _ in mine) - t_fault) if mine else None} s after the fault, "
              f"{len(mine)} acks after it, {len(theirs)} elsewhere")
        if fault == "pause":
            c.wait_healthy(30)
