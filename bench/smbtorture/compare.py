#!/usr/bin/env python3
"""smbtorture's suites against Samba clustered on pyctdb and against the same Samba
clustered on real CTDB (Debian's ctdbd 4.17) in one run: which tests pass on each side,
and which differ.

    bench/smbtorture/compare.py [--suites smb2.lock base.delete ...] [--dir DIR]
                                [--no-ctdb] [--unclustered]

Two labs of network namespaces (pyctdb.testing.netns), three hosts each, one for each
cluster manager: three pyctdbd agents (LocalCluster in the lab), and three ctdbds
(bench/ctdblab.py: each in a mount namespace of its own where the node's directories are
/etc/ctdb, /run and /var/lib/ctdb). On every host one clustered smbd (SmbdNodes) on the
host's address, port 445, with the same smb.conf on both sides but for ``ctdbd socket``
(pyctdbd's socket; ctdbd's compiled-in /run/ctdb/ctdbd.socket, seen in the node's mount
namespace, where its smbd runs too: ctdbd's volatile databases are there), and
``server min protocol = NT1`` (base.delete is SMB1). The share is one host directory. The
account is made with pdbedit on node 0 (passdb.tdb: clustered). Each suite runs from the
lab's client namespace against node 1's smbd (``--option=clustering=yes``, so that the
cluster-only tests run); SMB1 suites (base.*, raw.*) with ``-m NT1``.

The script prints, per suite, success/failure/error/skip on each side and every test
whose result differs, then the failing tests of each side; DIR/results.txt has every
test's result side by side. Exit 1 if a test passes on CTDB and does not on pyctdb.
``--unclustered`` adds the same smbd with ``clustering = no`` on the host's loopback
(what this Samba, this configuration and this machine give without any cluster).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "agent"))
sys.path.insert(0, os.path.join(HERE, ".."))

from ctdblab import CtdbLab, available as ctdb_available  # noqa: E402
from pyctdb.testing.localcluster import LocalCluster  # noqa: E402
from pyctdb.testing.netns import NetnsLab  # noqa: E402
from pyctdb.testing.samba import SmbdNodes  # noqa: E402

SUITES = ["smb2.lock", "smb2.oplock", "smb2.lease", "smb2.durable-open", "base.delete"]
PASSWORD = "torture-pw"
RESULT = re.compile(r"^(success|failure|error|skip|xfail): (\S+)")
#: both sides' smb.conf: SMB1 allowed (base.delete)
EXTRA = "server min protocol = NT1"
PASSED = ("success", "skip", "xfail")


def results(out):
    """{test: result} of smbtorture's subunit-like output."""
    got = {}
    for line in out.splitlines():
        m = RESULT.match(line)
        if m:
            got[m.group(2)] = m.group(1)
    return got


def smb1(suite):
    return suite.split(".")[0] in ("base", "raw", "rap", "unix")


class Side:
    """One smbtorture target: ``name``, the argv prefix that runs a client program
    (``client``), the address of the smbd to test, its SmbdNodes."""

    def __init__(self, name, client, address, nodes, clustered=True):
        self.name, self.client, self.address, self.nodes = name, client, address, nodes
        self.clustered = clustered
        #: every new connection of a test to the next node (smbtorture's unclist)
        self.cross_node = False
        self.unclist = None

    def write_unclist(self, base):
        """The share on each node, node 1 first (``torture:unclist``: a test's n-th
        connection goes to line n modulo the lines)."""
        self.unclist = os.path.join(base, f"unclist-{self.name}")
        order = [1, 2, 0] if len(self.nodes.addresses) == 3 else range(
            len(self.nodes.addresses))
        with open(self.unclist, "w") as f:
            f.write("".join(f"//{self.nodes.addresses[p]}/data\n" for p in order))

    def torture_argv(self, suite, extra=()):
        argv = ["smbtorture", f"//{self.address}/data", "-U", f"root%{PASSWORD}"]
        if self.clustered:
            argv.append("--option=clustering=yes")
        if self.cross_node:
            argv.append(f"--option=torture:unclist={self.unclist}")
        if smb1(suite):
            argv += ["-m", "NT1", "--option=client min protocol=NT1"]
        return self.client + argv + list(extra) + [suite]

    def torture(self, suite, log):
        t0 = time.monotonic()
        p = subprocess.run(self.torture_argv(suite), capture_output=True, text=True,
                           timeout=3600)
        with open(log, "w") as f:
            f.write(p.stdout + p.stderr)
        got = {(t if t.startswith(suite + ".") else f"{suite}.{t}"): r
               for t, r in results(p.stdout).items()}
        return got, time.monotonic() - t0

    def add_account(self):
        self.nodes.run(0, ["pdbedit", "-s", self.nodes.smb[0], "-a", "-u", "root", "-t"],
                       input=f"{PASSWORD}\n{PASSWORD}\n")


def counts(res):
    return {k: sum(1 for v in res.values() if v == k)
            for k in ("success", "failure", "error", "skip")}


def fmt_counts(res):
    c = counts(res)
    return f"{c['success']}/{c['failure']}/{c['error']}/{c['skip']}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suites", nargs="+", default=SUITES)
    ap.add_argument("--dir", help="working directory, kept (default: a temporary one)")
    ap.add_argument("--no-ctdb", action="store_true", help="pyctdb's side only")
    ap.add_argument("--unclustered", action="store_true",
                    help="also the same smbd unclustered (clustering = no)")
    ap.add_argument("--cross-node", action="store_true",
                    help="each new connection of a test to the next node (node 1, 2, 0: "
                         "smbtorture's torture:unclist), so that oplock and lease breaks, "
                         "share modes and locks cross the cluster")
    ap.add_argument("--smbd-log-level", type=int, default=1,
                    help="smbd's -d (10: everything; logs in DIR/<side>/samba*/log.*)")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("compare.py: needs root (namespaces, smbd)")
    if not a.no_ctdb and ctdb_available():
        sys.exit(f"compare.py: real CTDB: {ctdb_available()} (or --no-ctdb)")
    base = a.dir or tempfile.mkdtemp(prefix="pyctdb-smbtorture-")
    os.makedirs(base, exist_ok=True)
    cleanup = []
    try:
        sides = open_sides(base, cleanup, ctdb=not a.no_ctdb, unclustered=a.unclustered,
                           log_level=a.smbd_log_level)
        if a.cross_node:
            for s in sides:
                s.cross_node = s.clustered
        return compare(sides, a.suites, base)
    finally:
        close(cleanup)
        if not a.dir:
            print(f"(logs kept in {base})")


def close(cleanup):
    """Undo what open_sides did, last first."""
    for f in reversed(cleanup):
        try:
            f()
        except Exception as exc:  # noqa: BLE001 - teardown goes on
            print(f"teardown: {exc}", file=sys.stderr)


def open_sides(base, cleanup, ctdb=True, unclustered=False, log_level=1):
    """Samba clustered on three pyctdbd agents and (``ctdb``) on three ctdbds, each in a
    lab of network namespaces, smbd on every host, the account made: the Sides, pyctdb's
    first. Each step's undo is appended to ``cleanup`` (see :func:`close`)."""
    sides = []
    lab = NetnsLab(3).create()
    cleanup.append(lab.destroy)
    c = LocalCluster(3, base_dir=os.path.join(base, "pyctdb", "c"), lab=lab)
    cleanup.append(c.stop_all)
    c.start()
    c.wait_healthy(60)
    nodes = SmbdNodes(os.path.join(base, "pyctdb"), [c.address(p) for p in range(3)],
                      [c.ctdb_socket(p) for p in range(3)], port=445, extra=EXTRA,
                      wrap=lambda p, argv, lab=lab: lab.exec_argv(lab.host_ns(p), argv),
                      log_level=log_level)
    cleanup.append(nodes.stop)
    nodes.start()
    sides.append(Side("pyctdb", lab.exec_argv(lab.client_ns, []), c.address(1), nodes))
    if ctdb:
        clab = NetnsLab(3).create()
        cleanup.append(clab.destroy)
        ct = CtdbLab(clab, os.path.join(base, "ctdb", "lab"), [])
        cleanup.append(ct.close)
        ct.start(timeout=120)
        cnodes = SmbdNodes(os.path.join(base, "ctdb"),
                           [clab.host_address(p) for p in range(3)],
                           ["/run/ctdb/ctdbd.socket"] * 3, port=445, extra=EXTRA,
                           wrap=ct.in_node, log_level=log_level)
        cleanup.append(cnodes.stop)
        cnodes.start()
        sides.append(Side("CTDB", clab.exec_argv(clab.client_ns, []),
                          clab.host_address(1), cnodes))
    if unclustered:
        solo_addr = f"127.0.{c.subnet}.200"
        solo = SmbdNodes(os.path.join(base, "solo"), [solo_addr], [""], port=445,
                         extra=EXTRA + "\nclustering = no")
        cleanup.append(solo.stop)
        solo.start()
        sides.append(Side("unclustered", [], solo_addr, solo, clustered=False))
    for s in sides:
        s.add_account()
        s.write_unclist(base)
    return sides


def compare(sides, suites, base):
    names = [s.name for s in sides]
    ref = "CTDB" if "CTDB" in names else names[-1]
    worse = []
    table = []
    fails = {n: [] for n in names}
    print("per suite, success/failure/error/skip: " + "; ".join(names), flush=True)
    for suite in suites:
        res, secs = {}, {}
        for s in sides:
            res[s.name], secs[s.name] = s.torture(
                suite, os.path.join(base, f"{s.name}-{suite}.log"))
        print(f"{suite}: " + "; ".join(f"{n} {fmt_counts(res[n])} in {secs[n]:.0f} s"
                                       for n in names), flush=True)
        for test in sorted(set().union(*res.values())):
            row = [res[n].get(test, "-") for n in names]
            table.append((test, row))
            for n, r in zip(names, row):
                if r not in PASSED:
                    fails[n].append(test)
            if len(set(row)) > 1:
                bad = (names[0] != ref and row[0] not in PASSED
                       and res[ref].get(test) in PASSED)
                if bad:
                    worse.append(test)
                print(f"  {test}: " + ", ".join(f"{n} {r}" for n, r in zip(names, row))
                      + (f"  <- passes on {ref}, not on pyctdb" if bad else ""))
    with open(os.path.join(base, "results.txt"), "w") as f:
        f.write("test " + " ".join(names) + "\n")
        for test, row in table:
            f.write(f"{test} {' '.join(row)}\n")
    for n in names:
        print(f"failing on {n} ({len(fails[n])}): " + (" ".join(fails[n]) or "none"))
    print(f"tests that pass on {ref} and not on pyctdb: {len(worse)}"
          + (f" ({' '.join(worse)})" if worse else ""))
    print(f"every test's result side by side: {os.path.join(base, 'results.txt')}")
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main())
