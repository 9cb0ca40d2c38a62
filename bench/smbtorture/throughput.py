#!/usr/bin/env python3
"""Samba's throughput on pyctdb beside the same Samba on real CTDB 4.17, in one run:
smbtorture's ``smb2.bench.path-contention-shared`` (Debian's samba-testsuite) against one
node and against the three nodes at once.

    bench/smbtorture/throughput.py [--runs 5] [--seconds 10] [--nprocs 6] [--dir DIR]

Every connection of the benchmark opens and closes the same file, as fast as it can:
each open and each close is a change of that file's record in locking.tdb (Samba's
share-mode database, a volatile clustered database). Against one node the record stays
on that node (what the cluster manager costs when it is not asked); against three
(``torture:unclist``: the connections go to nodes 1, 2, 0, 1, ...) every open on a node
that does not hold the record has it migrated there first (REQ_CALL: the record
bounces between the nodes, the cluster manager's hardest case).

The labs are bench/smbtorture/compare.py's (network namespaces; one smbd per host; the
same smb.conf on both sides but for the CTDB socket). Each run measures pyctdb then CTDB
(alternating which goes first), ``--seconds`` each; a run's figure is the opens per
second over the whole time smbtorture reports. Prints median/min/max for each side and
the ratio pyctdb/CTDB (higher is better for pyctdb; issue 12's target: >= 1.0).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from compare import close, open_sides  # noqa: E402

TEST = "smb2.bench.path-contention-shared"
#: smbtorture's line per second: "N.NN second: open[num/s=1038,avslat=...] close[...]"
SECOND = re.compile(r"^\s*([\d.]+) seconds?: open\[num/s=(\d+),")


def opens_per_second(out):
    """Opens per second over the run (smbtorture prints each second's count)."""
    rows = [(float(m.group(1)), int(m.group(2)))
            for m in map(SECOND.match, out.splitlines()) if m]
    if not rows:
        raise RuntimeError("no per-second figures in smbtorture's output:\n" + out[-2000:])
    # each row counts the opens since the row before
    prev, total = 0.0, 0.0
    for t, n in rows:
        total += n * (t - prev)
        prev = t
    return total / prev


def run(side, cross_node, seconds, nprocs, log):
    side.cross_node = cross_node
    argv = side.torture_argv(TEST, [f"--option=torture:timelimit={seconds}",
                                    f"--option=torture:nprocs={nprocs}", "--format=simple"])
    p = subprocess.run(argv, capture_output=True, text=True, timeout=seconds * 10 + 120)
    with open(log, "a") as f:
        f.write(" ".join(argv) + "\n" + p.stdout + p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"{side.name}: smbtorture failed ({p.returncode}):\n"
                           + (p.stdout + p.stderr)[-2000:])
    return opens_per_second(p.stdout)


def stats(xs):
    return statistics.median(xs), min(xs), max(xs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=10, help="each measurement's length")
    ap.add_argument("--nprocs", type=int, default=6, help="smbtorture's connections")
    ap.add_argument("--dir", help="working directory, kept (default: a temporary one)")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("throughput.py: needs root (namespaces, smbd)")
    base = a.dir or tempfile.mkdtemp(prefix="pyctdb-smbthroughput-")
    os.makedirs(base, exist_ok=True)
    cleanup = []
    try:
        sides = open_sides(base, cleanup)
        if len(sides) < 2:
            sys.exit("throughput.py: real CTDB is not available here")
        got = {(s.name, x): [] for s in sides for x in (False, True)}
        for i in range(a.runs):
            for cross in (False, True):
                order = sides if i % 2 == 0 else list(reversed(sides))
                for s in order:
                    v = run(s, cross, a.seconds, a.nprocs,
                            os.path.join(base, f"{s.name}.log"))
                    got[(s.name, cross)].append(v)
                    print(f"run {i + 1}: {s.name}, {'3 nodes' if cross else '1 node'}: "
                          f"{v:.0f} opens/s", flush=True)
        print(f"\n{TEST}, {a.nprocs} connections, {a.seconds} s, {a.runs} runs "
              "(opens per second: median / min / max)")
        print(f"{'':10} {'pyctdb':>22} {'CTDB 4.17':>22} {'ratio pyctdb/CTDB':>18}")
        for cross in (False, True):
            p, c = stats(got[("pyctdb", cross)]), stats(got[("CTDB", cross)])
            print(f"{'3 nodes' if cross else '1 node':10} "
                  f"{p[0]:8.0f} / {p[1]:5.0f} / {p[2]:5.0f} "
                  f"{c[0]:8.0f} / {c[1]:5.0f} / {c[2]:5.0f} {p[0] / c[0]:17.2f}x")
        return 0
    finally:
        close(cleanup)
        if not a.dir:
            print(f"(logs kept in {base})")


if __name__ == "__main__":
    sys.exit(main())
