"""ctdb_status's transport_authenticated against real agents (pyctdb.testing.localcluster):
a cluster with a transport key (LocalCluster's default) and one without."""

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


@pytest.mark.parametrize("keyed", [True, False], ids=["with-key", "without-key"])
def test_transport_authenticated(tmp_path, helpers, keyed):
    kwargs = {} if keyed else {"key": None}
    with LocalCluster(2, base_dir=tmp_path, **kwargs) as c:
        c.start()
        c.wait_healthy(30)
        for pnn in (0, 1):
            rc, r = helpers.run_module("ctdb_status", {
                "socket": c.socket(pnn), "wait_for": "healthy", "expected_nodes": 2,
                "timeout": 30, "config_dir": c.config_dir(pnn)})
            assert rc == 0, r
            assert r["transport_authenticated"] is keyed
            assert r["status"]["transport"] == {"authenticated": keyed}
            assert os.path.exists(os.path.join(c.config_dir(pnn), "cluster.key")) is keyed
