"""Event scripts in CTDB's layout, and service monitoring.

Scripts live in ``CONFIG_DIR/events/legacy/`` and are named ``NN.name.script``; a script
is enabled when it is executable (``pyctdb event script enable|disable`` flips that).
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

EVENTS = ("init", "setup", "startup", "monitor", "takeip", "releaseip", "updateip",
          "startipreallocate", "ipreallocated", "startrecovery", "recovered", "shutdown")
OUTPUT_LIMIT = 4096


class EventError(PyctdbError):
    """A request about events the runner cannot do: ``code`` EINVAL (an unknown event)
    or ENOENT (no such script)."""

    code = "EINVAL"


class EventRunner:
    """Runs an event's enabled scripts in order, with the event's timeout, and keeps
    each event's last result; enables and disables scripts."""

    def __init__(self, config_dir, tunables, component="legacy"):
        self.dir = os.path.join(config_dir, "events", component)
        self.config_dir = config_dir
        self.tunables = tunables
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

    def set_enabled(self, name, enabled):
        name = name[:-len(".script")] if name.endswith(".script") else name
        for n, path, _ in self.scripts():
            if n == name:
                mode = os.stat(path).st_mode
                x = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
                os.chmod(path, (mode | x) if enabled else (mode & ~x))
                return {"script": n, "enabled": enabled}
        raise EventError(f"no event script {name!r} in {self.dir}", "ENOENT")

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
        env = dict(os.environ, CTDB_BASE=self.config_dir, PYCTDB_EVENT=event)
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


class Monitor:
    """Runs ``monitor`` every MonitorInterval and keeps the node's UNHEALTHY flag."""

    def __init__(self, cluster, runner, tunables):
        self.cluster = cluster
        self.runner = runner
        self.tunables = tunables
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

    async def _loop(self):
        try:
            await self.runner.run("startup")
        except Exception:
            log.exception("startup event failed")
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
        else:
            self.failures += 1
            if c.set_health("monitor", f"monitor event {res['status']}"):
                log.warning("monitor event %s: node %d is UNHEALTHY", res["status"], c.pnn)
