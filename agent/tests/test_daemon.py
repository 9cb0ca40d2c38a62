"""pyctdbd start-up: bad configuration is refused with exit code 2 and file:line."""

import os
import subprocess
import sys

import pytest

AGENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def run(*args, timeout=20):
    env = dict(os.environ, PYTHONPATH=AGENT)
    return subprocess.run([sys.executable, "-m", "pyctdb.server.daemon", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


@pytest.fixture
def confdir(tmp_path):
    d = tmp_path / "etc"
    d.mkdir()
    (d / "nodes").write_text("127.0.0.1\n127.0.0.2\n")
    (d / "pyctdb.conf").write_text(
        "[logging]\nlocation = file:%s/log\n[cluster]\nnode address = 127.0.0.1\n" % tmp_path)
    return d


def test_check_config_ok(confdir):
    r = run("--check-config", "--config-dir", str(confdir))
    assert r.returncode == 0, r.stderr
    assert "this node is PNN 0 (127.0.0.1)" in r.stdout


@pytest.mark.parametrize("fname,text,expect", [
    ("pyctdb.conf", "[cluster]\nnode adress = 127.0.0.1\n", "pyctdb.conf:2:"),
    ("pyctdb.conf", "[clustr]\n", "pyctdb.conf:1:"),
    ("pyctdb.conf", "[cluster]\nleader timeout = soon\n", "pyctdb.conf:2:"),
    ("nodes", "127.0.0.1\n127.0.0.300\n", "nodes:2:"),
    ("public_addresses", "10.0.0.1/24 eth0\n10.0.0.2/99 eth0\n", "public_addresses:2:"),
    ("pyctdb.tunables", "KeepaliveInterval=1\nNoSuchTunable=3\n", "pyctdb.tunables:2:"),
])
@pytest.mark.parametrize("mode", ["check", "start"])
def test_bad_config_refused_with_file_and_line(confdir, fname, text, expect, mode):
    (confdir / fname).write_text(text)
    args = ["--config-dir", str(confdir), "--socket", str(confdir / "sock")]
    if mode == "check":
        args.insert(0, "--check-config")
    r = run(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert expect in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (confdir / "sock").exists()  # nothing started


def test_missing_nodes_file(confdir):
    os.unlink(confdir / "nodes")
    r = run("--check-config", "--config-dir", str(confdir))
    assert r.returncode == 2 and "nodes" in r.stderr


def test_address_not_on_this_host(tmp_path):
    d = tmp_path / "etc"
    d.mkdir()
    (d / "nodes").write_text("203.0.113.77\n203.0.113.78\n")  # TEST-NET: never local
    r = run("--check-config", "--config-dir", str(d))
    assert r.returncode == 2 and "node address" in r.stderr


def test_second_agent_refused_on_same_socket_or_same_database_directories(tmp_path):
    """A second pyctdbd on a running agent's database directories is refused at start
    (it would wipe the volatile databases under the first), naming the directory and the
    holder; with directories of its own, on the same socket, it is refused too. The first
    agent and its data are untouched."""
    from pyctdb.testing.localcluster import LocalCluster
    with LocalCluster(1, base_dir=tmp_path) as c:
        c.start()
        c.wait_healthy(20)
        c.cli_ok(0, "attach", "v")
        c.cli_ok(0, "writekey", "v", "k", "kept")
        r = run("--config-dir", c.config_dir(0), "--socket", str(tmp_path / "other.socket"))
        assert r.returncode == 1
        vol = os.path.join(str(tmp_path), "node0", "db", "volatile")
        assert ("database directory %s is in use by another pyctdbd (PID %d)"
                % (vol, c.procs[0].pid)) in r.stderr, r.stderr
        assert not os.path.exists(tmp_path / "other.socket")
        # with database directories of its own: the socket is the one in use
        r = run("--config-dir", c.config_copy(0, tmp_path / "other-etc"), "--socket",
                c.socket(0))
        assert r.returncode == 1
        assert "another pyctdbd is serving" in r.stderr
        assert c.status(0)["healthy"]
        assert "kept" in c.cli_ok(0, "readkey", "v", "k")


def test_systemd_readiness_after_join_and_clean_sigterm(tmp_path):
    """READY=1 is sent only once the node has joined; SIGTERM sends STOPPING=1, exits 0."""
    import signal
    import socket as so
    from pyctdb.testing.localcluster import LocalCluster
    c = LocalCluster(2, base_dir=tmp_path / "c")
    notify_path = str(tmp_path / "notify")
    sock = so.socket(so.AF_UNIX, so.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.settimeout(20)
    env = dict(os.environ, PYTHONPATH=AGENT, NOTIFY_SOCKET=notify_path)
    p = subprocess.Popen([sys.executable, "-m", "pyctdb.server.daemon", "--config-dir",
                          c.config_dir(0), "--socket", c.socket(0), "--ctdb-socket",
                          c.ctdb_socket(0)], env=env)
    try:
        msgs = [sock.recv(4096).decode()]
        assert msgs[0].startswith("STATUS=") and "waiting to join" in msgs[0]
        # Alone it joins only after the start-up grace (it elects itself then).
        msgs.append(sock.recv(4096).decode())
        assert msgs[1].startswith("READY=1")
        assert c.status(0)["joined"]
        with c:
            c.start([1])
            c.wait_healthy(20)
        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == 0
        assert "STOPPING=1" in sock.recv(4096).decode()
    finally:
        if p.poll() is None:
            p.kill()
        sock.close()
