#!/usr/bin/env python3
"""bench/ctdbtests/compare.py: CTDB's own client test programs on pyctdbd and on CTDB 4.17.

    bench/ctdbtests/build.sh                      # once: builds the programs (~25 s)
    bench/ctdbtests/compare.py [--nodes 3] [--runs 5] [--time 5] [--programs ...]
                               [--bin /var/cache/pyctdb-ctdbtests/bin] [--only pyctdb|ctdb]

fetch_ring, message_ring, fetch_loop and transaction_loop (Samba 4.17.12's
ctdb/tests/src, unchanged) run one process per node, all at once, each on its node's
CTDB socket (`-s`), with `-n NODES -t TIME`; they wait for each other (cluster_wait:
messages to node 0) and then run for TIME seconds. Both systems run on the same
NetnsLab (one network namespace a node on one bridge), one after the other in the same
invocation: first pyctdbd's agents (pyctdb.testing.localcluster), then Debian's ctdbd
(bench/ctdblab.py). Every run starts from the cluster of the previous run.

What a run's figure is (higher is better throughout):
  message_ring      mean over the nodes of "Ring[i]: X msgs/sec" (messages each node's
                    client received per second; two messages in flight, one each way)
  fetch_ring        mean over the nodes of "Fetch[i]: X msgs/sec" (one record
                    migrated round the ring by fetch-lock, a message to the next node
                    after each update)
  fetch_loop        the largest "Locks:N" any node printed, / TIME: fetch-locks a second
                    of the whole cluster on one contended record (the counter is kept
                    in the record)
  transaction_loop  the largest sum of a node's last "Transaction[i]: c0 c1 ..." line,
                    / TIME: transactions committed a second of the whole cluster on one
                    persistent database (every node increments its own counter in one
                    record; the program on node 0 checks that no counter goes back)

fetch_loop's and transaction_loop's counters are in the database, which a run finds as
the previous one left it: a run's figure is what its counters went up by, / TIME.

Prints median/min/max over --runs of each, side by side, and the ratio of the medians
pyctdb/CTDB, with issue 12's target. Needs root (namespaces), Debian's ctdb package and
the built programs.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "agent"))
sys.path.insert(0, os.path.join(HERE, ".."))

from pyctdb.testing.localcluster import LocalCluster  # noqa: E402
from pyctdb.testing.netns import NetnsLab  # noqa: E402

import ctdblab  # noqa: E402

DEFAULT_BIN = "/var/cache/pyctdb-ctdbtests/bin"
PROGRAMS = ("message_ring", "fetch_ring", "fetch_loop", "transaction_loop")
#: issue 12: pyctdb/CTDB at least
TARGETS = {"message_ring": 0.5, "fetch_ring": 0.5, "fetch_loop": 0.5, "transaction_loop": 2.0}
#: {(system, program): runs that failed}
FAILED = {}
UNITS = {"message_ring": "msgs/s per node", "fetch_ring": "msgs/s per node",
         "fetch_loop": "locks/s", "transaction_loop": "commits/s"}


def program_args(prog, nodes, seconds):
    """The arguments of prog, as CTDB's own integration tests give them."""
    args = ["-n", str(nodes), "-t", str(seconds)]
    if prog == "fetch_ring":
        args += ["-D", "fetch_ring.tdb", "-k", "testkey"]
    elif prog == "transaction_loop":
        args += ["-D", "transaction_loop.tdb", "-T", "persistent", "-k", "testkey"]
    return args


def rate(prog, outputs, seconds):
    """The run's figure from every node's stdout (see the module's docstring)."""
    if prog in ("message_ring", "fetch_ring"):
        word = "Ring" if prog == "message_ring" else "Fetch"
        rates = []
        for out in outputs:
            m = re.findall(rf"^{word}\[\d+\]: ([0-9.]+) msgs/sec", out, re.M)
            if not m:
                raise RuntimeError(f"{prog}: no rate in {out!r}")
            rates.append(float(m[-1]))
        return statistics.mean(rates)
    if prog == "fetch_loop":
        counts = [int(x) for out in outputs for x in re.findall(r"Locks:(\d+)", out)]
        if not counts:
            raise RuntimeError(f"{prog}: no count in {outputs!r}")
        return max(counts) / seconds
    sums = []
    for out in outputs:
        lines = re.findall(r"^Transaction\[\d+\]:((?: +\d+)+)", out, re.M)
        if lines:
            sums.append(sum(int(x) for x in lines[-1].split()))
    if not sums:
        raise RuntimeError(f"{prog}: no counters in {outputs!r}")
    return max(sums) / seconds


def run_program(binary, nodes, prog, seconds, timeout=None):
    """prog on every node at once; nodes: for each node, a function of the program's
    argv that gives (argv, env) to run it there. Returns the stdouts. Raises if one
    fails (its stderr in the message)."""
    procs = []
    for node in nodes:
        argv, env = node([os.path.join(binary, prog), *program_args(prog, len(nodes), seconds)])
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs, errors = [], []
    deadline = time.monotonic() + (timeout or seconds + 60)
    for i, p in enumerate(procs):
        try:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            errors.append(f"node {i}: timed out; {err.strip()[-500:]}")
        if p.returncode != 0 and p.returncode is not None and p.returncode != -9:
            errors.append(f"node {i}: rc {p.returncode}: {err.strip()[-500:]}")
        outs.append(out)
    if errors:
        raise RuntimeError(f"{prog}: " + "; ".join(errors) + f" (stdout: {outs!r})")
    return outs


def measure(binary, nodes, programs, runs, seconds, label):
    """{program: [figure of each run that succeeded]}; a run that fails (a program
    that exits with an error or hangs) is told on stderr and counted in FAILED."""
    res = {p: [] for p in programs}
    for prog in programs:
        before = 0.0  # (fetch_loop, transaction_loop: counters the database keeps)
        for i in range(runs):
            try:
                outs = run_program(binary, nodes, prog, seconds)
            except RuntimeError as exc:
                FAILED[label, prog] = FAILED.get((label, prog), 0) + 1
                print(f"  {label} {prog} run {i + 1} FAILED: {exc}", file=sys.stderr,
                      flush=True)
                before = None
                continue
            r = rate(prog, outs, seconds)
            if prog in ("fetch_loop", "transaction_loop"):
                if before is None:  # (a failed run left the counters where it did)
                    before = r
                    print(f"  {label} {prog} run {i + 1}: not counted (after a failed "
                          "run, where it started from is not known)", file=sys.stderr)
                    continue
                r, before = r - before, r
            res[prog].append(r)
            print(f"  {label} {prog} run {i + 1}: {res[prog][-1]:,.1f} {UNITS[prog]}",
                  file=sys.stderr, flush=True)
    return res


def on_pyctdb(lab, workdir, a):
    c = LocalCluster(a.nodes, base_dir=os.path.join(workdir, "pyctdb"), lab=lab,
                     log_level="NOTICE")
    try:
        c.start()
        c.wait_healthy(60)
        # in the node's network namespace, on its socket (a file of the host's tree)
        nodes = [lambda argv, i=i: (lab.exec_argv(lab.host_ns(i), [*argv, "-s", c.ctdb_socket(i)]),
                                    None) for i in range(a.nodes)]
        return measure(a.bin, nodes, a.programs, a.runs, a.time, "pyctdb")
    finally:
        c.stop_all()


def on_ctdb(lab, workdir, a):
    c = ctdblab.CtdbLab(lab, os.path.join(workdir, "ctdb"),
                        [lab.public_address(j) for j in range(a.nodes)])
    try:
        c.start(timeout=180)
        # in the node's namespaces (network and mount: the client opens the database
        # files where ctdbd says they are, /var/lib/ctdb/...), on /run/ctdb/ctdbd.socket
        nodes = [lambda argv, i=i: (c.in_node(i, [*argv, "-s", "/run/ctdb/ctdbd.socket"]),
                                    c.env(i)) for i in range(a.nodes)]
        return measure(a.bin, nodes, a.programs, a.runs, a.time, "CTDB")
    finally:
        c.close()


def fmt(vals):
    if not vals:
        return f"{'-':>10} {'-':>10} {'-':>10}"
    return (f"{statistics.median(vals):10,.1f} {min(vals):10,.1f} {max(vals):10,.1f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--time", type=int, default=5, help="seconds per run (-t)")
    ap.add_argument("--programs", nargs="+", default=list(PROGRAMS), choices=PROGRAMS)
    ap.add_argument("--bin", default=DEFAULT_BIN,
                    help="where build.sh put the programs (default %(default)s)")
    ap.add_argument("--only", choices=("pyctdb", "ctdb"), help="measure one system only")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and leave it (logs)")
    a = ap.parse_args()
    for p in a.programs:
        if not os.access(os.path.join(a.bin, p), os.X_OK):
            sys.exit(f"{a.bin}/{p} missing: run bench/ctdbtests/build.sh first")
    why = ctdblab.available()
    if why and a.only != "pyctdb":
        sys.exit(f"CTDB: {why}")
    workdir = a.keep or tempfile.mkdtemp(prefix="pyctdb-ctdbtests-")
    os.makedirs(workdir, exist_ok=True)
    lab = NetnsLab(a.nodes).create()
    py, ct = {}, {}
    try:
        if a.only != "ctdb":
            py = on_pyctdb(lab, workdir, a)
        if a.only != "pyctdb":
            ct = on_ctdb(lab, workdir, a)
    finally:
        lab.destroy()
        if not a.keep:
            subprocess.run(["rm", "-rf", workdir], check=False)
    print()
    print(f"CTDB's client test programs: {a.nodes} nodes (network namespaces), "
          f"-t {a.time}, {a.runs} runs; median min max")
    print(f"{'program':<17} {'unit':<16} {'pyctdb':>32} {'CTDB 4.17':>32} "
          f"{'ratio':>6}  target")
    for p in a.programs:
        r = (statistics.median(py[p]) / statistics.median(ct[p])
             if py.get(p) and ct.get(p) and statistics.median(ct[p]) else None)
        verdict = "" if r is None else ("met" if r >= TARGETS[p] else "NOT met")
        print(f"{p:<17} {UNITS[p]:<16} {fmt(py.get(p))} {fmt(ct.get(p))} "
              f"{'-' if r is None else f'{r:.2f}':>6}  >= {TARGETS[p]:g}x {verdict}")
    for (system, p), n in sorted(FAILED.items()):
        print(f"{system} {p}: {n} of {a.runs} runs failed (see above); not in the figures")


if __name__ == "__main__":
    main()
