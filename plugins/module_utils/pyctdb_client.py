# -*- coding: utf-8 -*-
# Copyright: (c) 2025, pyctdb authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Client of the pyctdbd local JSON API (docs/api.md), shared by every module of the
``pyctdb.cluster`` collection.

Pure standard library on purpose: modules run with the node's system Python, while the
agent lives in its own virtualenv, so nothing here may import the ``pyctdb`` package.

    from ansible_collections.pyctdb.cluster.plugins.module_utils.pyctdb_client import (
        AgentUnavailable, Client, PyctdbError, agent_diagnosis)

    with Client(socket_path) as c:
        status = c.status()
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import configparser
import errno
import itertools
import json
import os
import shutil
import socket
import subprocess

DEFAULT_SOCKET = "/run/pyctdb/pyctdbd.socket"
DEFAULT_CONFIG_DIR = "/etc/pyctdb"
DEFAULT_LOG_FILE = "/var/log/pyctdb.log"
#: the agent's log file in a CTDB configuration directory whose ctdb.conf names none
#: (Debian's ctdbd's default)
CTDB_DEFAULT_LOG_FILE = "/var/log/ctdb/log.ctdb"
API_VERSION = 1
#: Responses larger than this are refused (the agent's own limit for requests is 1 MiB;
#: a status of a large cluster stays far below this).
MAX_RESPONSE = 16 * 1024 * 1024
#: Exists when the node was booted with systemd (sd_booted()).
SYSTEMD_RUNTIME_DIR = "/run/systemd/system"


class PyctdbError(Exception):
    """An error answered by the agent (``code`` is its error code, e.g. ``ENOENT``) or a
    protocol problem detected by the client (``EPROTO``, ``E2BIG``, ``EACCES``)."""

    def __init__(self, code, message):
        super(PyctdbError, self).__init__("%s: %s" % (code, message))
        self.code = code
        self.message = message


class AgentUnavailable(PyctdbError):
    """The agent cannot be reached: no socket, connection refused, connection lost or no
    answer in time."""


class Client:
    """A connection to one pyctdbd. Connects lazily; one connection carries any number of
    requests. Use as a context manager or call :meth:`close`."""

    def __init__(self, socket_path=DEFAULT_SOCKET, timeout=10):
        self.socket_path = socket_path or DEFAULT_SOCKET
        self.timeout = timeout
        self._sock = None
        self._buf = b""
        self._ids = itertools.count(1)

    # -- connection --------------------------------------------------------------------
    def connect(self):
        if self._sock is not None:
            return
        path = self.socket_path
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(path)
        except (OSError, socket.error) as exc:
            s.close()
            code = getattr(exc, "errno", None)
            if code == errno.ENOENT:
                raise AgentUnavailable(
                    "ENOENT", "socket %s does not exist (is pyctdbd running?)" % path)
            if code in (errno.EACCES, errno.EPERM):
                raise PyctdbError(
                    "EACCES", "permission denied connecting to %s: the pyctdbd API serves "
                    "root only (use become: true)" % path)
            if os.path.exists(path) and not _is_socket(path):
                raise AgentUnavailable("ENOTSOCK", "%s is not a socket" % path)
            if code == errno.ECONNREFUSED:
                raise AgentUnavailable(
                    "ECONNREFUSED", "connection to %s refused: nothing is serving the socket "
                    "(stale socket of a stopped pyctdbd?)" % path)
            if isinstance(exc, socket.timeout):
                raise AgentUnavailable(
                    "ETIMEDOUT", "timed out connecting to %s after %ss" % (path, self.timeout))
            raise AgentUnavailable(
                errno.errorcode.get(code, "EIO") if code else "EIO",
                "cannot connect to %s: %s" % (path, getattr(exc, "strerror", None) or exc))
        self._sock = s

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
        self._buf = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- requests ----------------------------------------------------------------------
    def call(self, command, **args):
        """Send one request and return its ``result``. Raises :class:`PyctdbError` with the
        agent's code for an error response, :class:`AgentUnavailable` when the agent
        cannot be reached or stops answering."""
        self.connect()
        req_id = next(self._ids)
        line = json.dumps({"version": API_VERSION, "id": req_id, "command": command,
                           "args": args}) + "\n"
        try:
            self._sock.sendall(line.encode("utf-8"))
            resp_line = self._read_line()
        except socket.timeout:
            self.close()
            raise AgentUnavailable(
                "ETIMEDOUT", "pyctdbd at %s did not answer %r within %ss"
                % (self.socket_path, command, self.timeout))
        except (OSError, socket.error) as exc:
            self.close()
            raise AgentUnavailable(
                "ECONNRESET", "lost the connection to pyctdbd at %s: %s"
                % (self.socket_path, getattr(exc, "strerror", None) or exc))
        try:
            resp = json.loads(resp_line.decode("utf-8"))
        except ValueError as exc:
            self.close()
            raise PyctdbError("EPROTO", "garbled response from pyctdbd at %s (%s): %s"
                              % (self.socket_path, exc, _snippet(resp_line)))
        if not isinstance(resp, dict) or "ok" not in resp:
            self.close()
            raise PyctdbError("EPROTO", "unexpected response from pyctdbd at %s: %s"
                              % (self.socket_path, _snippet(resp_line)))
        if resp.get("id") not in (None, req_id):
            self.close()
            raise PyctdbError("EPROTO", "response id %r does not match request id %r"
                              % (resp.get("id"), req_id))
        if not resp.get("ok"):
            err = resp.get("error") or {}
            if not isinstance(err, dict):
                err = {"message": str(err)}
            raise PyctdbError(err.get("code") or "EIO",
                              err.get("message") or "unknown error")
        return resp.get("result")

    def _read_line(self):
        while b"\n" not in self._buf:
            if len(self._buf) > MAX_RESPONSE:
                self.close()
                raise PyctdbError("E2BIG", "response from pyctdbd at %s exceeds %d bytes"
                                  % (self.socket_path, MAX_RESPONSE))
            chunk = self._sock.recv(65536)
            if not chunk:
                self.close()
                raise AgentUnavailable("ECONNRESET", "pyctdbd at %s closed the connection"
                                       % self.socket_path)
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        if len(line) > MAX_RESPONSE:
            self.close()
            raise PyctdbError("E2BIG", "response from pyctdbd at %s exceeds %d bytes"
                              % (self.socket_path, MAX_RESPONSE))
        return line

    # -- helpers -----------------------------------------------------------------------
    def ping(self):
        return self.call("ping")

    def status(self):
        return self.call("status")

    def version(self):
        return self.call("version")

    def pnn(self):
        return self.call("pnn")["pnn"]

    def public_addresses(self):
        """Every public address of the cluster (API ``ip`` with ``all``), keyed by
        address: ``{pnn, nodes, prefix, interfaces}``; ``pnn`` is the hosting node (-1:
        nobody), ``nodes`` the nodes that list it, ``prefix`` and ``interfaces`` those of
        the answering node (None when that node does not list it)."""
        result = self.call("ip", all=True) or {}
        out = {}
        for e in result.get("ips") or []:
            out[e["address"]] = {"pnn": e.get("pnn", -1), "nodes": sorted(e.get("nodes") or []),
                                 "prefix": e.get("prefix") if "interfaces" in e else None,
                                 "interfaces": e.get("interfaces")}
        return out

    def addip(self, address, prefix, interfaces, check=False, pnn=None):
        return self.call("addip", address=address, prefix=prefix, interfaces=interfaces,
                         check=bool(check), **_pnn(pnn))

    def delip(self, address, check=False, pnn=None):
        return self.call("delip", address=address, check=bool(check), **_pnn(pnn))

    def moveip(self, address, pnn):
        return self.call("moveip", address=address, pnn=pnn)

    def admin(self, action, pnn=None, seconds=None):
        """disable, enable, stop, continue, ban (``seconds``), unban; of node ``pnn``
        (default: the node of this agent)."""
        args = _pnn(pnn)
        if action == "ban":
            args["seconds"] = seconds
        return self.call(action, **args)

    # -- databases (docs/databases.md) -------------------------------------------------
    def database(self, name):
        """The ``getdbmap`` entry of database ``name`` on this node, or None."""
        dbs = (self.call("getdbmap") or {}).get("dbs") or []
        return next((d for d in dbs if d.get("name") == name), None)

    def attach(self, name, persistent=False):
        return self.call("attach", db_name=name, persistent=bool(persistent))

    def pfetch(self, name, key):
        """The value (bytes) of ``key`` (bytes) in persistent database ``name``, or None."""
        res = self.call("pfetch", db_name=name, key=_b64(key))
        return base64.b64decode(res["value"]) if res.get("exists") else None

    def ptrans(self, name, writes):
        """One transaction on persistent database ``name``: ``writes`` is
        ``[(key bytes, value bytes or None to delete)]``."""
        return self.call("ptrans", db_name=name, writes=[
            [_b64(k), None if v is None else _b64(v)] for k, v in writes])

    # -- the cluster registry (docs/databases.md, "Cluster registry") -------------------
    def conf_update(self, section, set_params=None, delete=None, exclusive=False,
                    delete_section=False, check=False):
        """Change one registry section in one transaction (``check``: only compute);
        returns ``{changed, before, after, seqnum}`` (sections with their ``text``)."""
        return self.call("conf_update", section=section, set=set_params, delete=delete,
                         exclusive=bool(exclusive), delete_section=bool(delete_section),
                         check=bool(check))

    def conf_list(self):
        return self.call("conf_list")


def _b64(b):
    return base64.b64encode(b).decode("ascii")


def agent_argument_spec():
    """The options every module that talks to the agent has (documented by the doc
    fragment ``pyctdb.cluster.agent``): ``socket`` and ``config_dir``."""
    from ansible.module_utils.basic import env_fallback
    return dict(
        socket=dict(type="path", default=DEFAULT_SOCKET,
                    fallback=(env_fallback, ["PYCTDB_SOCKET"])),
        config_dir=dict(type="path", default=DEFAULT_CONFIG_DIR),
    )


def _pnn(pnn):
    return {} if pnn is None else {"pnn": pnn}


def wait_until(check, timeout, delay=0.2, clock=None, sleep=None):
    """Call ``check()`` until it returns something true or ``timeout`` seconds have
    passed; returns ``(last value, seconds waited)``."""
    import time
    clock = clock or time.monotonic
    sleep = sleep or time.sleep
    start = clock()
    while True:
        value = check()
        waited = clock() - start
        if value or waited >= timeout:
            return value, round(waited, 2)
        sleep(min(delay, max(0.0, timeout - waited)) or 0.01)


def fail_from_error(module, exc, socket_path, config_dir=DEFAULT_CONFIG_DIR, **result):
    """``module.fail_json`` for an exception of the client: with the diagnosis of the
    agent (systemd, socket, last log lines) when it does not answer, else the agent's
    own error message and code. ``result``: more return values (e.g. changed)."""
    if isinstance(exc, AgentUnavailable):
        diag = agent_diagnosis(module, socket_path=socket_path, config_dir=config_dir,
                               error=exc)
        module.fail_json(msg=diag["msg"], code=exc.code, log_lines=diag["log_lines"],
                         systemd=diag["systemd"], socket_exists=diag["socket_exists"],
                         **result)
    module.fail_json(msg="pyctdbd at %s: %s" % (socket_path, exc.message), code=exc.code,
                     **result)


def _is_socket(path):
    import stat
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _snippet(data, size=200):
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
    return text if len(text) <= size else text[:size] + "..."


# -- diagnosing an agent that is down ---------------------------------------------------

def _runner(module_or_runner):
    """A ``run(argv) -> (rc, stdout, stderr)`` from an AnsibleModule, a callable or None."""
    if module_or_runner is not None and hasattr(module_or_runner, "run_command"):
        module = module_or_runner

        def run(argv):
            return module.run_command(argv, check_rc=False)
        return run
    if callable(module_or_runner):
        return module_or_runner

    def run(argv):
        try:
            p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, err = p.communicate()
        except OSError as exc:
            return 127, "", str(exc)
        return p.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    return run


def _which(module_or_runner, name):
    if module_or_runner is not None and hasattr(module_or_runner, "get_bin_path"):
        return module_or_runner.get_bin_path(name)
    if callable(module_or_runner):
        return name  # a runner of the caller's: it resolves (or fakes) the command
    return shutil.which(name)


def log_file_from_config(config_dir=DEFAULT_CONFIG_DIR):
    """The log file named by ``[logging] location = file:PATH`` in pyctdb.conf (or, in a
    CTDB configuration directory without one, ctdb.conf: the agent reads it there, with
    CTDB's default log file); the default log file when the config says nothing; None
    when the agent logs elsewhere (syslog, stderr)."""
    config_dir = config_dir or DEFAULT_CONFIG_DIR
    conf, default = os.path.join(config_dir, "pyctdb.conf"), DEFAULT_LOG_FILE
    ctdb_conf = os.path.join(config_dir, "ctdb.conf")
    if not os.path.exists(conf) and os.path.exists(ctdb_conf):
        conf, default = ctdb_conf, CTDB_DEFAULT_LOG_FILE
    parser = configparser.ConfigParser(interpolation=None, strict=False,
                                       inline_comment_prefixes=None)
    try:
        parser.read(conf)
    except (configparser.Error, UnicodeDecodeError):
        return default
    location = parser.get("logging", "location", fallback="").strip()
    if not location:
        return default
    if location.startswith("file:"):
        return location[len("file:"):].strip() or default
    return None


def tail(path, lines=20, max_bytes=256 * 1024):
    """The last ``lines`` lines of a text file (None if it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except (IOError, OSError):
        return None
    text = data.decode("utf-8", "replace").splitlines()
    if size > max_bytes and text:
        text = text[1:]  # first line is probably cut
    return [line for line in text if line.strip()][-lines:] if lines > 0 else []


def systemd_state(module_or_runner, service="pyctdbd"):
    """``{LoadState, ActiveState, SubState, Result, ExecMainStatus}`` of the unit, or None
    when the node does not run systemd."""
    if not os.path.isdir(SYSTEMD_RUNTIME_DIR):
        return None
    systemctl = _which(module_or_runner, "systemctl")
    if not systemctl:
        return None
    rc, out, _err = _runner(module_or_runner)(
        [systemctl, "show", "-p", "LoadState,ActiveState,SubState,Result,ExecMainStatus",
         service])
    if rc != 0:
        return None
    state = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            state[key.strip()] = value.strip()
    return state or None


def journal_tail(module_or_runner, service="pyctdbd", lines=20):
    journalctl = _which(module_or_runner, "journalctl")
    if not journalctl or lines <= 0:
        return None
    rc, out, _err = _runner(module_or_runner)(
        [journalctl, "-u", service, "-n", str(int(lines)), "--no-pager", "-q"])
    if rc != 0:
        return None
    return [line for line in out.splitlines() if line.strip()][-lines:]


def agent_diagnosis(module_or_runner=None, service="pyctdbd", log_path=None, lines=20,
                    socket_path=DEFAULT_SOCKET, config_dir=DEFAULT_CONFIG_DIR, error=None):
    """Find out why the agent does not answer. Returns a dict: ``msg`` (one human
    explanation), ``systemd`` (unit state or None), ``socket_exists``, ``log_source``
    and ``log_lines``. ``error`` is the exception the client raised, if any."""
    parts = []
    unit = systemd_state(module_or_runner, service)
    unit_known = unit is not None and unit.get("LoadState") == "loaded"
    if unit_known:
        active = unit.get("ActiveState", "unknown")
        sub = unit.get("SubState", "")
        result = unit.get("Result", "")
        if active in ("active", "reloading"):
            parts.append("%s is running (systemd: %s/%s) but its API does not answer"
                         % (service, active, sub))
        elif active == "activating":
            parts.append("%s is still starting (systemd: %s/%s)" % (service, active, sub))
        else:
            detail = "%s/%s" % (active, result if result and result != "success" else sub)
            status = unit.get("ExecMainStatus")
            if status and status != "0":
                detail += ", status %s" % status
            parts.append("%s is not running on this node (systemd: %s)" % (service, detail))
    elif unit is not None and unit.get("LoadState") == "not-found":
        parts.append("%s is not installed as a service on this node (no systemd unit "
                     "%s.service)" % (service, service))
    else:
        parts.append("%s does not answer on this node" % service)

    if os.path.lexists(socket_path):
        socket_exists = True
        if not _is_socket(socket_path):
            parts.append("%s exists but is not a socket" % socket_path)
        elif error is not None and error.code == "ECONNREFUSED":
            parts.append("socket %s exists but refuses connections (left over from a "
                         "pyctdbd that stopped?)" % socket_path)
        elif error is not None:
            parts.append(error.message)
    else:
        socket_exists = False
        parts.append("socket %s does not exist" % socket_path)

    if log_path is None:
        log_path = log_file_from_config(config_dir)
    log_lines, log_source = None, None
    if log_path:
        log_lines = tail(log_path, lines)
        if log_lines is not None:
            log_source = log_path
    journal = None
    if unit_known and (log_lines is None or unit.get("ActiveState") != "active"):
        # A failing ExecStartPre (bad configuration) only ever writes to the journal.
        journal = journal_tail(module_or_runner, service, lines)
    if journal:
        if log_lines:
            log_lines = log_lines + ["-- journal (%s) --" % service] + journal
            log_source = "%s and journalctl -u %s" % (log_source, service)
        else:
            log_lines, log_source = journal, "journalctl -u %s" % service
    if log_lines:
        msg = "; ".join(parts) + "; last log lines (%s):\n  %s" % (
            log_source, "\n  ".join(log_lines))
    else:
        where = log_path or "journal"
        msg = "; ".join(parts) + "; no log lines found (%s)" % where
    return {"msg": msg, "systemd": unit, "socket_exists": socket_exists,
            "log_source": log_source, "log_lines": log_lines or []}


def diagnose_agent(module_or_runner=None, service="pyctdbd", log_path=None, lines=20,
                   socket_path=DEFAULT_SOCKET, config_dir=DEFAULT_CONFIG_DIR, error=None):
    """A human explanation of why the agent does not answer (see agent_diagnosis)."""
    return agent_diagnosis(module_or_runner, service=service, log_path=log_path, lines=lines,
                           socket_path=socket_path, config_dir=config_dir, error=error)["msg"]
