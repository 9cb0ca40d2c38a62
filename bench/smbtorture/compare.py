#!/usr/bin/env python3
"""smbtorture's suites against Samba clustered on pyctdb, beside the same Samba
unclustered, on one machine: which tests pass, and which differ.

    bench/smbtorture/compare.py [--suites smb2.lock smb2.oplock ...] [--dir DIR]

Three pyctdb agents (LocalCluster), one clustered smbd per node (SmbdNodes, each on its
node's address on ``lo``, port 445 of that address), and one smbd with
``clustering = no`` and otherwise the same settings (the baseline: what this Samba, this
configuration and this machine give without any cluster). Each suite runs against node
1's smbd (``--option=clustering=yes``, so that the cluster-only tests run) and against
the baseline; the script prints, per suite, the counts of success/failure/error/skip on
each side and every test whose result differs (exit 1 if one does worse on pyctdb).
The account is made with pdbedit on
node 0 (passdb.tdb: clustered).

A test that fails on both sides fails for the configuration (e.g. streams without
``vfs objects = streams_xattr``), not for the cluster. Beside real CTDB (ctdbd) in the
same run: to come (CTDB's volatile TDB paths are inside each ctdbd's mount namespace,
so its smbds must run there too; see bench/ctdblab.py).
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

from pyctdb.testing.localcluster import LocalCluster  # noqa: E402
from pyctdb.testing.samba import SmbdNodes  # noqa: E402

SUITES = ["smb2.lock", "smb2.oplock", "smb2.lease", "smb2.durable-open"]
PASSWORD = "torture-pw"
RESULT = re.compile(r"^(success|failure|error|skip|xfail): (\S+)")


def results(out):
    """{test: result} of smbtorture's subunit-like output."""
    got = {}
    for line in out.splitlines():
        m = RESULT.match(line)
        if m:
            got[m.group(2)] = m.group(1)
    return got


def torture(address, suite, clustered):
    argv = ["smbtorture", f"//{address}/data", "-U", f"root%{PASSWORD}", suite]
    if clustered:
        argv.insert(-1, "--option=clustering=yes")
    t0 = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    return results(p.stdout), time.monotonic() - t0


def add_account(smb_conf):
    subprocess.run(["pdbedit", "-s", smb_conf, "-a", "-u", "root", "-t"],
                   input=f"{PASSWORD}\n{PASSWORD}\n", capture_output=True, text=True,
                   check=True, timeout=120)


def counts(res):
    return {k: sum(1 for v in res.values() if v == k)
            for k in ("success", "failure", "error", "skip")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suites", nargs="+", default=SUITES)
    ap.add_argument("--dir", help="working directory (default: a temporary one)")
    a = ap.parse_args(argv)
    base = a.dir or tempfile.mkdtemp(prefix="pyctdb-smbtorture-")
    os.makedirs(base, exist_ok=True)
    c = LocalCluster(3, base_dir=os.path.join(base, "pyctdb"))
    solo_addr = f"127.0.{c.subnet}.200"
    nodes = SmbdNodes(os.path.join(base, "clustered"), [c.address(p) for p in range(3)],
                      [c.ctdb_socket(p) for p in range(3)], port=445)
    solo = SmbdNodes(os.path.join(base, "solo"), [solo_addr], [""], port=445,
                     extra="clustering = no")
    try:
        c.start()
        c.wait_healthy(60)
        nodes.start()
        solo.start()
        add_account(nodes.smb[0])
        add_account(solo.smb[0])
        differ = 0
        for suite in a.suites:
            on_pyctdb, t_p = torture(c.address(1), suite, True)
            alone, t_s = torture(solo_addr, suite, False)
            print(f"{suite}: pyctdb {counts(on_pyctdb)} in {t_p:.0f} s; "
                  f"unclustered {counts(alone)} in {t_s:.0f} s", flush=True)
            for test in sorted(set(on_pyctdb) | set(alone)):
                x, y = on_pyctdb.get(test, "-"), alone.get(test, "-")
                if x != y:
                    # (a cluster-only test passing where the baseline skips it is fine)
                    worse = x not in ("success", "skip", "xfail")
                    differ += worse
                    print(f"  {test}: pyctdb {x}, unclustered {y}"
                          + ("  <- worse on pyctdb" if worse else ""))
        print(f"tests that do worse on pyctdb: {differ}")
        return 1 if differ else 0
    finally:
        solo.stop()
        nodes.stop()
        c.stop_all()


if __name__ == "__main__":
    sys.exit(main())
