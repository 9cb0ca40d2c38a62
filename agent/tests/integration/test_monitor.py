"""A failing monitor event makes a node UNHEALTHY; success clears it."""

import os

import pytest

from pyctdb.testing.localcluster import LocalCluster

pytestmark = pytest.mark.timeout(120)


def test_monitor_failure_marks_unhealthy_and_recovers(tmp_path):
    c = LocalCluster(3, base_dir=tmp_path, tunables={"MonitorInterval": "1"})
    flag = tmp_path / "service-down"
    for p in range(3):
        d = os.path.join(c.config_dir(p), "events", "legacy")
        os.makedirs(d)
        path = os.path.join(d, "50.service.script")
        with open(path, "w") as f:
            f.write(f"#!/bin/sh\n[ \"$1\" = monitor ] || exit 0\n"
                    f"[ -e {flag}-$(cat {c.config_dir(p)}/../pnn) ] && "
                    "{ echo service down; exit 1; }\nexit 0\n")
        os.chmod(path, 0o755)
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
