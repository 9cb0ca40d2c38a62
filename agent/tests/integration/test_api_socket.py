"""The local API socket's line handling (ApiProtocol, server/api/connection.py) against
a real agent: answers in request order when requests are pipelined, including behind a
command that has to wait; bad lines answered or refused; an unterminated request at the
end; a connection that closes while its command runs."""

import json
import socket
import time

import pytest

from pyctdb import API_VERSION
from pyctdb.protocol.api import MAX_LINE
from pyctdb.testing.localcluster import LocalCluster

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    with LocalCluster.healthy_cluster(2, tmp_path_factory.mktemp("api")) as cl:
        yield cl


def conn(c):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(c.socket(0))
    return s


def req(i, command, **args):
    return (json.dumps({"version": API_VERSION, "id": i, "command": command,
                        "args": args}) + "\n").encode()


def read_lines(s, n):
    buf = b""
    while buf.count(b"\n") < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return [json.loads(x) for x in buf.split(b"\n") if x.strip()]


def test_pipelined_requests_are_answered_in_order_behind_a_waiting_command(c):
    # ping with a pnn is a round trip to node 1 (a command that waits); the ones
    # around it answer at once, yet every answer comes in request order.
    s = conn(c)
    batch = [req(1, "pnn"), req(2, "ping", pnn=1), req(3, "pnn"), req(4, "version"),
             req(5, "ping", pnn=1), req(6, "nosuchcommand"), req(7, "pnn")]
    s.sendall(b"".join(batch))
    answers = read_lines(s, len(batch))
    assert [a["id"] for a in answers] == [1, 2, 3, 4, 5, 6, 7]
    assert [a["ok"] for a in answers] == [True, True, True, True, True, False, True]
    assert answers[1]["result"]["pnn"] == 1 and answers[0]["result"]["pnn"] == 0
    assert answers[5]["error"]["code"] == "EINVAL"
    # requests split anywhere across writes
    data = b"".join([req(8, "pnn"), req(9, "ping", pnn=1), req(10, "pnn")])
    for i in range(0, len(data), 5):
        s.sendall(data[i:i + 5])
        time.sleep(0.001)
    assert [a["id"] for a in read_lines(s, 3)] == [8, 9, 10]
    s.close()


def test_bad_lines_are_answered_and_the_connection_stays(c):
    s = conn(c)
    s.sendall(b"{not json\n" + b"[1,2]\n" + b"\n" +
              json.dumps({"version": 99, "id": 3, "command": "pnn"}).encode() + b"\n" +
              req(4, "pnn"))
    a = read_lines(s, 4)
    assert [x["error"]["code"] for x in a[:3]] == ["EPROTO", "EPROTO", "EPROTO"]
    assert a[2]["id"] == 3 and "unsupported API version 99" in a[2]["error"]["message"]
    assert a[3]["ok"] and a[3]["id"] == 4
    s.close()


def test_a_line_over_the_limit_is_refused_and_the_connection_closed(c):
    s = conn(c)
    s.sendall(req(1, "pnn"))
    assert read_lines(s, 1)[0]["ok"]
    try:
        s.sendall(b'{"version":1,"id":2,"command":"pnn","args":{"x":"' +
                  b"A" * (MAX_LINE + 10))
    except OSError:  # (closed while we were still writing)
        pass
    a = read_lines(s, 1)
    assert a[-1]["error"]["code"] == "E2BIG"
    assert s.recv(1) == b""
    s.close()
    # the agent still serves
    s = conn(c)
    s.sendall(req(3, "pnn"))
    assert read_lines(s, 1)[0]["result"]["pnn"] == 0
    s.close()


def test_an_unterminated_request_at_the_end_gets_eproto(c):
    s = conn(c)
    s.sendall(req(1, "ping", pnn=1) + req(2, "pnn")[:-1])
    s.shutdown(socket.SHUT_WR)
    a = read_lines(s, 2)
    assert a[0]["id"] == 1 and a[0]["ok"]  # the waiting command still answers
    assert a[1]["error"]["code"] == "EPROTO"
    assert "not terminated by a newline" in a[1]["error"]["message"]
    assert s.recv(1) == b""
    s.close()


def test_a_connection_closed_while_its_command_waits_releases_what_it_held(c):
    # A fetch-lock through the API that has to wait for the record's lock: the client
    # goes away meanwhile. Once the command completes, the lease it got is released
    # (the connection's close callbacks run after it), so the record is free again.
    c.call(0, "attach", db_name="apisock.tdb")
    key = "aw=="  # b"k"
    s1 = conn(c)
    s1.sendall(req(1, "fetch_lock", db_name="apisock.tdb", key=key, lease=60))
    assert read_lines(s1, 1)[0]["ok"]
    s2 = conn(c)
    s2.sendall(req(2, "fetch_lock", db_name="apisock.tdb", key=key, lease=60))
    time.sleep(0.3)
    s2.close()   # gone while waiting behind s1's lease
    s1.close()   # s1's lease ends with its connection; s2's command then gets the lock
    t0 = time.monotonic()
    s3 = conn(c)
    s3.sendall(req(3, "fetch_lock", db_name="apisock.tdb", key=key, lease=60))
    a = read_lines(s3, 1)[0]
    assert a["ok"], a
    assert time.monotonic() - t0 < 20  # not the 60 s lease of the vanished s2
    s3.close()


def test_a_client_that_sends_much_before_it_reads_is_not_stalled(c):
    # 20,000 quiet messages to its own srvid in one write before reading any: the
    # agent's writes to the client pile up (3.7 MB, within the 4 MiB backlog) while
    # it keeps reading the client's requests; it must not stop reading because of
    # them (the client, blocked in its write, would never read: both would wait).
    from pyctdb.client import Messenger
    m = Messenger(c.socket(0), timeout=20).connect()
    m.register(91)
    for i in range(20000):
        m.send(0, 91, b"x" * 100, wait=False)
    m.flush()
    got = dropped = 0
    while True:
        msg = m.receive(3)
        if msg is None:
            break
        got += 1
        dropped += msg.dropped
    assert got == 20000 and dropped == 0 and not m.send_errors
    m.close()


def test_the_socket_is_0600_and_a_directory_others_can_write_is_refused(c, tmp_path):
    """The API socket stays root-only: mode 0600, owned by the agent (checked at start),
    and an agent refuses to serve it from a directory that another user could write
    (they could replace the socket)."""
    import os
    import stat
    import subprocess
    import sys
    st = os.stat(c.socket(0))
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert "API socket" in c.log(0) and "mode 0600" in c.log(0)
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)
    r = subprocess.run([sys.executable, "-m", "pyctdb.server.daemon", "--config-dir",
                        c.config_copy(1, tmp_path / "etc"), "--socket", str(d / "x.socket"),
                        "--log-stderr"],
                       capture_output=True, text=True, timeout=30, env=c.cli_env())
    assert r.returncode == 1
    assert "writable by group and others (mode 0777)" in r.stderr
    assert not (d / "x.socket").exists()
