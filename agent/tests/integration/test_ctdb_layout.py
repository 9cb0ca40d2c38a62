"""pyctdbd on a configuration directory laid out as Debian's ctdb package lays out
/etc/ctdb: ctdb.conf, ctdb.tunables, Debian's own ``functions``, ``notify.sh`` and
``script.options``, and CTDB's stock event scripts enabled by symlinks into
/usr/share/ctdb/events/legacy. The stock scripts run unchanged, in CTDB's order (init,
setup, startup, monitor), and do what they do on CTDB: 00.ctdb's init makes its state
directory, its startup attaches ``ctdb.tdb`` (persistent) with Debian's ``ctdb`` tool
through pyctdbd's CTDB socket. The notification script hears init, setup and startup."""

import os
import shutil
import subprocess
import sys

import pytest

from pyctdb.testing.localcluster import LocalCluster

STOCK = "/usr/share/ctdb/events/legacy"
DEBIAN_ETC = "/etc/ctdb"

pytestmark = [
    pytest.mark.skipif(not (os.path.isdir(STOCK) and os.path.exists(f"{DEBIAN_ETC}/functions")
                            and shutil.which("ctdb")),
                       reason="Debian's ctdb package (stock scripts, functions, tool) is missing"),
    pytest.mark.timeout(180),
]


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    base = tmp_path_factory.mktemp("ctdblayout")
    c = LocalCluster(2, base_dir=str(base), layout="ctdb",
                     tunables={"MonitorInterval": 1})
    for p in range(2):
        etc = c.config_dir(p)
        for f in ("functions", "notify.sh", "script.options"):  # (Debian's, as they are)
            shutil.copy2(os.path.join(DEBIAN_ETC, f), etc)
        legacy = os.path.join(etc, "events", "legacy")
        os.makedirs(legacy, exist_ok=True)
        for s in ("00.ctdb", "01.reclock"):
            os.symlink(os.path.join(STOCK, f"{s}.script"),
                       os.path.join(legacy, f"{s}.script"))
        note = os.path.join(etc, "events", "notification")
        os.makedirs(note, exist_ok=True)
        with open(os.path.join(note, "10.record.script"), "w") as f:
            f.write(f'#!/bin/sh\necho "$1" >> {c.node_dir(p)}/notified\n')
        os.chmod(os.path.join(note, "10.record.script"), 0o755)
    with c:
        c.start()
        c.wait_healthy(60)
        yield c


def test_the_files_are_ctdbs(c):
    etc = c.config_dir(0)
    assert os.path.exists(os.path.join(etc, "ctdb.conf"))
    assert not os.path.exists(os.path.join(etc, "pyctdb.conf"))
    assert os.path.exists(os.path.join(etc, "ctdb.tunables"))
    assert c.cli_ok(0, "getvar", "MonitorInterval").split() == ["MonitorInterval", "=", "1"]


def test_stock_scripts_ran_init_setup_and_startup_with_their_effects(c):
    for p in range(2):
        init = c.call(p, "event_status", event="init")
        assert init["status"] == "OK", init
        assert [s["script"] for s in init["scripts"]] == ["00.ctdb", "01.reclock"]
        assert c.call(p, "event_status", event="setup")["status"] == "OK"
        c.wait_for(lambda p=p: c.call(p, "event_status", event="startup")["status"] == "OK",
                   30, what=f"node {p}'s startup event")
        # 00.ctdb's init: rm -rf and mkdir its CTDB_SCRIPT_VARDIR (under the node's own
        # database directories here, not /var/lib/ctdb)
        assert os.path.isdir(os.path.join(c.node_dir(p), "db", "scripts"))
    # 00.ctdb's startup: "$CTDB attach ctdb.tdb persistent", Debian's ctdb tool on our
    # CTDB socket (CTDB_SOCKET in the scripts' environment)
    dbs = c.call(0, "getdbmap")["dbs"]
    assert any(d["name"] == "ctdb.tdb" and d["persistent"] for d in dbs), dbs


def test_monitor_runs_the_stock_scripts_and_the_node_is_healthy(c):
    res = c.call(1, "event_status", event="monitor")
    assert res["status"] == "OK"
    assert [s["script"] for s in res["scripts"]] == ["00.ctdb", "01.reclock"]
    assert c.status(0)["nodes"][1]["state"] == "OK"


def test_the_notification_script_heard_ctdbs_events(c):
    for p in range(2):
        path = os.path.join(c.node_dir(p), "notified")
        c.wait_for(lambda: os.path.exists(path) and "startup" in open(path).read(), 30,
                   what="the startup notification")
        assert open(path).read().split()[:3] == ["init", "setup", "startup"]


def test_script_list_and_enable_disable_as_ctdb(c):
    out = c.cli_ok(0, "event", "script", "list")
    lines = out.splitlines()
    assert "* 00.ctdb" in lines and "* 01.reclock" in lines
    assert "  10.interface" in lines  # provided by the package, not enabled
    legacy = os.path.join(c.config_dir(0), "events", "legacy")
    assert c.cli(0, "event", "script", "enable", "legacy", "05.system").returncode == 0
    assert os.readlink(os.path.join(legacy, "05.system.script")) == \
        os.path.join(os.path.realpath(STOCK), "05.system.script")
    assert "* 05.system" in c.cli_ok(0, "event", "script", "list").splitlines()
    assert c.cli(0, "event", "script", "disable", "legacy", "05.system").returncode == 0
    assert not os.path.lexists(os.path.join(legacy, "05.system.script"))
    assert os.access(os.path.join(STOCK, "05.system.script"), os.X_OK)  # (untouched)


def test_a_failing_init_stops_the_agent_as_ctdbd(c, tmp_path):
    dest = c.config_copy(1, str(tmp_path / "etc"))
    c.stop(1)
    try:
        bad = os.path.join(dest, "events", "legacy", "02.bad.script")
        with open(bad, "w") as f:
            f.write('#!/bin/sh\n[ "$1" = init ] && { echo "cannot start"; exit 1; }\nexit 0\n')
        os.chmod(bad, 0o755)
        r = subprocess.run([sys.executable, "-m", "pyctdb.server.daemon", "--config-dir", dest,
                            "--socket", str(tmp_path / "api.sock"), "--ctdb-socket", "none"],
                           capture_output=True, text=True, timeout=60, env=c.cli_env())
        assert r.returncode == 1
        assert "the init event failed" in r.stderr
    finally:
        c.start_node(1)
        c.wait_healthy(60)
