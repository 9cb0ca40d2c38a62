"""The guard process's loop (pyctdb.server.guard.Watch) without an agent: its messages
checked (malformed ones ignored), its deadline, and the order of its fence: gate,
addresses, lock helper, then the links."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

from pyctdb.server.guard import MAX_MESSAGE, Watch, _encode


def _watch(order):
    agent, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    w = Watch(theirs, drop=lambda why: order.append(("drop", why)) or ["10.0.0.1/24 from eth0"],
              close_gate=lambda: order.append(("gate",)),
              after=lambda dropped: order.append(("after", tuple(dropped))))
    t = threading.Thread(target=lambda: order.append(("exit", w.run())), daemon=True)
    t.start()
    return agent, w, t


def test_a_missed_deadline_fences_in_order_and_closes_the_links():
    order = []
    agent, w, t = _watch(order)
    link_a, link_b = socket.socketpair()  # (a link: the peer's end is link_b)
    sleeper = subprocess.Popen(["sleep", "30"])
    pidfd = os.pidfd_open(sleeper.pid)
    try:
        socket.send_fds(agent, [_encode("sock", pnn=1, dir="out")], [link_a.fileno()])
        socket.send_fds(agent, [_encode("lock", pid=sleeper.pid)], [pidfd])
        link_a.close()  # (the agent's own copy: the guard's keeps it open)
        agent.send(_encode("deadline", at=time.monotonic() + 0.2))
        link_b.settimeout(5)
        assert link_b.recv(1) == b""  # the guard shut the link down: a clean end
        assert sleeper.wait(5) == -15  # the lock helper was stopped (SIGTERM: it exits)
        reply = agent.recv(MAX_MESSAGE)
        assert b'"dropped"' in reply and b"10.0.0.1" in reply
        t_wait = time.monotonic() + 5
        while len(order) < 3 and time.monotonic() < t_wait:
            time.sleep(0.01)
        kinds = [o[0] for o in order]
        assert kinds[:3] == ["gate", "drop", "after"]
        assert "missed its keepalive deadline" in order[1][1]
    finally:
        os.close(pidfd)
        sleeper.kill()
        agent.close()
        t.join(5)
    assert order[-1][0] == "exit" and [o[0] for o in order].count("drop") == 2  # (EOF)


def test_malformed_messages_are_ignored_and_eof_fences():
    order = []
    agent, w, t = _watch(order)
    for junk in (b"not json", b"[]", b'{"v": 2, "op": "deadline", "at": 1}',
                 b'{"v": 1, "op": 5}', b'{"v": 1, "op": "deadline", "at": "soon"}',
                 b'{"v": 1, "op": "sock", "pnn": 1}', b"x" * (MAX_MESSAGE + 1),
                 b'{"v": 1, "op": "unknown"}'):
        agent.send(junk)
    time.sleep(0.3)
    assert order == [] and w.deadline is None  # nothing fenced, nothing armed
    agent.close()  # the agent is gone
    t.join(5)
    assert [o[0] for o in order] == ["gate", "drop", "after", "exit"]
    assert order[1][1] == "the agent exited"


def test_stop_drops_when_asked_and_exits_without_fencing_the_links():
    order = []
    agent, w, t = _watch(order)
    link_a, link_b = socket.socketpair()
    socket.send_fds(agent, [_encode("sock", pnn=2, dir="in")], [link_a.fileno()])
    link_a.close()
    agent.send(_encode("stop", drop=True))
    assert b'"dropped"' in agent.recv(MAX_MESSAGE)
    t.join(5)
    assert [o[0] for o in order] == ["drop", "exit"]
    agent.close()


def test_an_end_of_stream_is_the_peer_s_only_when_the_peer_sent_it():
    """A link's clean end of stream says 'its addresses are gone' only when the peer
    sent it (CLOSE_WAIT); when this host's own guard shut the shared socket down, the
    read ends the same way, and must not (a fenced leader took it for its peers' and
    led again at once, in the nemesis)."""
    from pyctdb.server.transport import _closed_by_peer
    srv = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(srv.getsockname())
    b, _ = srv.accept()
    a.close()  # the peer's FIN
    assert b.recv(1) == b"" and _closed_by_peer(b)
    c = socket.create_connection(srv.getsockname())
    d, _ = srv.accept()
    d.shutdown(socket.SHUT_RDWR)  # this host's own shutdown (the guard's)
    assert d.recv(1) == b"" and not _closed_by_peer(d)
    for x in (b, c, d, srv):
        x.close()


def test_the_guard_gets_a_systemd_scope_of_its_own_only_where_one_can_be_made(
        tmp_path, monkeypatch, caplog):
    """scope_argv: nothing outside systemd; under systemd, systemd-run --scope if a
    probe with `true` works, else nothing (and a warning that says what it costs)."""
    from pyctdb.server import guard as guard_mod
    assert guard_mod.scope_argv(1, environ={}) == []
    fake = tmp_path / "systemd-run"
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(guard_mod.os.path, "isdir", lambda p: p == "/run/systemd/system")
    fake.write_text("#!/bin/sh\necho 'Failed to connect to bus' >&2\nexit 1\n")
    fake.chmod(0o755)
    with caplog.at_level("WARNING"):
        assert guard_mod.scope_argv(7, environ={"INVOCATION_ID": "x"}) == []
    assert "Failed to connect to bus" in caplog.text and "ExecStopPost" in caplog.text
    fake.write_text("#!/bin/sh\nexit 0\n")
    argv = guard_mod.scope_argv(7, environ={"INVOCATION_ID": "x"})
    assert argv[:2] == [str(fake), "--scope"] and "(pid 7)" in " ".join(argv)
    assert guard_mod.scope_argv(7, environ={}) == []
