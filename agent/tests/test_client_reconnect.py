"""The client library's connection to the agent: a connection whose agent went away
(restarted) is made again for the next request, once, when the request could not be
written (it reached no one); a request written to an agent that then dies is not sent
twice."""

import json
import socket
import threading

import pytest

from pyctdb.client.connection import AgentUnavailable, Client


def serve_once(path, answers):
    """A fake agent: accepts one connection, answers ``answers`` requests, closes."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def run():
        conn, _ = srv.accept()
        f = conn.makefile("rb")
        for _ in range(answers):
            req = json.loads(f.readline())
            conn.sendall(json.dumps({"version": req["version"], "id": req["id"], "ok": True,
                                     "result": {"got": req["command"]}}).encode() + b"\n")
        f.close()
        conn.close()
        srv.close()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_connection_to_a_gone_agent_is_made_again_for_the_next_request(tmp_path):
    path = str(tmp_path / "a.socket")
    t = serve_once(path, 1)
    c = Client(path, timeout=5)
    assert c.call("pnn") == {"got": "pnn"}
    t.join(5)
    (tmp_path / "a.socket").unlink()
    t = serve_once(path, 1)  # (the agent restarted)
    assert c.call("status") == {"got": "status"}
    t.join(5)


def test_a_request_to_an_agent_that_dies_before_answering_is_not_sent_again(tmp_path):
    path = str(tmp_path / "b.socket")
    t = serve_once(path, 0)  # (reads nothing, closes)
    c = Client(path, timeout=5)
    with pytest.raises(AgentUnavailable):
        c.call("moveip")
    t.join(5)
