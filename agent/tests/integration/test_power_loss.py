"""Whole-cluster power loss: every agent killed at once (SIGKILL, their guards too)
under a load of persistent transactions, then started again: no acknowledged
transaction is lost, on any node."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pyctdb.client import attach
from pyctdb.testing.localcluster import LocalCluster

pytestmark = [pytest.mark.timeout(180)]

WRITER = textwrap.dedent("""\
    import os, sys
    from pyctdb.client import attach
    sock, out, tag = sys.argv[1], sys.argv[2], sys.argv[3]
    db = attach("power.tdb", persistent=True, socket=sock, timeout=5.0)
    i = 0
    with open(out, "w", buffering=1) as f:
        while True:
            key = f"{tag}-{i}"
            try:
                with db.transaction() as t:
                    t.store(key, key)
                f.write(key + "\\n")  # acknowledged
            except Exception as exc:
                f.write("ERR " + type(exc).__name__ + "\\n")
                break
            i += 1
""")


def test_every_agent_killed_at_once_loses_no_acknowledged_transaction(tmp_path):
    with LocalCluster(3, base_dir=tmp_path / "c") as c:
        c.start()
        c.wait_healthy(30)
        attach("power.tdb", persistent=True, socket=c.socket(0)).close()
        (tmp_path / "w.py").write_text(WRITER)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        writers = [subprocess.Popen([sys.executable, str(tmp_path / "w.py"), c.socket(p),
                                     str(tmp_path / f"acked-{p}"), f"n{p}"], env=env)
                   for p in range(3)]
        try:
            c.wait_for(lambda: all(len((tmp_path / f"acked-{p}").read_text().split()) > 30
                                   for p in range(3) if (tmp_path / f"acked-{p}").exists())
                       and all((tmp_path / f"acked-{p}").exists() for p in range(3)), 60,
                       what="every writer committing")
            guards = [c.guard_pid(p) for p in range(3)]
            for g in guards:  # (the power goes: no guard survives either)
                if g:
                    os.kill(g, signal.SIGKILL)
            for p in range(3):
                c.kill(p, wait=False)
            for p in range(3):
                c.procs[p].wait(10)
        finally:
            for w in writers:
                try:
                    w.wait(20)
                except subprocess.TimeoutExpired:
                    w.kill()
                    w.wait()
        acked = []
        for p in range(3):
            acked += [x for x in (tmp_path / f"acked-{p}").read_text().split("\n")
                      if x and not x.startswith("ERR")]
        assert len(acked) > 90
        c.start()
        c.wait_healthy(60)
        for p in range(3):
            db = attach("power.tdb", persistent=True, socket=c.socket(p))
            missing = [k for k in acked if db.fetch(k) != k.encode()]
            db.close()
            assert not missing, (p, len(missing), missing[:5])
        print(f"{len(acked)} acknowledged transactions, all on every node after the restart")
