"""CTDB's stock 10.interface (Debian's ctdb package, byte for byte) on pyctdbd: a node
moved from CTDB keeps it enabled, and it adds and removes the public addresses itself
(``ip addr add ... brd +`` at takeip, ``ip addr del`` at releaseip, every address of
public_addresses dropped at init and shutdown). pyctdbd leaves the addresses to it,
checks that the takeip event put the address on the interface, and announces it.
Three agents in network namespaces (pyctdb.testing.netns), with CTDB's stock 00.ctdb,
05.system and 10.interface enabled as symlinks, Debian's functions beside them."""

import os
import shutil
import time

import pytest

from pyctdb.testing.localcluster import LocalCluster
from pyctdb.testing.netns import NetnsLab

STOCK = "/usr/share/ctdb/events/legacy"
NPUB = 6

pytestmark = [
    pytest.mark.skipif(not (os.path.exists(f"{STOCK}/10.interface.script")
                            and os.path.exists("/etc/ctdb/functions")),
                       reason="Debian's ctdb package (stock scripts, functions) is missing"),
    pytest.mark.timeout(240),
]


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    lab = NetnsLab(3).create()
    pub = "".join(f"{lab.public_address(j)}/24 eth0\n" for j in range(NPUB))
    c = LocalCluster(3, base_dir=str(tmp_path_factory.mktemp("stockif")), lab=lab,
                     public_addresses=pub, layout="ctdb", tunables={"MonitorInterval": 2})
    for p in range(3):
        etc = c.config_dir(p)
        for f in ("functions", "script.options"):
            shutil.copy2(os.path.join("/etc/ctdb", f), etc)
        legacy = os.path.join(etc, "events", "legacy")
        os.makedirs(legacy, exist_ok=True)
        for s in ("00.ctdb", "05.system", "10.interface"):
            os.symlink(f"{STOCK}/{s}.script", os.path.join(legacy, f"{s}.script"))
    try:
        c.start()
        c.wait_healthy(60)
        c.wait_for(lambda: hosted_once(c), 30, what="every address on exactly one node")
        yield c
    finally:
        c.stop_all()
        lab.destroy()


def on_nodes(c):
    """{address: [hosts whose eth0 has it]} for every public address."""
    out = {c.lab.public_address(j): [] for j in range(NPUB)}
    for p in range(3):
        for a in c.lab.addresses(p):
            if a in out:
                out[a].append(p)
    return out


def hosted_once(c):
    where = on_nodes(c)
    return all(len(v) == 1 for v in where.values()) and where


def test_the_stock_script_added_every_address(c):
    where = hosted_once(c)
    assert where
    ours = {ip["address"]: ip["pnn"] for ip in c.call(0, "ip", all=True)["ips"]}
    assert {a: v[0] for a, v in where.items()} == ours
    for p in range(3):
        for ev in ("init", "setup", "startup", "monitor"):
            res = c.call(p, "event_status", event=ev)
            assert res["status"] == "OK", (p, ev, res)
        if p in ours.values():
            res = c.call(p, "event_status", event="takeip")
            assert res["status"] == "OK", res
            assert [s["script"] for s in res["scripts"] if s["status"] == "OK"] == [
                "00.ctdb", "05.system", "10.interface"]


def test_moveip_the_script_releases_and_the_other_script_takes(c):
    addr = c.lab.public_address(0)
    src = on_nodes(c)[addr][0]
    dst = (src + 1) % 3
    assert c.cli(src, "moveip", addr, str(dst)).returncode == 0
    c.wait_for(lambda: on_nodes(c)[addr] == [dst], 20, what=f"{addr} on node {dst} only")
    rel = c.call(src, "event_status", event="releaseip")
    assert rel["status"] == "OK" and rel["args"][1] == addr


def test_a_killed_node_s_addresses_move_to_the_others(c):
    where = on_nodes(c)
    victim = next(p for p in range(3) if any(v == [p] for v in where.values()))
    mine = [a for a, v in where.items() if v == [victim]]
    t0 = time.monotonic()
    c.kill(victim)
    try:
        c.wait_for(lambda: all(on_nodes(c)[a] and victim not in on_nodes(c)[a]
                               for a in mine), 30, what="the victim's addresses elsewhere")
        assert time.monotonic() - t0 < 30
        assert all(len(v) == 1 for v in on_nodes(c).values())
    finally:
        c.start_node(victim)
        c.wait_healthy(60)
        c.wait_for(lambda: hosted_once(c), 30, what="every address on one node again")
