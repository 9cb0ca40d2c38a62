"""ctdb_status against real pyctdbd agents (pyctdb.testing.localcluster): three agents on
127.0.X.{1,2,3} sharing a cluster lock file, the module run as Ansible runs it."""

import os
import sys

import pytest

try:
    from pyctdb.testing.localcluster import LocalCluster
except ImportError:  # the agent is not installed into this Python: use the checkout
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "agent"))
    try:
        from pyctdb.testing.localcluster import LocalCluster
    except ImportError:
        LocalCluster = None

pytestmark = pytest.mark.skipif(LocalCluster is None,
                                reason="pyctdb.testing.localcluster is not available")


def test_live_cluster(tmp_path, helpers):
    with LocalCluster(3, base_dir=tmp_path) as c:
        c.start()
        c.wait_healthy(30)

        rc, r = helpers.run_module("ctdb_status", {
            "socket": c.socket(0), "wait_for": "healthy", "expected_nodes": 3,
            "timeout": 30, "config_dir": c.config_dir(0)})
        assert rc == 0, r
        assert r["healthy"] is True and r["joined"] is True
        assert r["ok_nodes"] == 3 and r["num_nodes"] == 3
        assert [n["address"] for n in r["nodes"]] == [c.address(i) for i in range(3)]
        assert [n["state"] for n in r["nodes"]] == ["OK"] * 3
        leader = r["leader"]
        assert leader in (0, 1, 2)
        assert {n["leader"] for n in r["nodes"]} == {leader}
        assert r["this_node"]["pnn"] == 0 and r["pnn"] == 0
        assert r["cluster_lock"]["configured"] is True
        assert r["recovery_mode"] == "NORMAL"
        # Every node agrees on the leader.
        for pnn in (1, 2):
            rc, other = helpers.run_module("ctdb_status", {"socket": c.socket(pnn)})
            assert rc == 0, other
            assert other["pnn"] == pnn and other["leader"] == leader

        c.kill(1)
        rc, r = helpers.run_module("ctdb_status", {
            "socket": c.socket(0), "wait_for": "healthy", "expected_nodes": 3,
            "timeout": 5, "delay": 0.2, "config_dir": c.config_dir(0)})
        assert rc == 1, r
        assert "timed out after 5s waiting for the cluster to become healthy" in r["msg"]
        assert "node 1 (%s) is DISCONNECTED" % c.address(1) in r["msg"]
        assert r["nodes"][1]["state"].startswith("DISCONNECTED")

        # The survivors re-form: node 0 has joined (again) within a while.
        rc, r = helpers.run_module("ctdb_status", {
            "socket": c.socket(0), "wait_for": "joined", "timeout": 30})
        assert rc == 0, r
        assert r["leader"] in (0, 2)

        # The dead agent's socket is left behind: the module explains, with its log.
        rc, r = helpers.run_module("ctdb_status", {
            "socket": c.socket(1), "config_dir": c.config_dir(1)})
        assert rc == 1
        assert c.socket(1) in r["msg"]
        if os.path.exists(c.socket(1)):
            assert "refuses connections" in r["msg"]
        else:
            assert "does not exist" in r["msg"]
        assert r["log_lines"], r
        assert "last log lines (%s)" % c.log_file(1) in r["msg"]
