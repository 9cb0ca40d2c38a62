"""addip, delip, reloadips and -n PNN on real agents (local, failover disabled: the
address lists change, nothing touches an interface). The addresses actually moving is
tested in namespaces (test_failover_netns.py)."""

import json
import os

import pytest

from pyctdb.testing.localcluster import LocalCluster

pytestmark = pytest.mark.timeout(120)

PUB = "10.99.1.1/24 eth0\n10.99.1.2/24 eth0,eth1\n"


@pytest.fixture
def c(tmp_path):
    with LocalCluster(3, base_dir=tmp_path, conf_extra="[failover]\ndisabled = true\n",
                      public_addresses=PUB) as c:
        c.start()
        c.wait_healthy(30)
        yield c


def ips(c, pnn=0):
    """address -> {nodes, ...} of `pyctdb ip all --json` on node pnn."""
    r = c.cli(pnn, "ip", "all", "--json")
    assert r.returncode == 0, r.stderr
    return {e["address"]: e for e in json.loads(r.stdout)["ips"]}


def file_of(c, pnn):
    with open(os.path.join(c.config_dir(pnn), "public_addresses")) as f:
        return f.read()


def test_addip_delip_change_the_runtime_list_only(c):
    r = c.cli(0, "addip", "10.99.1.3/25", "eth0,eth2")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    e = ips(c)["10.99.1.3"]
    assert e["nodes"] == [0] and e["prefix"] == 25 and e["interfaces"] == ["eth0", "eth2"]
    assert file_of(c, 0) == PUB  # as CTDB: the file is not written
    r = c.cli(0, "addip", "10.99.1.3/24", "eth0")
    assert r.returncode == 0 and r.stderr == "Node already knows about IP 10.99.1.3\n"
    assert ips(c)["10.99.1.3"]["prefix"] == 25
    # on another node through this one
    assert c.cli(0, "-n", "2", "addip", "10.99.1.3/25", "eth0").returncode == 0
    assert ips(c, 1)["10.99.1.3"]["nodes"] == [0, 2]
    r = c.cli(0, "delip", "10.99.1.1")
    assert (r.returncode, r.stderr) == (0, "")
    assert ips(c)["10.99.1.1"]["nodes"] == [1, 2]
    r = c.cli(0, "delip", "10.99.1.1")
    assert r.returncode == 0 and r.stderr == "Node does not know about IP address 10.99.1.1\n"
    assert c.cli(1, "-n", "2", "delip", "10.99.1.3").returncode == 0
    assert ips(c)["10.99.1.3"]["nodes"] == [0]
    assert file_of(c, 0) == file_of(c, 2) == PUB


@pytest.mark.parametrize("args, message", [
    (["addip", "10.99.1.9", "eth0"], "Invalid IP/Mask 10.99.1.9\n"),
    (["addip", "10.99.1.9/33", "eth0"], "Invalid IP/Mask 10.99.1.9/33\n"),
    (["addip", "nonsense/24", "eth0"], "Invalid IP/Mask nonsense/24\n"),
    (["addip", "10.99.1.9/24", "eth0,eth0"], 'interface "eth0" is listed twice'),
    (["addip", "10.99.1.9/24", "bad:name"], 'invalid interface name "bad:name"'),
    (["addip", "224.0.0.9/24", "eth0"], "is a multicast address"),
    (["delip", "10.99.1"], "Invalid IP address 10.99.1\n"),
    (["-n", "7", "addip", "10.99.1.9/24", "eth0"], "node 7 does not exist"),
    (["-n", "7", "delip", "10.99.1.1"], "node 7 does not exist"),
    (["reloadips", "0,x"], "Invalid node specification '0,x'"),
    (["reloadips", "5"], "node 5 does not exist"),
])
def test_bad_arguments_fail_clearly_and_change_nothing(c, args, message):
    before = ips(c)
    r = c.cli(0, *args)
    assert r.returncode == 1, r
    assert message in r.stderr
    assert ips(c) == before


def test_reloadips_rereads_the_file(c):
    with open(os.path.join(c.config_dir(1), "public_addresses"), "w") as f:
        f.write("10.99.1.2/24 eth1\n10.99.1.4/24 eth0\n")
    # without a node list: this node only (CTDB's default)
    r = c.cli(1, "reloadips", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["nodes"] == [{"pnn": 1, "added": ["10.99.1.4"], "removed": ["10.99.1.1"],
                             "changed": ["10.99.1.2"]}]
    assert res["takeover"] == {"skipped": "failover is disabled"}
    now = ips(c)
    assert now["10.99.1.1"]["nodes"] == [0, 2]
    assert now["10.99.1.4"]["nodes"] == [1]
    assert ips(c, 1)["10.99.1.2"]["interfaces"] == ["eth1"]
    # a runtime addip is undone by reloadips (the file is the truth)
    assert c.cli(2, "addip", "10.99.1.8/24", "eth0").returncode == 0
    assert c.cli(0, "reloadips", "all").returncode == 0
    assert "10.99.1.8" not in ips(c)
    # a broken file: its line is named, that node keeps its list, the others reload
    with open(os.path.join(c.config_dir(0), "public_addresses"), "a") as f:
        f.write("10.99.1.5/24\n")
    with open(os.path.join(c.config_dir(2), "public_addresses"), "w") as f:
        f.write("10.99.1.6/24 eth0\n")
    before0 = ips(c, 0)["10.99.1.1"]["nodes"]
    r = c.cli(1, "reloadips", "0,2")
    assert r.returncode == 1
    assert "Node 0 failed to reload IPs: " in r.stderr
    assert "public_addresses:3: missing interface after" in r.stderr
    assert "Failed to reload IPs on some nodes." in r.stderr
    now = ips(c)
    assert now["10.99.1.1"]["nodes"] == [n for n in before0 if n != 2]
    assert now["10.99.1.6"]["nodes"] == [2]


def test_admin_commands_on_another_node(c):
    assert c.cli(0, "-n", "2", "disable").returncode == 0
    c.wait_for(lambda: all(c.status(p)["nodes"][2]["state"] == "DISABLED"
                           for p in range(3)), 10)
    assert c.cli(1, "-n", "2", "enable").returncode == 0
    c.wait_healthy(10)
    assert c.cli(0, "-n", "1", "ban", "100").returncode == 0
    c.wait_for(lambda: c.status(0)["nodes"][1]["state"] == "BANNED|INACTIVE", 10)
    r = c.cli(0, "-n", "1", "unban", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["pnn"] == 1
    c.wait_healthy(10)
    r = c.cli(0, "-n", "1", "status")
    assert r.returncode == 2 and "node cannot be specified for command status" in r.stderr
    r = c.cli(0, "-n", "3", "stop")
    assert r.returncode == 1 and "node 3 does not exist" in r.stderr
    c.stop(2)
    c.wait_for(lambda: c.status(0)["nodes"][2]["state"].startswith("DISCONNECTED"), 10)
    r = c.cli(0, "-n", "2", "disable")
    assert r.returncode == 1 and "node 2 is not connected" in r.stderr
