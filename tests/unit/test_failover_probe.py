"""playbooks/files/failover_probe.py's --any-answer mode against a real TCP service on
loopback that, like smbd on 445, accepts connections and sends nothing: a move too quick
for any new connection to fail is still seen, because the connection the prober kept
open is ended; a service that never moves is reported with no_outage."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROBE = os.path.join(REPO, "playbooks", "files", "failover_probe.py")


class Silent:
    """A TCP service on ADDR:0 that accepts and keeps every connection, sending nothing;
    :meth:`drop` closes the connections it holds (its process died: the node that takes
    the address over has none of them), while it goes on accepting new ones."""

    def __init__(self, addr="127.0.0.1"):
        self.sock = socket.create_server((addr, 0))
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def drop(self):
        for c in list(self.conns):
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            c.close()  # (a reset)
        self.conns.clear()

    def close(self):
        self.sock.close()
        self.drop()


def probe(svc, timeout, tmp_path, fault=None):
    ready = tmp_path / "ready"
    p = subprocess.Popen([sys.executable, PROBE, "--port", str(svc.port), "--victim", "x",
                          "--any-answer", "--timeout", str(timeout), "--ready-file",
                          str(ready), "127.0.0.1"], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while not ready.exists():
        assert time.monotonic() < deadline, "the prober never got ready"
        time.sleep(0.01)
    assert ready.read_text().startswith("ready")
    t_fault = time.time()
    if fault:
        fault()
    out, _ = p.communicate(timeout=timeout + 10)
    return json.loads(out), t_fault


def test_a_move_without_a_refused_connection_is_seen_through_the_kept_one(tmp_path):
    svc = Silent()
    try:
        res, t_fault = probe(svc, 10, tmp_path, fault=lambda: (time.sleep(0.3), svc.drop()))
        st = res["addresses"]["127.0.0.1"]
        assert res["mode"] == "any-answer" and res["timed_out"] == []
        assert st["moved_at"] is not None and st["moved_at"] >= t_fault + 0.3
        assert st["moved_at"] - t_fault < 5
    finally:
        svc.close()


def test_no_move_is_no_outage(tmp_path):
    svc = Silent()
    try:
        res, _ = probe(svc, 1.5, tmp_path)
        assert res["timed_out"] == ["127.0.0.1"]
        assert res["addresses"]["127.0.0.1"]["no_outage"] is True
    finally:
        svc.close()
