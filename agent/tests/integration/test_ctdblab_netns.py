"""bench/ctdblab.py: real CTDB 4.17 (Debian's ctdbd) on 3 network namespaces hosts its
public addresses once each, moves one with `ctdb moveip` through the stock 10.interface,
and leaves no process, namespace or directory behind. Needs root, iproute2 and the ctdb
package (scripts/setup-host.sh installs it)."""

import os
import sys

import pytest

from pyctdb.testing.netns import NetnsLab

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import ctdblab  # noqa: E402

pytestmark = [
    pytest.mark.netns,
    pytest.mark.timeout(240),
    pytest.mark.skipif(ctdblab.available() is not None,
                       reason=f"ctdblab: {ctdblab.available()}"),
]


def _lab_processes(mark):
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if mark in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_ctdb_hosts_moves_and_cleans_up(tmp_path):
    lab = NetnsLab(3).create()
    d = tmp_path / "ctdb"
    pubs = [lab.public_address(j) for j in range(4)]
    c = ctdblab.CtdbLab(lab, str(d), pubs)
    try:
        c.start(timeout=120)

        def on_hosts():
            return {a: [i for i in range(3) if a in lab.addresses(i)] for a in pubs}
        c.wait_for(lambda: all(len(h) == 1 for h in on_hosts().values()), 30,
                   what="every address on one host")
        assert c.leader(0) in range(3)
        addr = pubs[0]
        target = (on_hosts()[addr][0] + 1) % 3
        c.ctdb(0, "moveip", addr, target)
        c.wait_for(lambda: on_hosts()[addr] == [target], 10, what="the address on its target")
        assert c.ip_all(0)[addr] == target
    finally:
        c.close()
        lab.destroy()
    assert not _lab_processes(f"CTDB_LAB_DIR={d}".encode())
    assert not d.exists()
