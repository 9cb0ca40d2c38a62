"""reloadnodes (CTDB's ``ctdb reloadnodes``) on real agents: a node added at the end of
the nodes file joins a running cluster without any agent restarting, a node commented out
is forgotten, and a list that breaks CTDB's rules is refused and changes nothing."""

import json
import os

import pytest

from pyctdb.testing.localcluster import LocalCluster

pytestmark = pytest.mark.timeout(150)


def ok(c, pnn, *args):
    return c.cli_ok(pnn, *args)


def write_nodes(c, pnns, text):
    for p in pnns:
        with open(os.path.join(c.config_dir(p), "nodes"), "w") as f:
            f.write(text)


def all_ok(c, pnns, n_ok):
    """Every node of ``pnns`` healthy, seeing ``n_ok`` nodes OK and one leader."""
    def check():
        sts = [c.status(p) for p in pnns]
        return all(st["healthy"] and sum(n["state"] == "OK" for n in st["nodes"]) == n_ok
                   for st in sts) and len({st["leader"] for st in sts}) == 1
    c.wait_for(check, 30, what=f"nodes {list(pnns)} healthy with {n_ok} OK")


def test_add_and_delete_a_node_without_restarts(tmp_path):
    with LocalCluster(4, base_dir=tmp_path) as c:
        three = "".join(c.address(p) + "\n" for p in range(3))
        write_nodes(c, range(3), three)
        c.start([0, 1, 2])
        all_ok(c, range(3), 3)
        pids = {p: c.procs[p].pid for p in range(3)}
        assert ok(c, 0, "reloadnodes") == \
            "No change in nodes file, skipping unnecessary reload\n"

        # add node 3 at the end: its agent starts with the new list, then reloadnodes
        four = three + c.address(3) + "\n"
        write_nodes(c, range(4), four)
        c.start_node(3)
        out = ok(c, 1, "reloadnodes")
        assert out.splitlines()[:4] == ["Node 0 is unchanged", "Node 1 is unchanged",
                                        "Node 2 is unchanged", "Node 3 is NEW"]
        assert sorted(out.splitlines()[4:]) == [f"Reloading nodes file on node {p}"
                                                for p in range(3)]
        c.wait_healthy(30, pnns=[0, 1, 2, 3])
        st = c.status(3)
        assert st["num_nodes"] == 4 and st["vnnmap"] == [0, 1, 2, 3]
        assert {p: c.procs[p].pid for p in range(3)} == pids  # nobody restarted

        # deleting a node that is still connected is refused; nothing changes
        write_nodes(c, range(4), three + "#" + c.address(3) + "\n")
        r = c.cli(0, "reloadnodes")
        assert r.returncode == 1 and "node 3 is still connected" in r.stderr
        assert c.status(0)["num_deleted"] == 0

        # stop it, then delete it
        c.stop(3)
        c.wait_for(lambda: 3 not in c.status(0)["vnnmap"], 30, what="node 3 out")
        out = ok(c, 2, "reloadnodes")
        assert "Node 3 is DELETED" in out
        all_ok(c, range(3), 3)
        for p in range(3):
            st = c.status(p)
            assert st["num_deleted"] == 1 and st["vnnmap"] == [0, 1, 2]
        assert "Number of nodes:4 (including 1 deleted nodes)" in ok(c, 0, "status")
        assert {p: c.procs[p].pid for p in range(3)} == pids


def test_bad_new_lists_are_refused(tmp_path):
    with LocalCluster.healthy_cluster(3, tmp_path) as c:
        before = c.status(0)
        # an address changed
        moved = c.address(0) + "\n127.0.0.99\n" + c.address(2) + "\n"
        write_nodes(c, range(3), moved)
        r = c.cli(0, "reloadnodes")
        assert r.returncode == 1
        assert f"node 1 changed its address from {c.address(1)} to 127.0.0.99" in r.stderr
        # a node removed instead of commented out
        write_nodes(c, range(3), c.address(0) + "\n" + c.address(1) + "\n")
        r = c.cli(0, "reloadnodes")
        assert r.returncode == 1 and "commenting it out" in r.stderr
        # the files differ between nodes: the node that differs refuses
        good = "".join(c.address(p) + "\n" for p in range(3))
        write_nodes(c, [0, 1], good + "127.0.0.98\n")
        write_nodes(c, [2], good)
        r = c.cli(0, "--json", "reloadnodes")
        res = json.loads(r.stdout)
        assert r.returncode == 1 and list(res["failed"]) == ["2"]
        assert "differs from node 0's" in res["failed"]["2"]
        write_nodes(c, range(3), good)
        assert c.status(2)["num_nodes"] == before["num_nodes"]
