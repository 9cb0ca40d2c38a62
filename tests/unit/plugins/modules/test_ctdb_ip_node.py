"""ctdb_ip and ctdb_node run for real (a subprocess, as Ansible runs them) against a
scripted agent on a real Unix socket: what they send in check mode, half-way failures,
timeouts, and parameters refused before the agent is asked anything. Against real agents:
tests/integration/test_ctdb_ip_node_live.py."""

import os

ADDR = "10.89.6.100"


class Cluster:
    """A scripted agent's state: the public addresses and node flags it reports."""

    def __init__(self, agent, helpers):
        self.agent = agent
        self.status = helpers.healthy_status()
        self.ips = {}  # address -> {pnn, nodes, prefix, interfaces}
        self.fail = {}  # command -> (code, message)
        self.move_takes_effect = True
        agent.handler = self.handle

    def handle(self, req):
        a, cmd, args = self.agent, req["command"], req.get("args") or {}
        if cmd in self.fail:
            return a.error(req, *self.fail[cmd])
        if cmd == "pnn":
            return a.ok(req, {"pnn": 0})
        if cmd == "status":
            return a.ok(req, self.status)
        if cmd == "ip":
            return a.ok(req, {"pnn": 0, "all": True, "ips": [
                dict(e, address=k) for k, e in sorted(self.ips.items())]})
        if cmd == "addip":
            changed = args["address"] not in self.ips
            if changed and not args.get("check"):
                self.ips[args["address"]] = {"pnn": 0, "nodes": [0], "prefix": args["prefix"],
                                             "interfaces": args["interfaces"]}
            return a.ok(req, {"address": args["address"], "changed": changed})
        if cmd == "delip":
            changed = args["address"] in self.ips
            if changed and not args.get("check"):
                del self.ips[args["address"]]
            return a.ok(req, {"address": args["address"], "changed": changed})
        if cmd == "moveip":
            if self.move_takes_effect:
                self.ips[args["address"]]["pnn"] = args["pnn"]
            return a.ok(req, {"moves": []})
        if cmd in ("disable", "enable", "stop", "continue", "ban", "unban"):
            return a.ok(req, {"pnn": args.get("pnn", 0)})
        return a.default_handler(req)

    def commands(self):
        return [(q["command"], q.get("args") or {}) for q in self.agent.requests]


def test_ip_check_mode_only_asks_the_agent_to_validate(fake_agent, helpers):
    c = Cluster(fake_agent(), helpers)
    rc, r = helpers.run_module("ctdb_ip", {
        "socket": c.agent.path, "address": ADDR, "prefix": 24, "interfaces": ["eth1"],
        "_ansible_check_mode": True, "_ansible_diff": True})
    assert rc == 0 and r["changed"] is True, r
    assert r["actions"] == ["addip %s/24 eth1" % ADDR]
    assert r["diff"]["before"] == {"state": "absent", "prefix": None, "interfaces": None,
                                   "pnn": -1}
    changing = [(cmd, args) for cmd, args in c.commands() if cmd in ("addip", "delip")]
    assert changing == [("addip", {"address": ADDR, "prefix": 24, "interfaces": ["eth1"],
                                   "check": True})]
    assert c.ips == {}


def test_ip_address_is_normalized(fake_agent, helpers):
    c = Cluster(fake_agent(), helpers)
    c.ips["fd00::1"] = {"pnn": 0, "nodes": [0], "prefix": 64, "interfaces": ["eth1"]}
    rc, r = helpers.run_module("ctdb_ip", {
        "socket": c.agent.path, "address": "FD00:0::1", "prefix": 64,
        "interfaces": ["eth1"]})
    assert rc == 0 and r["changed"] is False and r["address"] == "fd00::1", r


def test_ip_failure_half_way_reports_what_was_done(fake_agent, helpers):
    c = Cluster(fake_agent(), helpers)
    c.ips[ADDR] = {"pnn": 1, "nodes": [1], "prefix": 24, "interfaces": ["eth1"]}
    c.fail["moveip"] = ("EINVAL", "failover is disabled ([failover] disabled = true)")
    rc, r = helpers.run_module("ctdb_ip", {
        "socket": c.agent.path, "address": ADDR, "prefix": 24, "interfaces": ["eth1"],
        "pnn": 0})
    assert rc == 1 and r["failed"], r
    assert r["changed"] is True and r["actions"] == ["addip %s/24 eth1" % ADDR]
    assert "failover is disabled" in r["msg"] and r["code"] == "EINVAL"


def test_ip_move_that_does_not_happen_times_out(fake_agent, helpers):
    c = Cluster(fake_agent(), helpers)
    c.ips[ADDR] = {"pnn": 1, "nodes": [0, 1], "prefix": 24, "interfaces": ["eth1"]}
    c.move_takes_effect = False
    rc, r = helpers.run_module("ctdb_ip", {
        "socket": c.agent.path, "address": ADDR, "pnn": 0, "timeout": 1})
    assert rc == 1 and r["changed"] is True, r
    assert ("timed out after 1s waiting for %s to be hosted by node 0 (it is on node 1)"
            % ADDR) in r["msg"]


def test_ip_refused_before_the_agent_is_asked(sock_dir, helpers):
    sock = os.path.join(sock_dir, "none.sock")
    rc, r = helpers.run_module("ctdb_ip", {"socket": sock, "address": "10.0.0.1/24"})
    assert rc == 1 and "address: invalid IP address '10.0.0.1/24'" in r["msg"]
    rc, r = helpers.run_module("ctdb_ip", {"socket": sock, "address": "10.0.0.1",
                                           "prefix": 24, "interfaces": "eth0",
                                           "bogus": 1})
    assert rc == 1 and "Unsupported parameters" in r["msg"] and "bogus" in r["msg"]


def test_ip_without_agent_explains(sock_dir, helpers):
    sock = os.path.join(sock_dir, "none.sock")
    rc, r = helpers.run_module("ctdb_ip", {"socket": sock, "address": ADDR,
                                           "config_dir": sock_dir})
    assert rc == 1 and r["changed"] is False
    assert "socket %s does not exist" % sock in r["msg"] and r["code"] == "ENOENT"


def test_node_check_mode_and_order(fake_agent, helpers):
    c = Cluster(fake_agent(), helpers)
    n1 = c.status["nodes"][1]
    n1.update(flags=0x04 | 0x20, state="DISABLED|STOPPED|INACTIVE")
    rc, r = helpers.run_module("ctdb_node", {
        "socket": c.agent.path, "pnn": 1, "state": "banned", "ban_time": 60,
        "_ansible_check_mode": True, "_ansible_diff": True})
    assert rc == 0 and r["changed"] is True, r
    # the new flag first, the old ones cleared after
    assert r["actions"] == ["ban", "enable", "continue"]
    assert r["diff"]["before"]["state"] == "disabled,stopped"
    assert r["diff"]["after"]["state"] == "banned"
    assert [cmd for cmd, _ in c.commands()] == ["status"]


def test_node_change_not_seen_times_out(fake_agent, helpers):
    c = Cluster(fake_agent(), helpers)
    rc, r = helpers.run_module("ctdb_node", {
        "socket": c.agent.path, "pnn": 2, "state": "stopped", "timeout": 1})
    assert rc == 1 and r["changed"] is True, r
    assert "timed out after 1s waiting for node 2 to be stopped (it is OK)" in r["msg"]
    assert ("stop", {"pnn": 2}) in c.commands()


def test_node_disconnected_is_refused(fake_agent, helpers):
    c = Cluster(fake_agent(), helpers)
    c.status = helpers.degraded_status()
    rc, r = helpers.run_module("ctdb_node", {"socket": c.agent.path, "pnn": 2,
                                             "state": "disabled"})
    assert rc == 1 and r["changed"] is False
    assert ("node 2 is not connected (DISCONNECTED|INACTIVE): its state cannot be changed"
            in r["msg"])
    assert [cmd for cmd, _ in c.commands()] == ["status"]


def test_node_agent_error(fake_agent, helpers):
    c = Cluster(fake_agent(), helpers)
    c.fail["disable"] = ("ENOTCONN", "node 1 is not connected")
    rc, r = helpers.run_module("ctdb_node", {"socket": c.agent.path, "pnn": 1,
                                             "state": "disabled"})
    assert rc == 1 and r["changed"] is False and r["code"] == "ENOTCONN", r
    assert "node 1 is not connected" in r["msg"]


def test_ansible_doc_renders(helpers):
    import subprocess
    for name, option in (("ctdb_ip", "interfaces"), ("ctdb_node", "ban_time")):
        p = subprocess.run([helpers.ansible_bin("ansible-doc"), "-t", "module",
                            "pyctdb.cluster." + name], cwd=helpers.REPO,
                           env=helpers.ansible_env(), capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, p.stderr
        assert option in p.stdout and "config_dir" in p.stdout  # and the doc fragment's
        assert "[WARNING]" not in p.stderr and "ERROR" not in p.stderr
