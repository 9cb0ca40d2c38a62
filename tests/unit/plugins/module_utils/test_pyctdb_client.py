"""The shared API client, against a real Unix-socket server speaking the protocol."""

import os
import socket
import time

import pytest

from ansible_collections.pyctdb.cluster.plugins.module_utils import pyctdb_client as pc
from ansible_collections.pyctdb.cluster.plugins.module_utils.pyctdb_client import (
    AgentUnavailable, Client, PyctdbError, agent_diagnosis, diagnose_agent)


# -- success -----------------------------------------------------------------------------
def test_status_and_version(fake_agent, helpers):
    agent = fake_agent()
    with Client(agent.path, timeout=5) as c:
        st = c.status()
        ver = c.version()
        ping = c.ping()
    assert st == helpers.healthy_status()
    assert ver["api_version"] == 1
    assert ping["pnn"] == 0
    # One connection carries every request; ids count up; version 1; args always sent.
    assert agent.connections == 1
    assert [r["id"] for r in agent.requests] == [1, 2, 3]
    assert all(r["version"] == 1 for r in agent.requests)
    assert [r["command"] for r in agent.requests] == ["status", "version", "ping"]
    assert agent.requests[0]["args"] == {}


def test_call_passes_args(fake_agent):
    def handler(req):
        return {"version": 1, "id": req["id"], "ok": True,
                "result": {"name": req["args"]["name"], "value": 7}}
    agent = fake_agent(handler)
    with Client(agent.path) as c:
        assert c.call("getvar", name="KeepaliveInterval") == {
            "name": "KeepaliveInterval", "value": 7}
    assert agent.requests[0]["args"] == {"name": "KeepaliveInterval"}


def test_reconnects_after_close(fake_agent):
    agent = fake_agent()
    c = Client(agent.path)
    c.status()
    c.close()
    c.status()
    c.close()
    assert agent.connections == 2


def test_default_socket():
    assert pc.DEFAULT_SOCKET == "/run/pyctdb/pyctdbd.socket"
    assert Client().socket_path == pc.DEFAULT_SOCKET
    assert Client(None).socket_path == pc.DEFAULT_SOCKET


# -- error responses -------------------------------------------------------------------
def test_error_response_raises_pyctdb_error(fake_agent):
    agent = fake_agent()
    with Client(agent.path) as c:
        with pytest.raises(PyctdbError) as ei:
            c.call("nosuchcommand")
        assert not isinstance(ei.value, AgentUnavailable)
        assert ei.value.code == "EINVAL"
        assert "nosuchcommand" in ei.value.message
        # The connection stays usable after an error answer.
        assert c.status()["pnn"] == 0
    assert agent.connections == 1


def test_error_response_without_details(fake_agent):
    agent = fake_agent(lambda req: {"version": 1, "id": req["id"], "ok": False})
    with pytest.raises(PyctdbError) as ei:
        Client(agent.path).status()
    assert ei.value.code == "EIO"


# -- agent unavailable -----------------------------------------------------------------
def test_no_socket(sock_dir):
    path = os.path.join(sock_dir, "missing.sock")
    with pytest.raises(AgentUnavailable) as ei:
        Client(path).status()
    assert ei.value.code == "ENOENT"
    assert path in ei.value.message and "does not exist" in ei.value.message


def test_stale_socket_refuses(sock_dir):
    path = os.path.join(sock_dir, "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()  # the file stays, nobody listens
    with pytest.raises(AgentUnavailable) as ei:
        Client(path).status()
    assert ei.value.code == "ECONNREFUSED"


def test_not_a_socket(sock_dir):
    path = os.path.join(sock_dir, "file")
    open(path, "w").close()
    with pytest.raises(AgentUnavailable) as ei:
        Client(path).status()
    assert ei.value.code == "ENOTSOCK"


def test_connection_closed_without_answer(fake_agent):
    agent = fake_agent(lambda req: None)
    with pytest.raises(AgentUnavailable) as ei:
        Client(agent.path).status()
    assert ei.value.code == "ECONNRESET"


def test_no_answer_times_out(fake_agent):
    def handler(req):
        time.sleep(2)
        return None
    agent = fake_agent(handler)
    start = time.monotonic()
    with pytest.raises(AgentUnavailable) as ei:
        Client(agent.path, timeout=0.3).status()
    assert ei.value.code == "ETIMEDOUT"
    assert time.monotonic() - start < 1.5


# -- garbled and oversized responses --------------------------------------------------------
@pytest.mark.parametrize("raw", [b"this is not json\n", b"{\"ok\": tru\n",
                                 b"\xff\xfe\n"])
def test_garbled_response(fake_agent, raw):
    agent = fake_agent(lambda req: raw)
    with pytest.raises(PyctdbError) as ei:
        Client(agent.path).status()
    assert not isinstance(ei.value, AgentUnavailable)
    assert ei.value.code == "EPROTO"
    assert "garbled" in ei.value.message


@pytest.mark.parametrize("raw", [b"[1, 2, 3]\n", b"{\"version\": 1}\n", b"42\n"])
def test_unexpected_response_shape(fake_agent, raw):
    agent = fake_agent(lambda req: raw)
    with pytest.raises(PyctdbError) as ei:
        Client(agent.path).status()
    assert ei.value.code == "EPROTO"


def test_response_for_another_request(fake_agent):
    agent = fake_agent(lambda req: {"version": 1, "id": 999, "ok": True, "result": {}})
    with pytest.raises(PyctdbError) as ei:
        Client(agent.path).status()
    assert ei.value.code == "EPROTO" and "999" in ei.value.message


def test_oversized_response_line(fake_agent, monkeypatch):
    monkeypatch.setattr(pc, "MAX_RESPONSE", 4096)
    big = b'{"version": 1, "id": 1, "ok": true, "result": {"x": "' + b"a" * 10000 + b'"}}\n'
    agent = fake_agent(lambda req: big)
    with pytest.raises(PyctdbError) as ei:
        Client(agent.path).status()
    assert ei.value.code == "E2BIG"


def test_endless_response_without_newline(fake_agent, monkeypatch):
    monkeypatch.setattr(pc, "MAX_RESPONSE", 100000)
    agent = fake_agent(lambda req: b"x" * 300000)
    with pytest.raises(PyctdbError) as ei:
        Client(agent.path, timeout=5).status()
    assert ei.value.code == "E2BIG"


def test_large_valid_response(fake_agent, helpers):
    st = helpers.healthy_status()
    st["padding"] = "p" * (2 * 1024 * 1024)  # far over one recv(), under the limit
    agent = fake_agent(lambda req: {"version": 1, "id": req["id"], "ok": True, "result": st})
    assert Client(agent.path).status()["padding"] == st["padding"]


# -- diagnosing an agent that is down ------------------------------------------------------
def test_diagnosis_without_systemd(sock_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(pc, "SYSTEMD_RUNTIME_DIR", str(tmp_path / "no-systemd"))
    log = tmp_path / "pyctdb.log"
    log.write_text("".join("line %d\n" % i for i in range(50)))
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    (conf_dir / "pyctdb.conf").write_text("[logging]\n\tlocation = file:%s\n" % log)
    sock = os.path.join(sock_dir, "nope.sock")
    d = agent_diagnosis(None, socket_path=sock, config_dir=str(conf_dir), lines=5)
    assert d["systemd"] is None
    assert d["socket_exists"] is False
    assert d["log_lines"] == ["line %d" % i for i in range(45, 50)]
    assert d["log_source"] == str(log)
    assert "socket %s does not exist" % sock in d["msg"]
    assert "line 49" in d["msg"] and "line 44" not in d["msg"]
    assert diagnose_agent(None, socket_path=sock, config_dir=str(conf_dir),
                          lines=5) == d["msg"]


def test_log_file_from_config(tmp_path):
    assert pc.log_file_from_config(str(tmp_path)) == "/var/log/pyctdb.log"
    (tmp_path / "pyctdb.conf").write_text("[logging]\nlocation = syslog\n")
    assert pc.log_file_from_config(str(tmp_path)) is None
    (tmp_path / "pyctdb.conf").write_text("[cluster]\nport = 4379\n")
    assert pc.log_file_from_config(str(tmp_path)) == "/var/log/pyctdb.log"
    (tmp_path / "pyctdb.conf").write_text("[logging]\nlocation = file:/x/y.log\n")
    assert pc.log_file_from_config(str(tmp_path)) == "/x/y.log"


def test_log_file_from_a_ctdb_configuration_directory(tmp_path):
    (tmp_path / "ctdb.conf").write_text("[logging]\n\tlocation = file:/x/ctdb.log\n")
    assert pc.log_file_from_config(str(tmp_path)) == "/x/ctdb.log"
    (tmp_path / "ctdb.conf").write_text("[cluster]\n")
    assert pc.log_file_from_config(str(tmp_path)) == "/var/log/ctdb/log.ctdb"
    (tmp_path / "ctdb.conf").write_text("[logging]\n\tlocation = syslog\n")
    assert pc.log_file_from_config(str(tmp_path)) is None


def test_diagnosis_with_failed_unit(sock_dir, tmp_path, monkeypatch):
    """systemd state and journal lines come from the commands named in the brief; the
    runner records what is run and answers like systemctl/journalctl would."""
    (tmp_path / "systemd").mkdir()
    monkeypatch.setattr(pc, "SYSTEMD_RUNTIME_DIR", str(tmp_path / "systemd"))
    ran = []

    def runner(argv):
        ran.append(argv)
        if argv[0] == "systemctl":
            return 0, ("LoadState=loaded\nActiveState=failed\nSubState=failed\n"
                       "Result=exit-code\nExecMainStatus=2\n"), ""
        if argv[0] == "journalctl":
            return 0, "pyctdbd: /etc/pyctdb/nodes:3: duplicate node address\n", ""
        return 127, "", "not found"

    sock = os.path.join(sock_dir, "gone.sock")
    d = agent_diagnosis(runner, socket_path=sock, log_path=str(tmp_path / "none.log"))
    assert ran[0][:3] == ["systemctl", "show", "-p"]
    assert "ActiveState" in ran[0][3] and ran[0][-1] == "pyctdbd"
    assert ["journalctl", "-u", "pyctdbd"] == ran[1][:3] and "--no-pager" in ran[1]
    assert d["msg"].startswith(
        "pyctdbd is not running on this node (systemd: failed/exit-code, status 2); "
        "socket %s does not exist" % sock)
    assert d["log_lines"] == ["pyctdbd: /etc/pyctdb/nodes:3: duplicate node address"]
    assert "journalctl -u pyctdbd" in d["msg"]


def test_diagnosis_unit_running_but_stale_socket(sock_dir, tmp_path, monkeypatch):
    (tmp_path / "systemd").mkdir()
    monkeypatch.setattr(pc, "SYSTEMD_RUNTIME_DIR", str(tmp_path / "systemd"))

    def runner(argv):
        if argv[0] == "systemctl":
            return 0, "LoadState=loaded\nActiveState=active\nSubState=running\n", ""
        return 1, "", ""

    path = os.path.join(sock_dir, "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    try:
        Client(path).status()
    except AgentUnavailable as exc:
        err = exc
    msg = diagnose_agent(runner, socket_path=path, error=err,
                         log_path=str(tmp_path / "none.log"))
    assert "pyctdbd is running (systemd: active/running) but its API does not answer" in msg
    assert "refuses connections" in msg
