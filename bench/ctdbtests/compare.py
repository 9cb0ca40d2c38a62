#!/usr/bin/env python3
"""bench/ctdbtests/compare.py: CTDB's own client test programs on pyctdbd and on CTDB 4.17.

    bench/ctdbtests/build.sh                      # once: builds the programs (~25 s)
    bench/ctdbtests/compare.py [--nodes 3] [--runs 5] [--time 5] [--programs ...]
                               [--bin /var/cache/pyctdb-ctdbtests/bin] [--only pyctdb|ctdb]

fetch_ring, message_ring, fetch_loop and transaction_loop (Samba 4.17.12's
ctdb/tests/src, unchanged) run one process per node, all at once, each on its node's
CTDB socket (`-s`), with `-n NODES -t TIME`; they wait for each other (cluster_wait:
messages to node 0) and then run for TIME seconds. Both systems run on the same
kind of NetnsLab (one network namespace a node on one bridge), a lab each, in the same
invocation: pyctdbd's agents (pyctdb.testing.localcluster) and Debian's ctdbd
(bench/ctdblab.py) are both started, then each run of a program is taken on pyctdb and
right after on CTDB, in turn, so that both meet the same load of the machine. Every
run starts from the cluster of the previous run.

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
import contextlib
import os
import re
import shutil
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
    fails (its stderr in the message). No process outlives it."""
    procs = []
    try:
        for node in nodes:
            argv, env = node([os.path.join(binary, prog),
                              *program_args(prog, len(nodes), seconds)])
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
            if p.returncode not in (0, -9):
                errors.append(f"node {i}: rc {p.returncode}: {err.strip()[-500:]}")
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if errors:
        raise RuntimeError(f"{prog}: " + "; ".join(errors) + f" (stdout: {outs!r})")
    return outs


class System:
    """One system under test: its nodes (how to run a program on each), and the figures
    of its runs so far."""

    def __init__(self, label, nodes, programs):
        self.label = label
        self.nodes = nodes
        self.res = {p: [] for p in programs}
        self.before = {p: 0.0 for p in programs}  # (counters the database keeps)

    def run(self, binary, prog, i, seconds):
        """Run i of prog: its figure into res; a run that fails (a program that exits
        with an error or hangs) is told on stderr and counted in FAILED."""
        label = self.label
        try:
            outs = run_program(binary, self.nodes, prog, seconds)
        except RuntimeError as exc:
            FAILED[label, prog] = FAILED.get((label, prog), 0) + 1
            print(f"  {label} {prog} run {i + 1} FAILED: {exc}", file=sys.stderr, flush=True)
            self.before[prog] = None
            return
        r = rate(prog, outs, seconds)
        if prog in ("fetch_loop", "transaction_loop"):
            if self.before[prog] is None:  # (a failed run left the counters where it did)
                self.before[prog] = r
                print(f"  {label} {prog} run {i + 1}: not counted (after a failed run, "
                      "where it started from is not known)", file=sys.stderr)
                return
            r, self.before[prog] = r - self.before[prog], r
        self.res[prog].append(r)
        print(f"  {label} {prog} run {i + 1}: {r:,.1f} {UNITS[prog]}", file=sys.stderr,
              flush=True)


def start_pyctdb(lab, workdir, a, stack):
    c = LocalCluster(a.nodes, base_dir=os.path.join(workdir, "pyctdb"), lab=lab,
                     log_level="NOTICE")
    stack.callback(c.stop_all)
    c.start()
    c.wait_healthy(60)
    # in the node's network namespace, on its socket (a file of the host's tree)
    return System("pyctdb", [
        lambda argv, i=i: (lab.exec_argv(lab.host_ns(i), [*argv, "-s", c.ctdb_socket(i)]),
                           None) for i in range(a.nodes)], a.programs)


def start_ctdb(lab, workdir, a, stack):
    c = ctdblab.CtdbLab(lab, os.path.join(workdir, "ctdb"),
                        [lab.public_address(j) for j in range(a.nodes)])
    stack.callback(c.close)
    c.start(timeout=180)
    # in the node's namespaces (network and mount: the client opens the database
    # files where ctdbd says they are, /var/lib/ctdb/...), on /run/ctdb/ctdbd.socket
    return System("CTDB", [
        lambda argv, i=i: (c.in_node(i, [*argv, "-s", "/run/ctdb/ctdbd.socket"]), c.env(i))
        for i in range(a.nodes)], a.programs)


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
    systems = []
    with contextlib.ExitStack() as stack:
        if not a.keep:
            stack.callback(shutil.rmtree, workdir, True)
        # a lab each: both clusters up together, their runs taken in turn
        for name, start in (("pyctdb", start_pyctdb), ("ctdb", start_ctdb)):
            if a.only in (None, name):
                lab = NetnsLab(a.nodes).create()
                stack.callback(lab.destroy)
                systems.append(start(lab, workdir, a, stack))
        for prog in a.programs:
            for i in range(a.runs):
                for system in systems:
                    system.run(a.bin, prog, i, a.time)
    got = {s.label: s.res for s in systems}
    py, ct = got.get("pyctdb", {}), got.get("CTDB", {})
    print()
    print(f"CTDB's client test programs: {a.nodes} nodes (network namespaces), "
          f"-t {a.time}, {a.runs} runs; median min max; load average at the end "
          f"{os.getloadavg()[0]:.1f}")
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
