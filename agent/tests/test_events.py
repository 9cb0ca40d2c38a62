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


# -- CTDB's layout: scripts provided by the package, enabled by a symlink ----------------
def provided(tmp_path, *names):
    """A stand-in for /usr/share/ctdb: DATADIR/events/legacy/NAME.script, executable (as
    Debian ships them)."""
    d = tmp_path / "share"
    for n in names:
        p = d / "events" / "legacy" / f"{n}.script"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("#!/bin/sh\necho provided $1\n")
        os.chmod(p, 0o755)
    return d


def test_a_provided_script_is_enabled_by_a_symlink_and_disabled_by_removing_it(tmp_path):
    share = provided(tmp_path, "00.ctdb", "10.interface")
    etc = tmp_path / "etc"
    script(etc, "50.mine", "exit 0")
    r = EventRunner(str(etc), Tunables(), datadir=str(share))
    assert [(s["script"], s["enabled"], s["provided"]) for s in r.script_list()] == [
        ("00.ctdb", False, True), ("10.interface", False, True), ("50.mine", True, False)]

    r.set_enabled("00.ctdb", True)
    link = etc / "events" / "legacy" / "00.ctdb.script"
    assert os.readlink(link) == str(share / "events" / "legacy" / "00.ctdb.script")
    assert [s["script"] for s in r.script_list() if s["enabled"]] == ["00.ctdb", "50.mine"]
    assert run(r, "monitor")["scripts"][0]["output"] == "provided monitor\n"

    r.set_enabled("00.ctdb", False)
    assert not os.path.lexists(link)
    # the package's file is left as it was (never chmod'ed through the link)
    assert os.access(share / "events" / "legacy" / "00.ctdb.script", os.X_OK)
    r.set_enabled("00.ctdb", False)  # (disabling a disabled script: nothing to do, as CTDB)
    with pytest.raises(EventError) as e:
        r.set_enabled("77.missing", True)
    assert e.value.code == "ENOENT"
    with pytest.raises(EventError):
        r.set_enabled("../../evil", True)


def test_a_local_file_is_still_enabled_by_its_execute_bits(tmp_path):
    share = provided(tmp_path, "10.interface")
    etc = tmp_path / "etc"
    p = script(etc, "10.interface", "exit 0")  # (a local copy, not a link)
    r = EventRunner(str(etc), Tunables(), datadir=str(share))
    r.set_enabled("10.interface", False)
    assert not os.access(p, os.X_OK) and not os.path.islink(p)
    assert [(s["script"], s["enabled"], s["provided"]) for s in r.script_list()] == [
        ("10.interface", False, True), ("10.interface", False, False)]


def test_scripts_get_ctdbs_environment(tmp_path):
    from pyctdb.common.config import Config
    from pyctdb.server.events import script_environment
    cfg = Config(config_dir=str(tmp_path), state_db_dir="/var/lib/ctdb/state",
                 volatile_db_dir="/var/lib/ctdb/volatile",
                 persistent_db_dir="/var/lib/ctdb/persistent", log_location="syslog",
                 log_level="INFO")
    env = script_environment(cfg, "/run/x/ctdbd.socket")
    names = ("CTDB_BASE", "CTDB_VARDIR", "CTDB_SCRIPT_VARDIR", "CTDB_DBDIR",
             "CTDB_DBDIR_PERSISTENT", "CTDB_DBDIR_STATE", "CTDB_LOGGING", "CTDB_DEBUGLEVEL",
             "CTDB_SOCKET")
    script(tmp_path, "10.env", "; ".join(f'echo "{n}=${n}"' for n in names))
    r = EventRunner(str(tmp_path), Tunables(), env=env)
    out = run(r, "monitor")["scripts"][0]["output"].splitlines()
    assert out == [f"CTDB_BASE={tmp_path}", "CTDB_VARDIR=/var/lib/ctdb",
                   "CTDB_SCRIPT_VARDIR=/var/lib/ctdb/scripts",
                   "CTDB_DBDIR=/var/lib/ctdb/volatile",
                   "CTDB_DBDIR_PERSISTENT=/var/lib/ctdb/persistent",
                   "CTDB_DBDIR_STATE=/var/lib/ctdb/state", "CTDB_LOGGING=syslog",
                   "CTDB_DEBUGLEVEL=INFO", "CTDB_SOCKET=/run/x/ctdbd.socket"]


def test_init_and_setup_run_in_order_and_a_failure_says_which(tmp_path):
    from pyctdb.server.events import run_start_events
    log = tmp_path / "log"
    script(tmp_path, "10.x", f'echo "$1" >> {log}; [ "$1" != setup ] || [ ! -e {tmp_path}/bad ]')
    r = EventRunner(str(tmp_path), Tunables())
    told = []
    assert asyncio.run(run_start_events(r, told.append)) is None
    assert log.read_text().split() == ["init", "setup"] and told == ["init", "setup"]
    (tmp_path / "bad").touch()
    told.clear()
    why = asyncio.run(run_start_events(r, told.append))
    assert "setup event failed" in why and told == ["init"]


def test_the_notification_script_hears_the_event(tmp_path):
    from pyctdb.server.events import Notifications
    out = tmp_path / "heard"
    nd = tmp_path / "events" / "notification"
    nd.mkdir(parents=True)
    # Debian's notify.sh, byte for byte when the ctdb package is installed
    debian = "/etc/ctdb/notify.sh"
    if os.path.exists(debian):
        (tmp_path / "notify.sh").write_bytes(open(debian, "rb").read())
    else:
        (tmp_path / "notify.sh").write_text(
            '#!/bin/sh\nfor i in "$(dirname "$0")"/events/notification/*.script; do\n'
            '[ -x "$i" ] && "$i" "$1"; done\n')
    os.chmod(tmp_path / "notify.sh", 0o755)
    (nd / "20.log.script").write_text(f'#!/bin/sh\necho "$1 $CTDB_SOCKET" >> {out}\n')
    os.chmod(nd / "20.log.script", 0o755)

    async def go():
        n = Notifications(str(tmp_path), env={"CTDB_SOCKET": "/run/s"})
        n("unhealthy")
        n("healthy")
        for _ in range(100):
            await asyncio.sleep(0.05)
            if out.exists() and len(out.read_text().splitlines()) == 2:
                break
        await n.stop()
    asyncio.run(go())
    assert sorted(out.read_text().splitlines()) == ["healthy /run/s", "unhealthy /run/s"]
