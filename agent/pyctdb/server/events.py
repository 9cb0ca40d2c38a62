"""Event scripts in CTDB's layout, and service monitoring.

Scripts live in ``CONFIG_DIR/events/legacy/`` and are named ``NN.name.script``; a script
there is enabled when it is executable. As in CTDB, a script may be a symlink to one
that Debian's ctdb package provides (``/usr/share/ctdb/events/legacy``): ``pyctdb event
script enable|disable`` makes and removes the link for those, and flips the execute bits
of the others.
For an event, every enabled script runs in name order with the event name and its
arguments, as CTDB runs them::

    10.interface.script monitor
    10.interface.script takeip eth0 10.0.0.5 24

Events: ``init``, ``setup``, ``startup``, ``monitor``, ``takeip``/``releaseip`` (IFACE IP
MASKBITS), ``updateip``, ``startipreallocate``, ``ipreallocated``, ``startrecovery``,
``recovered``, ``shutdown``. The whole event may take at most ``EventScriptTimeout``
seconds; a script still running then is killed (its process group) and the event fails
as TIMEDOUT. Scripts run as child processes: nothing here blocks the event loop.

Monitoring: ``monitor`` runs every ``MonitorInterval`` seconds. A failing monitor marks
the node UNHEALTHY (so the leader moves its addresses away); the next success clears it.
While it has enabled monitor scripts, a node starts UNHEALTHY and becomes healthy with its
first successful monitor, as in CTDB.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
import time

from pyctdb.errors import PyctdbError
from pyctdb.server.tasks import spawn

log = logging.getLogger(__name__)

#: Where Debian's ctdb package keeps CTDB's helpers (ctdb-config, ctdb_killtcp, ...),
#: which the stock scripts call through CTDB_HELPER_BINDIR.
HELPER_BINDIR = "/usr/libexec/ctdb"

#: Where Debian's ctdb package puts CTDB's own files: its event scripts are in
#: ``DATADIR/events/legacy``, enabled by a symlink in the configuration directory.
DATADIR = "/usr/share/ctdb"
#: CTDB's notification script, in the configuration directory
NOTIFY_SCRIPT = "notify.sh"
NOTIFY_TIMEOUT = 60.0
#: Seconds between two tries of a failing ``startup`` event (ctdbd's 5)
STARTUP_RETRY = 5.0

EVENTS = ("init", "setup", "startup", "monitor", "takeip", "releaseip", "updateip",
          "startipreallocate", "ipreallocated", "startrecovery", "recovered", "shutdown")
OUTPUT_LIMIT = 4096


class EventError(PyctdbError):
    """A request about events the runner cannot do: ``code`` EINVAL (an unknown event)
    or ENOENT (no such script)."""

    code = "EINVAL"


def script_environment(config, ctdb_socket=None) -> dict:
    """The variables CTDB's event scripts expect (ctdbd and the stock ``functions`` set
    them): ``CTDB_BASE`` (the configuration directory, where ``functions`` and
    ``script.options`` are), ``CTDB_VARDIR`` (the directory above the state databases:
    ``/var/lib/ctdb`` in CTDB's layout), ``CTDB_SCRIPT_VARDIR`` (its ``scripts``),
    ``CTDB_DBDIR``/``CTDB_DBDIR_PERSISTENT``/``CTDB_DBDIR_STATE``, ``CTDB_LOGGING``,
    ``CTDB_DEBUGLEVEL``, ``CTDB_HELPER_BINDIR`` (when Debian's helpers are installed) and
    ``CTDB_SOCKET`` (this agent's CTDB socket, where the scripts' ``ctdb`` calls go)."""
    vardir = os.path.dirname(config.state_db_dir.rstrip("/")) or "/"
    env = {"CTDB_BASE": config.config_dir, "CTDB_VARDIR": vardir,
           "CTDB_SCRIPT_VARDIR": os.path.join(vardir, "scripts"),
           "CTDB_DBDIR": config.volatile_db_dir,
           "CTDB_DBDIR_PERSISTENT": config.persistent_db_dir,
           "CTDB_DBDIR_STATE": config.state_db_dir,
           "CTDB_LOGGING": config.log_location, "CTDB_DEBUGLEVEL": config.log_level}
    if os.path.isdir(HELPER_BINDIR):
        env["CTDB_HELPER_BINDIR"] = HELPER_BINDIR
    if ctdb_socket:
        env["CTDB_SOCKET"] = ctdb_socket
    return env


class EventRunner:
    """Runs an event's enabled scripts in order, with the event's timeout, and keeps
    each event's last result; enables and disables scripts."""

    def __init__(self, config_dir, tunables, component="legacy", env=None,
                 datadir=DATADIR):
        self.dir = os.path.join(config_dir, "events", component)
        #: where the scripts a CTDB package provides are (enabled by a symlink here)
        self.data_dir = os.path.join(datadir, "events", component)
        self.config_dir = config_dir
        self.tunables = tunables
        #: added to the agent's environment for the scripts (:func:`script_environment`)
        self.env = dict(env or {})
        self.last = {}  # event -> result of its last run
        self._locks = {}

    # -- scripts -------------------------------------------------------------------------
    def scripts(self):
        """[(name, path, enabled)] in run order; name without ``.script``."""
        try:
            entries = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        out = []
        for e in entries:
            if not e.endswith(".script"):
                continue
            path = os.path.join(self.dir, e)
            if not os.path.isfile(path):
                continue
            out.append((e[:-len(".script")], path, os.access(path, os.X_OK)))
        return out

    def has_enabled(self):
        return any(en for _, _, en in self.scripts())

    def script_list(self):
        """What ``ctdb event script list`` shows, in its order: the scripts the CTDB
        package provides (``provided``; enabled when a symlink here points to it),
        then this directory's other scripts (enabled when executable)."""
        provided = []
        try:
            data_dir = os.path.realpath(self.data_dir)
            names = sorted(e[:-len(".script")] for e in os.listdir(data_dir)
                           if e.endswith(".script"))
        except FileNotFoundError:
            names = []
        linked = set()
        for name in names:
            target = os.path.join(data_dir, f"{name}.script")
            try:
                on = os.readlink(os.path.join(self.dir, f"{name}.script")) == target
            except OSError:
                on = False
            if on:
                linked.add(name)
            provided.append({"script": name, "enabled": on, "provided": True})
        local = [{"script": n, "enabled": en, "provided": False}
                 for n, _, en in self.scripts() if n not in linked]
        return provided + local

    def set_enabled(self, name, enabled):
        """``ctdb event script enable|disable``: a script here that is a symlink is
        enabled by being there (disable removes the link); a file here is enabled by
        its execute bits; a script only the CTDB package provides is enabled by a new
        symlink to it."""
        name = name[:-len(".script")] if name.endswith(".script") else name
        if not name or "/" in name or name.startswith("."):
            raise EventError(f"invalid event script name {name!r}")
        path = os.path.join(self.dir, f"{name}.script")
        if os.path.islink(path):
            if not enabled:
                os.unlink(path)
            return {"script": name, "enabled": enabled}
        if os.path.isfile(path):
            mode = os.stat(path).st_mode
            x = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
            os.chmod(path, (mode | x) if enabled else (mode & ~x))
            return {"script": name, "enabled": enabled}
        if os.path.lexists(path):
            raise EventError(f"event script {path} is not a file or a link")
        if not enabled:
            return {"script": name, "enabled": False}
        target = os.path.join(os.path.realpath(self.data_dir), f"{name}.script")
        if not os.path.isfile(target):
            raise EventError(f"no event script {name!r} in {self.dir} or {self.data_dir}",
                             "ENOENT")
        os.makedirs(self.dir, exist_ok=True)
        os.symlink(target, path)
        return {"script": name, "enabled": True}

    # -- running -------------------------------------------------------------------------
    async def run(self, event, *args, timeout=None):
        if event not in EVENTS:
            raise EventError(f"unknown event {event!r} (events: {', '.join(EVENTS)})")
        lock = self._locks.setdefault(event, asyncio.Lock())
        async with lock:
            return await self._run(event, [str(a) for a in args], timeout)

    async def _run(self, event, args, timeout):
        if timeout is None:
            timeout = float(self.tunables.get("EventScriptTimeout"))
        t_start = time.time()
        deadline = time.monotonic() + timeout
        results, status = [], "OK"
        env = {**os.environ, "CTDB_BASE": self.config_dir, **self.env, "PYCTDB_EVENT": event}
        for name, path, enabled in self.scripts():
            if not enabled:
                results.append({"script": name, "status": "DISABLED", "rc": None,
                                "duration": 0.0, "output": "", "start": None})
                continue
            if status != "OK":
                results.append({"script": name, "status": "SKIPPED", "rc": None,
                                "duration": 0.0, "output": "", "start": None})
                continue
            s0 = time.time()
            m0 = time.monotonic()
            left = deadline - m0
            r = {"script": name, "start": s0}
            try:
                proc = await asyncio.create_subprocess_exec(
                    path, event, *args, stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                    env=env, cwd=self.dir, start_new_session=True)
            except OSError as exc:
                r.update(status="ERROR", rc=None, output=f"cannot run: {exc}",
                         duration=time.monotonic() - m0)
                results.append(r)
                status = "ERROR"
                continue
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), max(left, 0.001))
                rc = proc.returncode
                r.update(rc=rc, status="OK" if rc == 0 else "ERROR",
                         output=out.decode(errors="replace")[-OUTPUT_LIMIT:])
            except asyncio.TimeoutError:
                _kill_group(proc)
                await proc.wait()
                r.update(rc=None, status="TIMEDOUT",
                         output=f"killed after the event's {timeout:g}s timeout")
            except asyncio.CancelledError:  # e.g. the leader aborted its recovery
                _kill_group(proc)
                raise
            r["duration"] = time.monotonic() - m0
            if r["status"] != "OK":
                status = r["status"]
            results.append(r)
        res = {"event": event, "args": args, "status": status, "start": t_start,
               "duration": sum(x["duration"] for x in results), "scripts": results}
        self.last[event] = res
        if status != "OK":
            bad = next(x for x in results if x["status"] not in ("OK", "DISABLED", "SKIPPED"))
            log.error("event %s failed: %s %s%s: %s", event, bad["script"], bad["status"],
                      f" (exit {bad['rc']})" if bad["rc"] is not None else "",
                      bad["output"].strip().splitlines()[-1] if bad["output"].strip() else "")
        return res


def _kill_group(proc):
    """SIGKILL an event script and its children (it runs in a session of its own)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Notifications:
    """CTDB's notification script, ``CONFIG_DIR/notify.sh EVENT`` (Debian's runs every
    executable ``events/notification/*.script`` with EVENT), told of ``init``,
    ``setup``, ``startup``, ``healthy`` and ``unhealthy`` as ctdbd tells it: in the
    background (nothing waits for it), at most :data:`NOTIFY_TIMEOUT` seconds, a failure
    logged."""

    def __init__(self, config_dir, env=None):
        self.path = os.path.join(config_dir, NOTIFY_SCRIPT)
        self.env = {**os.environ, "CTDB_BASE": config_dir, **(env or {})}
        self._tasks = set()

    def __call__(self, event):
        if os.access(self.path, os.X_OK):
            spawn(self._run(event), name=f"notify-{event}", owner=self._tasks)

    async def _run(self, event):
        try:
            proc = await asyncio.create_subprocess_exec(
                self.path, event, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                env=self.env, start_new_session=True)
        except OSError as exc:
            log.error("notification script %s %s: cannot run: %s", self.path, event, exc)
            return
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), NOTIFY_TIMEOUT)
        except asyncio.TimeoutError:
            _kill_group(proc)
            await proc.wait()
            log.error("notification script %s %s: killed after %g s", self.path, event,
                      NOTIFY_TIMEOUT)
            return
        if proc.returncode != 0:
            log.error("notification script %s %s failed (exit %d): %s", self.path, event,
                      proc.returncode, out.decode(errors="replace").strip()[-500:])

    async def stop(self):
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def run_start_events(runner, notify) -> str | None:
    """CTDB's first two events, before the node joins: ``init`` then ``setup``, each
    followed by its notification. None when both succeed, else why (ctdbd stops when
    either fails, and so does pyctdbd)."""
    for event in ("init", "setup"):
        res = await runner.run(event)
        if res["status"] != "OK":
            return f"the {event} event failed ({res['status']}): the agent stops, as ctdbd"
        notify(event)
    return None


class Monitor:
    """Runs ``startup`` until it succeeds (every :data:`STARTUP_RETRY` seconds, the node
    UNHEALTHY meanwhile: it hosts no address, as CTDB holds back a node whose startup
    fails), then ``monitor`` every MonitorInterval, keeping the node's UNHEALTHY flag."""

    def __init__(self, cluster, runner, tunables, notify=None):
        self.cluster = cluster
        self.runner = runner
        self.tunables = tunables
        self.notify = notify or (lambda event: None)
        self._task = None
        self.failures = 0
        if runner.has_enabled():  # until the first successful monitor
            cluster.set_health("monitor", "no successful monitor event yet")

    def start(self):
        self._task = spawn(self._loop(), name="monitor")

    async def stop(self):
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _startup(self):
        while True:
            try:
                res = await self.runner.run("startup")
                ok = res["status"] == "OK"
            except Exception:
                log.exception("startup event failed to run")
                ok = False
            if ok:
                if self.cluster.set_health("startup", None):
                    log.warning("startup event OK: node %d may host addresses",
                                self.cluster.pnn)
                self.notify("startup")
                return
            if self.cluster.set_health("startup", "startup event failed"):
                log.warning("startup event failed: node %d is UNHEALTHY until it "
                            "succeeds (tried again every %g s)", self.cluster.pnn,
                            STARTUP_RETRY)
            await asyncio.sleep(STARTUP_RETRY)

    async def _loop(self):
        await self._startup()
        while True:
            t0 = time.monotonic()
            try:
                res = await self.runner.run("monitor")
                self._apply(res["status"] == "OK", res)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("monitor event failed to run")
            interval = float(self.tunables.get("MonitorInterval"))
            await asyncio.sleep(max(0.05, interval - (time.monotonic() - t0)))

    def _apply(self, ok, res):
        # (the node's UNHEALTHY flag: this check's and the others', Cluster.set_health)
        c = self.cluster
        if ok:
            self.failures = 0
            if c.set_health("monitor", None):
                log.warning("monitor event OK: node %d is healthy again", c.pnn)
                self.notify("healthy")
        else:
            self.failures += 1
            if c.set_health("monitor", f"monitor event {res['status']}"):
                log.warning("monitor event %s: node %d is UNHEALTHY", res["status"], c.pnn)
                self.notify("unhealthy")
