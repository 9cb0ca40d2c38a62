"""ctdb_ip and ctdb_node against real pyctdbd agents, run as Ansible runs them.

ctdb_node and the address lists of ctdb_ip: three local agents (failover disabled, so no
interface is touched). Addresses really hosted and moved (ctdb_ip pnn): three agents in
network namespaces (needs root)."""

import os
import sys

import pytest

AGENT = os.path.join(os.path.dirname(__file__), "..", "..", "agent")
if not any(os.path.exists(os.path.join(d, "pyctdb", "testing")) for d in sys.path if d):
    sys.path.insert(0, AGENT)  # the agent is not installed into this Python: the checkout
LocalCluster = pytest.importorskip("pyctdb.testing.localcluster").LocalCluster
NetnsLab = pytest.importorskip("pyctdb.testing.netns").NetnsLab

pytestmark = pytest.mark.timeout(240)

PUB = "10.98.1.1/24 eth0\n"


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    with LocalCluster(3, base_dir=tmp_path_factory.mktemp("c"), public_addresses=PUB,
                      conf_extra="[failover]\ndisabled = true\n") as c:
        c.start()
        c.wait_healthy(30)
        yield c


def mod(helpers, c, pnn, name, args, check=False, diff=False):
    args = dict(args, socket=c.socket(pnn), config_dir=c.config_dir(pnn))
    if check:
        args["_ansible_check_mode"] = True
    if diff:
        args["_ansible_diff"] = True
    return helpers.run_module(name, args)


def nodes_listing(c, addr, pnn=0):
    for e in c.call(pnn, "ip", all=True)["ips"]:
        if e["address"] == addr:
            return e["nodes"]
    return []


def test_ctdb_ip_list_present_absent(local, helpers):
    c = local
    a = {"address": "10.98.1.2", "prefix": 24, "interfaces": ["eth0", "eth1"]}
    rc, r = mod(helpers, c, 1, "ctdb_ip", a, check=True, diff=True)
    assert rc == 0 and r["changed"] is True, r
    assert r["actions"] == ["addip 10.98.1.2/24 eth0,eth1"]
    assert r["diff"]["before"]["state"] == "absent"
    assert r["diff"]["after"] == {"state": "present", "prefix": 24,
                                  "interfaces": ["eth0", "eth1"], "pnn": -1}
    assert nodes_listing(c, "10.98.1.2") == []  # check mode changed nothing
    rc, r = mod(helpers, c, 1, "ctdb_ip", a, diff=True)
    assert rc == 0 and r["changed"] is True, r
    assert r["state"] == "present" and r["nodes"] == [1] and r["this_node"] == 1
    assert nodes_listing(c, "10.98.1.2") == [1]
    rc, r = mod(helpers, c, 1, "ctdb_ip", a)
    assert rc == 0 and r["changed"] is False and r["actions"] == [], r
    # another prefix: removed and added again
    rc, r = mod(helpers, c, 1, "ctdb_ip", dict(a, prefix=25), diff=True)
    assert rc == 0 and r["changed"] is True, r
    assert r["actions"] == ["delip 10.98.1.2", "addip 10.98.1.2/25 eth0,eth1"]
    assert r["diff"]["before"]["prefix"] == 24 and r["diff"]["after"]["prefix"] == 25
    assert c.call(1, "ip")["ips"][1]["prefix"] == 25
    # without prefix/interfaces an existing entry is just checked
    rc, r = mod(helpers, c, 1, "ctdb_ip", {"address": "10.98.1.2"})
    assert rc == 0 and r["changed"] is False, r
    # the file was not written (runtime only, as CTDB's addip)
    with open(os.path.join(c.config_dir(1), "public_addresses")) as f:
        assert f.read() == PUB
    rc, r = mod(helpers, c, 1, "ctdb_ip", {"address": "10.98.1.2", "state": "absent"},
                check=True)
    assert rc == 0 and r["changed"] is True and nodes_listing(c, "10.98.1.2") == [1]
    rc, r = mod(helpers, c, 1, "ctdb_ip", {"address": "10.98.1.2", "state": "absent"})
    assert rc == 0 and r["changed"] is True and r["state"] == "absent"
    assert nodes_listing(c, "10.98.1.2") == []
    rc, r = mod(helpers, c, 1, "ctdb_ip", {"address": "10.98.1.2", "state": "absent"})
    assert rc == 0 and r["changed"] is False


@pytest.mark.parametrize("args, message", [
    ({"address": "10.98.1.300", "prefix": 24, "interfaces": ["eth0"]},
     "address: invalid IP address '10.98.1.300'"),
    ({"address": "10.98.1.3/24", "prefix": 24, "interfaces": ["eth0"]},
     "address: invalid IP address '10.98.1.3/24'"),
    ({"address": "10.98.1.3", "prefix": 33, "interfaces": ["eth0"]},
     'invalid mask bits "33" for 10.98.1.3 (expected 1 to 32)'),
    ({"address": "10.98.1.3", "prefix": 24, "interfaces": ["eth:0"]},
     'invalid interface name "eth:0"'),
    ({"address": "10.98.1.3", "prefix": 24}, "prefix and interfaces are needed"),
    ({"address": "10.98.1.3", "prefix": 24, "interfaces": ["eth0"], "pnn": 7},
     "pnn: node 7 does not exist (nodes: 0, 1, 2)"),
    ({"address": "10.98.1.3", "prefix": 24, "interfaces": ["eth0"], "pnn": 2},
     "node 2 cannot host 10.98.1.3: it is not in that node's public addresses "
     "(nodes listing it: 0)"),
    ({"address": "10.98.1.1", "state": "absent", "pnn": 1}, "cannot be used with"),
    ({"address": "10.98.1.3", "prefix": "x", "interfaces": ["eth0"]}, "prefix"),
])
def test_ctdb_ip_bad_parameters_change_nothing(local, helpers, args, message):
    c = local
    before = c.call(0, "ip", all=True)
    rc, r = mod(helpers, c, 0, "ctdb_ip", args)
    assert rc == 1 and r["failed"] and r.get("changed", False) is False, r
    assert message in r["msg"]
    assert c.call(0, "ip", all=True) == before


def test_ctdb_node_states(local, helpers):
    c = local
    rc, r = mod(helpers, c, 0, "ctdb_node", {"state": "disabled", "pnn": 2}, check=True,
                diff=True)
    assert rc == 0 and r["changed"] is True and r["actions"] == ["disable"], r
    assert r["diff"]["before"]["state"] == "enabled"
    assert r["diff"]["after"]["state"] == "disabled"
    assert c.status(2)["nodes"][2]["state"] == "OK"
    rc, r = mod(helpers, c, 0, "ctdb_node", {"state": "disabled", "pnn": 2}, diff=True)
    assert rc == 0 and r["changed"] is True, r
    assert r["state"] == "disabled" and r["node_state"] == "DISABLED" and r["flags"] == 4
    c.wait_for(lambda: c.status(2)["nodes"][2]["state"] == "DISABLED", 5)
    rc, r = mod(helpers, c, 1, "ctdb_node", {"state": "disabled", "pnn": 2})
    assert rc == 0 and r["changed"] is False, r
    # disabled -> stopped: stop first, then enable (never active in between)
    rc, r = mod(helpers, c, 2, "ctdb_node", {"state": "stopped"})
    assert rc == 0 and r["actions"] == ["stop", "enable"], r
    assert r["node_state"] == "STOPPED|INACTIVE" and r["pnn"] == 2
    rc, r = mod(helpers, c, 0, "ctdb_node", {"state": "banned", "ban_time": 300, "pnn": 2})
    assert rc == 0 and r["actions"] == ["ban", "continue"], r
    assert r["state"] == "banned"
    rc, r = mod(helpers, c, 0, "ctdb_node", {"state": "banned", "ban_time": 300, "pnn": 2})
    assert rc == 0 and r["changed"] is False
    rc, r = mod(helpers, c, 2, "ctdb_node", {"state": "enabled"}, diff=True)
    assert rc == 0 and r["actions"] == ["unban"], r
    assert r["node_state"] == "OK" and r["diff"]["before"]["node_state"] == "BANNED|INACTIVE"
    c.wait_healthy(15)
    rc, r = mod(helpers, c, 2, "ctdb_node", {"state": "enabled"})
    assert rc == 0 and r["changed"] is False


@pytest.mark.parametrize("args, message", [
    ({"state": "banned"}, "state is banned but all of the following are missing: ban_time"),
    ({"state": "banned", "ban_time": 0}, "ban_time must be a positive number"),
    ({"state": "asleep"}, "value of state must be one of"),
    ({"state": "disabled", "pnn": 9}, "pnn: node 9 does not exist (nodes: 0, 1, 2)"),
])
def test_ctdb_node_bad_parameters_change_nothing(local, helpers, args, message):
    c = local
    rc, r = mod(helpers, c, 0, "ctdb_node", args)
    assert rc == 1 and r.get("changed", False) is False, r
    assert message in r["msg"]
    assert c.healthy()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")
def test_ctdb_ip_hosts_and_moves_for_real(tmp_path, helpers):
    lab = NetnsLab(3).create()
    try:
        pub = lab.public_address(0) + "/24 eth0\n"
        with LocalCluster(3, base_dir=tmp_path, lab=lab, public_addresses=pub,
                          tunables={"KeepaliveInterval": "0.2"}) as c:
            c.start()
            c.wait_healthy(30)
            new = lab.public_address(5)
            a = {"address": new, "prefix": 24, "interfaces": ["eth0"]}
            for p in (0, 1, 2):
                rc, r = mod(helpers, c, p, "ctdb_ip", a)
                assert rc == 0 and r["changed"], r
            assert r["nodes"] == [0, 1, 2] and r["pnn"] in (0, 1, 2)
            holder = r["pnn"]
            assert lab.addresses(holder).count(new) == 1
            target = (holder + 1) % 3
            rc, r = mod(helpers, c, 0, "ctdb_ip", dict(a, pnn=target), check=True, diff=True)
            assert rc == 0 and r["actions"] == ["moveip %s to node %d" % (new, target)], r
            assert r["diff"]["before"]["pnn"] == holder and r["diff"]["after"]["pnn"] == target
            assert new in lab.addresses(holder)
            rc, r = mod(helpers, c, 0, "ctdb_ip", dict(a, pnn=target))
            assert rc == 0 and r["changed"] and r["pnn"] == target, r
            assert new in lab.addresses(target) and new not in lab.addresses(holder)
            rc, r = mod(helpers, c, 1, "ctdb_ip", dict(a, pnn=target))
            assert rc == 0 and not r["changed"], r
            # removed from the hosting node: it moves to one that still lists it
            rc, r = mod(helpers, c, target, "ctdb_ip", {"address": new, "state": "absent"})
            assert rc == 0 and r["changed"], r
            c.wait_for(lambda: sum(new in lab.addresses(i) for i in range(3)) == 1
                       and new not in lab.addresses(target), 10)
            # the status module shows who hosts what
            rc, r = mod(helpers, c, 0, "ctdb_status", {})
            assert rc == 0, r
            pa = r["public_addresses"]
            assert sorted(pa) == sorted([lab.public_address(0), new])
            assert pa[new]["nodes"] == sorted({0, 1, 2} - {target})
            assert new in lab.addresses(pa[new]["pnn"])
            assert pa[lab.public_address(0)]["nodes"] == [0, 1, 2]
            # and so does the status playbook
            p = status_playbook(helpers, c, 2)
            assert p.returncode == 0, p.stdout + p.stderr
            assert ("public address %s  on node %d  (nodes that can host it: %s)" % (
                new, pa[new]["pnn"], ",".join(map(str, pa[new]["nodes"])))) in p.stdout
    finally:
        lab.destroy()


def status_playbook(helpers, c, pnn=0, *extra):
    import subprocess
    return subprocess.run(
        [helpers.ansible_bin("ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", "ansible_python_interpreter=" + sys.executable,
         "-e", "pyctdb_cluster_group=all", "-e", "pyctdb_socket=" + c.socket(pnn),
         "-e", "pyctdb_config_dir=" + c.config_dir(pnn),
         os.path.join(helpers.REPO, "playbooks", "status.yml")] + list(extra),
        cwd=helpers.REPO, env=helpers.ansible_env(), capture_output=True, text=True,
        timeout=120)


def test_status_playbook(local, helpers):
    c = local
    assert c.cli(2, "addip", "10.98.1.9/24", "eth0").returncode == 0
    p = status_playbook(helpers, c, 1)
    assert p.returncode == 0, p.stdout + p.stderr
    out = [line.strip()[2:].strip("'") for line in p.stdout.splitlines()
           if line.strip().startswith("- ")]
    leader = c.status(1)["leader"]
    assert ("cluster: 3 nodes, 3 OK, leader %d, generation %d, recovery NORMAL: healthy"
            % (leader, c.status(1)["generation"])) in out
    for i in range(3):
        line = "node %d  %-15s  OK%s%s" % (i, c.address(i), "  leader" if i == leader else "",
                                           "  (asked)" if i == 1 else "")
        assert line in out, out
    # failover is disabled here: listed, hosted by nobody
    assert "public address 10.98.1.1  not hosted  (nodes that can host it: 0,1,2)" in out
    assert "public address 10.98.1.9  not hosted  (nodes that can host it: 2)" in out
    assert "changed=0" in p.stdout and "failed=0" in p.stdout
    assert c.cli(2, "delip", "10.98.1.9").returncode == 0
