"""Shared test helpers for the pyctdb.cluster collection.

* puts the repository's ``collections/`` directory (a symlink
  ``ansible_collections/pyctdb/cluster -> ../../..``) on sys.path, so that
  ``ansible_collections.pyctdb.cluster...`` imports from the checkout;
* :class:`FakeAgent`: a real Unix-socket server in a thread speaking the agent's
  newline-delimited JSON API (docs/api.md), whose answers a test can script;
* :func:`run_module`: runs a module of the collection for real, as Ansible would, in a
  subprocess with an ANSIBLE_MODULE_ARGS file.
"""

import copy
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(REPO, "collections")
AGENT = os.path.join(REPO, "agent")
for _p in (COLLECTIONS,):
    if _p not in sys.path:
        sys.path.insert(0, _p)

#: The example status of docs/api.md, made healthy.
HEALTHY_STATUS = {
    "pnn": 0,
    "num_nodes": 3,
    "num_deleted": 0,
    "nodes": [
        {"pnn": i, "address": "10.89.5.1%d" % (i + 1), "flags": 0, "flag_names": [],
         "state": "OK", "this_node": i == 0, "deleted": False, "leader": 0,
         "generation": 1392714231}
        for i in range(3)
    ],
    "generation": 1392714231,
    "vnnmap": [0, 1, 2],
    "recovery_mode": "NORMAL",
    "recovery_mode_value": 0,
    "leader": 0,
    "joined": True,
    "healthy": True,
    "cluster_lock": {"configured": True, "lock": "/shared/.pyctdb.lock", "held": True},
    "uptime": {"current_time": 1763751023.1, "start_time": 1763750900.5,
               "last_recovery_started": 1763750901.0,
               "last_recovery_finished": 1763750901.01},
}


def healthy_status():
    return copy.deepcopy(HEALTHY_STATUS)


def degraded_status():
    """Node 2 disconnected, as in docs/api.md."""
    st = healthy_status()
    n2 = st["nodes"][2]
    n2.update(flags=9, flag_names=["DISCONNECTED", "INACTIVE"],
              state="DISCONNECTED|INACTIVE", leader=None, generation=None)
    st["vnnmap"] = [0, 1]
    st["healthy"] = False
    return st


class FakeAgent:
    """A pyctdbd stand-in: a real listening Unix socket served by a thread.

    ``handler(request) -> response`` decides every answer: a dict is sent as one JSON
    line, bytes are sent raw, None closes the connection without answering. The default
    handler answers ``status`` with the next entry of :attr:`status_sequence`, once
    that is used up with :attr:`status`, ``ping``/``version``, and EINVAL to anything else.
    Every request received is appended to :attr:`requests`."""

    def __init__(self, path, handler=None):
        self.path = path
        self.handler = handler or self.default_handler
        self.status = healthy_status()
        self.status_sequence = []
        self.log_lines = []
        self.requests = []
        self.connections = 0
        self._stop = False
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def ok(self, req, result):
        return {"version": 1, "id": req.get("id"), "ok": True, "result": result}

    def error(self, req, code, message):
        return {"version": 1, "id": req.get("id"), "ok": False,
                "error": {"code": code, "message": message}}

    def default_handler(self, req):
        cmd = req.get("command")
        if cmd == "status":
            if self.status_sequence:
                return self.ok(req, self.status_sequence.pop(0))
            return self.ok(req, self.status)
        if cmd == "log":
            n = int((req.get("args") or {}).get("lines", 20))
            return self.ok(req, {"lines": self.log_lines[-n:]})
        if cmd == "ping":
            return self.ok(req, {"pnn": self.status["pnn"], "pid": os.getpid()})
        if cmd == "version":
            return self.ok(req, {"version": "0.1.0", "protocol_version": 1,
                                 "api_version": 1})
        return self.error(req, "EINVAL", "unknown command %r" % cmd)

    def _accept_loop(self):
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        buf = b""
        try:
            conn.settimeout(30)
            while not self._stop:
                while b"\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                line, buf = buf.split(b"\n", 1)
                req = json.loads(line)
                self.requests.append(req)
                resp = self.handler(req)
                if resp is None:
                    return
                if isinstance(resp, bytes):
                    conn.sendall(resp)
                else:
                    conn.sendall(json.dumps(resp).encode() + b"\n")
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self._stop = True
        self._sock.close()
        self._thread.join(5)
        try:
            os.unlink(self.path)
        except OSError:
            pass


@pytest.fixture
def sock_dir(tmp_path_factory):
    # Unix socket paths are limited to ~107 bytes: keep them short.
    import tempfile
    d = tempfile.mkdtemp(prefix="pyctdb-t-", dir="/tmp")
    yield d
    import shutil
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fake_agent(sock_dir):
    agents = []

    def make(handler=None, name="agent.sock"):
        a = FakeAgent(os.path.join(sock_dir, name), handler)
        agents.append(a)
        return a
    yield make
    for a in agents:
        a.close()


def run_module(name, args, env=None, timeout=120):
    """Run module ``name`` of pyctdb.cluster with ``args``; ``(rc, result dict)``."""
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, f)
        args_path = f.name
    e = dict(os.environ)
    e["PYTHONPATH"] = COLLECTIONS + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH")
                                     else "")
    e.pop("PYCTDB_SOCKET", None)
    e.update(env or {})
    try:
        p = subprocess.run(
            [sys.executable, "-m", "ansible_collections.pyctdb.cluster.plugins.modules." + name,
             args_path], capture_output=True, text=True, env=e, timeout=timeout)
    finally:
        os.unlink(args_path)
    out = p.stdout.strip()
    try:
        result = json.loads(out[out.index("{"):])
    except ValueError:
        raise AssertionError("module printed no JSON (rc %d):\nstdout: %s\nstderr: %s"
                             % (p.returncode, p.stdout, p.stderr))
    return p.returncode, result


def ansible_env(extra=None):
    """Environment for ansible / ansible-playbook commands run from the repository."""
    e = dict(os.environ)
    e["ANSIBLE_CONFIG"] = os.path.join(REPO, "ansible.cfg")
    e["ANSIBLE_NOCOLOR"] = "1"
    e["ANSIBLE_FORCE_COLOR"] = "0"
    e["ANSIBLE_LOCALHOST_WARNING"] = "0"
    e["ANSIBLE_INVENTORY_UNPARSED_WARNING"] = "0"
    e.pop("PYCTDB_SOCKET", None)
    e.update(extra or {})
    return e


def ansible_bin(name):
    """An ansible command next to the running Python (the project's venv)."""
    cand = os.path.join(os.path.dirname(sys.executable), name)
    return cand if os.path.exists(cand) else name


class _Helpers:
    REPO = REPO
    COLLECTIONS = COLLECTIONS
    AGENT = AGENT
    FakeAgent = FakeAgent
    healthy_status = staticmethod(healthy_status)
    degraded_status = staticmethod(degraded_status)
    run_module = staticmethod(run_module)
    ansible_env = staticmethod(ansible_env)
    ansible_bin = staticmethod(ansible_bin)


@pytest.fixture
def helpers():
    """The helpers of this conftest (fixtures only: no ``import conftest`` in tests, so
    this file cannot clash with another conftest module)."""
    return _Helpers
