"""Event scripts run for real (shell scripts in a temporary events/legacy directory)."""

import asyncio
import os
import time

import pytest

from pyctdb.server.events import EventError, EventRunner
from pyctdb.common.tunables import Tunables


def script(d, name, body, enabled=True):
    p = d / "events" / "legacy" / f"{name}.script"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("#!/bin/sh\n" + body + "\n")
    os.chmod(p, 0o755 if enabled else 0o644)
    return p


def run(runner, *a, **kw):
    return asyncio.run(runner.run(*a, **kw))


def test_order_args_and_disabled(tmp_path):
    log = tmp_path / "log"
    script(tmp_path, "20.second", f'echo "second $@" >> {log}')
    script(tmp_path, "10.first", f'echo "first $@" >> {log}')
    script(tmp_path, "30.off", f'echo off >> {log}', enabled=False)
    r = EventRunner(str(tmp_path), Tunables())
    res = run(r, "takeip", "eth0", "10.0.0.5", 24)
    assert res["status"] == "OK"
    assert log.read_text().splitlines() == ["first takeip eth0 10.0.0.5 24",
                                            "second takeip eth0 10.0.0.5 24"]
    assert [(s["script"], s["status"]) for s in res["scripts"]] == [
        ("10.first", "OK"), ("20.second", "OK"), ("30.off", "DISABLED")]


def test_failure_stops_the_event_and_is_reported(tmp_path):
    script(tmp_path, "10.bad", 'echo "smbd is not running" >&2; exit 3')
    script(tmp_path, "20.after", "exit 0")
    r = EventRunner(str(tmp_path), Tunables())
    res = run(r, "monitor")
    assert res["status"] == "ERROR"
    assert res["scripts"][0]["rc"] == 3 and "smbd is not running" in res["scripts"][0]["output"]
    assert res["scripts"][1]["status"] == "SKIPPED"
    assert r.last["monitor"] is res


def test_hung_script_is_killed_at_the_timeout(tmp_path):
    marker = tmp_path / "child-alive"
    script(tmp_path, "10.hang", f"(sleep 30; touch {marker}) & sleep 30")
    r = EventRunner(str(tmp_path), Tunables())
    t0 = time.monotonic()
    res = run(r, "monitor", timeout=0.5)
    assert res["status"] == "TIMEDOUT"
    assert time.monotonic() - t0 < 5
    time.sleep(0.2)
    assert not marker.exists()


def test_enable_disable_and_unknown(tmp_path):
    p = script(tmp_path, "10.x", "exit 0")
    r = EventRunner(str(tmp_path), Tunables())
    r.set_enabled("10.x", False)
    assert not os.access(p, os.X_OK)
    r.set_enabled("10.x.script", True)
    assert os.access(p, os.X_OK)
    with pytest.raises(EventError):
        r.set_enabled("99.nope", True)
    with pytest.raises(EventError):
        run(r, "nonsense")


def test_no_scripts_is_ok(tmp_path):
    r = EventRunner(str(tmp_path), Tunables())
    assert run(r, "monitor")["status"] == "OK"
    assert not r.has_enabled()
