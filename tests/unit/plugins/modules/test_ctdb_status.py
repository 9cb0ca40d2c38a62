"""ctdb_status, run for real (a subprocess, as Ansible runs it) against a real Unix-socket
server speaking the agent's API, and against no server at all."""

import os
import subprocess

import pytest

NODE_KEYS = {"pnn", "address", "flags", "flag_names", "state", "this_node", "deleted",
             "leader", "generation"}


def test_reads_status(fake_agent, helpers):
    agent = fake_agent()
    rc, r = helpers.run_module("ctdb_status", {"socket": agent.path})
    assert rc == 0, r
    assert r["changed"] is False
    assert r["pnn"] == 0 and r["num_nodes"] == 3
    assert r["leader"] == 0 and r["generation"] == 1392714231
    assert r["recovery_mode"] == "NORMAL" and r["vnnmap"] == [0, 1, 2]
    assert r["joined"] is True and r["healthy"] is True
    assert r["ok_nodes"] == 3
    assert r["cluster_lock"] == {"configured": True, "lock": "/shared/.pyctdb.lock",
                                 "held": True}
    assert [set(n) for n in r["nodes"]] == [NODE_KEYS] * 3
    assert r["this_node"]["pnn"] == 0 and r["this_node"]["this_node"] is True
    assert r["status"] == helpers.healthy_status()
    # an agent older than the authenticated transport does not say: null
    assert "transport" not in r["status"] and r["transport_authenticated"] is None
    assert [q["command"] for q in agent.requests] == ["status", "ip"]
    assert agent.requests[1]["args"] == {"all": True}
    # this fake agent does not know "ip": the status is still returned
    assert r["public_addresses"] == {}
    assert "cannot read the public addresses: unknown command 'ip' (EINVAL)" == \
        r["public_addresses_error"]


@pytest.mark.parametrize("transport, expected", [
    ({"authenticated": True}, True),
    ({"authenticated": False}, False),
    ({}, None),
    ({"authenticated": "yes"}, None),
    ("garbage", None),
])
def test_transport_authenticated(fake_agent, helpers, transport, expected):
    """transport.authenticated of the status JSON (pyctdb status --json), null when the
    agent does not tell."""
    agent = fake_agent()
    agent.status = dict(helpers.healthy_status(), transport=transport)
    rc, r = helpers.run_module("ctdb_status", {"socket": agent.path})
    assert rc == 0, r
    assert r["transport_authenticated"] is expected
    assert r["status"]["transport"] == transport


def test_transport_authenticated_while_waiting(fake_agent, helpers):
    """The value comes from the last status read, the one the wait ended on."""
    agent = fake_agent()
    agent.status_sequence = [dict(helpers.degraded_status(),
                                  transport={"authenticated": False})]
    agent.status = dict(helpers.healthy_status(), transport={"authenticated": True})
    rc, r = helpers.run_module("ctdb_status", {
        "socket": agent.path, "wait_for": "healthy", "timeout": 20, "delay": 0.1})
    assert rc == 0, r
    assert r["healthy"] is True and r["transport_authenticated"] is True


IPS = {"pnn": 0, "all": True, "ips": [
    {"address": "10.89.6.100", "pnn": 1, "prefix": 24, "nodes": [0, 1, 2],
     "interfaces": ["eth1"]},
    {"address": "10.89.6.101", "pnn": -1, "prefix": 24, "nodes": [2, 1]},
]}


def test_public_addresses(fake_agent, helpers):
    agent = fake_agent()
    agent.handler = lambda req: (agent.ok(req, IPS) if req["command"] == "ip"
                                 else agent.default_handler(req))
    rc, r = helpers.run_module("ctdb_status", {"socket": agent.path})
    assert rc == 0, r
    assert r["public_addresses"] == {
        "10.89.6.100": {"pnn": 1, "nodes": [0, 1, 2], "prefix": 24, "interfaces": ["eth1"]},
        "10.89.6.101": {"pnn": -1, "nodes": [1, 2], "prefix": None, "interfaces": None},
    }
    assert "public_addresses_error" not in r
    # waiting polls the status only; the addresses are read once, at the end
    agent.requests[:] = []
    agent.status_sequence = [helpers.degraded_status()] * 2
    rc, r = helpers.run_module("ctdb_status", {
        "socket": agent.path, "wait_for": "healthy", "timeout": 20, "delay": 0.1})
    assert rc == 0, r
    assert [q["command"] for q in agent.requests] == ["status"] * 3 + ["ip"]
    assert r["public_addresses"]["10.89.6.100"]["pnn"] == 1


def test_socket_from_environment(fake_agent, helpers):
    agent = fake_agent()
    rc, r = helpers.run_module("ctdb_status", {}, env={"PYCTDB_SOCKET": agent.path})
    assert rc == 0, r
    assert r["invocation"]["module_args"]["socket"] == agent.path


def test_waits_until_healthy(fake_agent, helpers):
    agent = fake_agent()
    agent.status_sequence = [helpers.degraded_status()] * 3
    rc, r = helpers.run_module("ctdb_status", {
        "socket": agent.path, "wait_for": "healthy", "expected_nodes": 3,
        "timeout": 20, "delay": 0.1})
    assert rc == 0, r
    assert r["healthy"] is True and r["ok_nodes"] == 3
    assert [q["command"] for q in agent.requests] == ["status"] * 4 + ["ip"]
    assert r["waited"] > 0


def test_healthy_times_out_naming_the_bad_node(fake_agent, helpers):
    agent = fake_agent()
    st = helpers.degraded_status()
    st["leader"] = None
    st["joined"] = False
    agent.status = st
    agent.log_lines = ["line %d" % i for i in range(20)] + [
        "pyctdb.cluster: ERROR: not leading: cannot take the cluster lock"]
    rc, r = helpers.run_module("ctdb_status", {
        "socket": agent.path, "wait_for": "healthy", "timeout": 1, "delay": 0.2})
    assert rc == 1 and r["failed"]
    # What the agent last logged comes along (API "log").
    assert "cannot take the cluster lock" in r["msg"]
    assert len(r["log_lines"]) == 8 and "line 12" not in r["msg"]
    assert "timed out after 1s waiting for the cluster to become healthy" in r["msg"]
    assert "node 2 (10.89.5.13) is DISCONNECTED|INACTIVE; leader unknown" in r["msg"]
    # The last status comes with the failure.
    assert r["status"]["nodes"][2]["state"] == "DISCONNECTED|INACTIVE"
    assert r["ok_nodes"] == 2 and r["healthy"] is False
    assert len(agent.requests) >= 3


def test_joined_is_enough_for_wait_for_joined(fake_agent, helpers):
    agent = fake_agent()
    agent.status = helpers.degraded_status()  # joined, but not healthy
    rc, r = helpers.run_module("ctdb_status", {
        "socket": agent.path, "wait_for": "joined", "timeout": 5})
    assert rc == 0, r
    assert r["joined"] is True and r["healthy"] is False


def test_not_joined_times_out(fake_agent, helpers):
    agent = fake_agent()
    st = helpers.healthy_status()
    st.update(leader=None, generation=None, joined=False, healthy=False,
              recovery_mode="RECOVERY")
    agent.status = st
    rc, r = helpers.run_module("ctdb_status", {
        "socket": agent.path, "wait_for": "joined", "timeout": 1, "delay": 0.2})
    assert rc == 1
    assert "waiting for this node to join the cluster" in r["msg"]
    assert "leader unknown; generation invalid; recovery mode is RECOVERY" in r["msg"]


def test_expected_nodes(fake_agent, helpers):
    agent = fake_agent()
    rc, r = helpers.run_module("ctdb_status", {
        "socket": agent.path, "wait_for": "healthy", "expected_nodes": 4, "timeout": 1})
    assert rc == 1
    assert "3 nodes configured (not deleted), expected 4" in r["msg"]
    # Only wait_for=healthy looks at expected_nodes.
    rc, r = helpers.run_module("ctdb_status", {"socket": agent.path, "expected_nodes": 4})
    assert rc == 0, r


def test_deleted_nodes_do_not_count(fake_agent, helpers):
    agent = fake_agent()
    st = helpers.healthy_status()
    st["nodes"][1].update(address=None, deleted=True, flags=0x10 | 0x01,
                          flag_names=["DELETED", "INACTIVE"], state="DELETED|INACTIVE",
                          leader=None, generation=None)
    agent.status = st
    rc, r = helpers.run_module("ctdb_status", {
        "socket": agent.path, "wait_for": "healthy", "expected_nodes": 2, "timeout": 5})
    assert rc == 0, r
    assert r["ok_nodes"] == 2 and r["num_nodes"] == 3


def test_split_leaders_are_named(fake_agent, helpers):
    agent = fake_agent()
    st = helpers.healthy_status()
    st["nodes"][2]["leader"] = 2
    st["healthy"] = False
    agent.status = st
    rc, r = helpers.run_module("ctdb_status", {
        "socket": agent.path, "wait_for": "healthy", "timeout": 1})
    assert rc == 1
    assert "node 2 (10.89.5.13) follows leader 2, this node follows 0" in r["msg"]


def test_agent_error_is_reported(fake_agent, helpers):
    agent = fake_agent(lambda req: {"version": 1, "id": req["id"], "ok": False,
                                    "error": {"code": "EPERM", "message": "not allowed"}})
    rc, r = helpers.run_module("ctdb_status", {"socket": agent.path, "wait_for": "healthy"})
    assert rc == 1
    assert r["code"] == "EPERM" and "not allowed" in r["msg"]


def test_garbled_answer_is_reported(fake_agent, helpers):
    agent = fake_agent(lambda req: b"<html>oops</html>\n")
    rc, r = helpers.run_module("ctdb_status", {"socket": agent.path})
    assert rc == 1
    assert r["code"] == "EPROTO" and "garbled" in r["msg"]


# -- no agent ------------------------------------------------------------------------------
def test_no_agent_names_the_missing_socket(sock_dir, tmp_path, helpers):
    sock = os.path.join(sock_dir, "pyctdbd.socket")
    log = tmp_path / "agent.log"
    log.write_text("2025-11-21T19:00:00.000 pyctdbd[1]: pyctdb.daemon: ERROR: boom\n")
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "pyctdb.conf").write_text("[logging]\nlocation = file:%s\n" % log)
    rc, r = helpers.run_module("ctdb_status", {"socket": sock, "config_dir": str(conf)})
    assert rc == 1 and r["failed"]
    assert "socket %s does not exist" % sock in r["msg"]
    assert "ERROR: boom" in r["msg"]
    assert r["log_lines"] == [log.read_text().strip()]
    assert r["code"] == "ENOENT" and r["socket_exists"] is False
    assert r["changed"] is False


def test_no_agent_while_waiting_gives_up_at_timeout(sock_dir, helpers):
    sock = os.path.join(sock_dir, "pyctdbd.socket")
    rc, r = helpers.run_module("ctdb_status", {
        "socket": sock, "wait_for": "joined", "timeout": 1, "delay": 0.2,
        "config_dir": sock_dir})
    assert rc == 1
    assert r["msg"].startswith("gave up after")
    assert "waiting for this node to join the cluster" in r["msg"]
    assert "socket %s does not exist" % sock in r["msg"]
    assert r["waited"] >= 1


def test_agent_appearing_while_waiting(sock_dir, helpers):
    """The socket shows up after the module started waiting (a starting agent)."""
    import threading
    sock = os.path.join(sock_dir, "late.sock")
    started = []

    def start_later():
        import time
        time.sleep(1.0)
        started.append(helpers.FakeAgent(sock))
    t = threading.Thread(target=start_later)
    t.start()
    try:
        rc, r = helpers.run_module("ctdb_status", {
            "socket": sock, "wait_for": "healthy", "timeout": 20, "delay": 0.2})
    finally:
        t.join()
        for a in started:
            a.close()
    assert rc == 0, r
    assert r["healthy"] is True and r["waited"] >= 0.8


def test_bad_arguments(helpers):
    rc, r = helpers.run_module("ctdb_status", {"wait_for": "forever"})
    assert rc == 1 and "wait_for" in r["msg"]
    rc, r = helpers.run_module("ctdb_status", {"wait_for": "healthy", "expected_nodes": 0,
                                               "socket": "/nonexistent/x.sock"})
    assert rc == 1 and "expected_nodes" in r["msg"]


# -- through ansible itself ---------------------------------------------------------------------
def _adhoc(helpers, args, *extra):
    return subprocess.run(
        [helpers.ansible_bin("ansible"), "localhost", "-c", "local", "-i", "localhost,",
         "-e", "ansible_python_interpreter=" + os.sys.executable,
         "-m", "pyctdb.cluster.ctdb_status", "-a", args] + list(extra),
        cwd=helpers.REPO, env=helpers.ansible_env(), capture_output=True, text=True,
        timeout=120)


def test_adhoc(fake_agent, helpers):
    agent = fake_agent()
    p = _adhoc(helpers, "socket=%s wait_for=healthy expected_nodes=3" % agent.path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout and "CHANGED" not in p.stdout
    # check mode runs the same way: it only reads
    p = _adhoc(helpers, "socket=%s" % agent.path, "--check")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "ok_nodes: 3" in p.stdout


def test_adhoc_without_agent(sock_dir, helpers):
    sock = os.path.join(sock_dir, "pyctdbd.socket")
    p = _adhoc(helpers, "socket=%s" % sock)
    assert p.returncode != 0
    assert "socket %s does not exist" % sock in (p.stdout + p.stderr).replace("\n    ", " ")


@pytest.mark.parametrize("kind", ["module"])
def test_ansible_doc_renders(helpers, kind):
    p = subprocess.run([helpers.ansible_bin("ansible-doc"), "-t", kind,
                        "pyctdb.cluster.ctdb_status"], cwd=helpers.REPO,
                       env=helpers.ansible_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "wait_for" in p.stdout and "expected_nodes" in p.stdout
    assert "transport_authenticated" in p.stdout
    assert "[WARNING]" not in p.stderr and "ERROR" not in p.stderr
