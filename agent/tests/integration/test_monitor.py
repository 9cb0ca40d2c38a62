"""A failing monitor event makes a node UNHEALTHY; success clears it."""

import os

import pytest

from pyctdb.testing.localcluster import LocalCluster

pytestmark = pytest.mark.timeout(120)


def test_monitor_failure_marks_unhealthy_and_recovers(tmp_path):
    c = LocalCluster(3, base_dir=tmp_path, tunables={"MonitorInterval": "1"})
    flag = tmp_path / "service-down"
    for p in range(3):
        c.event_script(p, "50.service", f"[ \"$1\" = monitor ] || exit 0\n"
                       f"[ -e {flag}-$(cat {c.config_dir(p)}/../pnn) ] && "
                       "{ echo service down; exit 1; }\nexit 0\n")
        with open(os.path.join(c.node_dir(p), "pnn"), "w") as f:
            f.write(str(p))
    with c:
        c.start()
        c.wait_healthy(30)
        open(f"{flag}-1", "w").close()
        c.wait_for(lambda: c.status(0)["nodes"][1]["state"] == "UNHEALTHY", 10)
        r = c.cli(1, "event", "status", "legacy", "monitor")
        assert r.returncode == 1 and "50.service" in r.stdout and "ERROR" in r.stdout
        assert "service down" in r.stdout
        assert c.cli(0, "nodestatus", "1").returncode == 2
        os.unlink(f"{flag}-1")
        c.wait_healthy(10)
        assert c.cli(1, "event", "status").returncode == 0
        # disable the script: it no longer runs
        assert c.cli(1, "event", "script", "disable", "legacy", "50.service").returncode == 0
        out = c.cli(1, "event", "script", "list").stdout
        assert "  50.service" in out
        r = c.cli(1, "event", "run", "monitor")
        assert r.returncode == 0


def _event_logger(c, p, log):
    c.event_script(p, "90.log", f"[ \"$1\" = monitor ] || echo \"$@\" >> {log}\nexit 0\n")


def test_recovery_runs_startrecovery_and_recovered_on_every_member(tmp_path):
    c = LocalCluster(3, base_dir=tmp_path)
    logs = [tmp_path / f"events-{p}" for p in range(3)]
    for p in range(3):
        _event_logger(c, p, logs[p])
    with c:
        c.start()
        c.wait_healthy(30)

        def events(p):
            return logs[p].read_text().split("\n") if logs[p].exists() else []
        c.wait_for(lambda: all("recovered" in events(p) for p in range(3)), 10,
                   what="recovered on every node")
        for p in range(3):
            ev = events(p)
            assert ev[:3] == ["init", "setup", "startup"]  # (CTDB's order)
            assert "startrecovery" in ev
            assert ev.index("startrecovery") < len(ev) - 1 - ev[::-1].index("recovered")
        # a node leaves: the survivors recover again
        before = [events(p).count("recovered") for p in range(3)]
        c.kill(2)
        c.wait_for(lambda: all(events(p).count("recovered") > before[p] for p in (0, 1)), 10,
                   what="a second recovery on the survivors")
