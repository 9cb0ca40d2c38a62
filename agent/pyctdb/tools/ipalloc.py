"""pyctdb ipalloc: plan a public IP layout offline, exactly as CTDB would assign it.

    pyctdb ipalloc [--algorithm lcp2|det|nondet] --node-flags F0,F1,...
                   [--no-ip-takeover] [--no-ip-failback] [--runstates R0,R1,...]
                   [--home-nodes FILE] [--force-rebalance N,...] [--multi]
                   [--log-level LEVEL]  < current-layout

stdin holds ``IP CURRENT_PNN [ALLOWED_PNN,...]`` lines (CTDB's ctdb_takeover_tests
format); with ``--multi`` it holds one block per node, separated by blank lines, each
block that node's own ``IP PNN`` view. The result goes to stdout as ``IP PNN`` lines in
CTDB's order; CTDB's log messages (at --log-level, default WARNING) go to stderr.

Bad arguments or input: one line on stderr, nothing on stdout, exit code 2.
Also runnable as ``python -m pyctdb.tools.ipalloc``.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from pyctdb.errors import UsageError
from pyctdb.rules import ipalloc

PROG = "pyctdb ipalloc"


class _Parser(argparse.ArgumentParser):
    """The argument parser of ``pyctdb ipalloc``: a bad argument is a UsageError."""

    def error(self, message):           # one line, no usage dump, our exit code
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Compute CTDB's public IP allocation for a given "
                "cluster state (read from stdin) without touching any node.")
    p.add_argument("--algorithm", default="lcp2",
                   help="lcp2 (default; IPAllocAlgorithm=2), nondet (1) or det (0)")
    p.add_argument("--node-flags", required=True, metavar="F0,F1,...",
                   help="CTDB node flags for PNN 0, 1, ... (decimal or 0x hex): "
                        "0x1 DISCONNECTED, 0x2 UNHEALTHY, 0x4 DISABLED, 0x8 BANNED, "
                        "0x10 DELETED, 0x20 STOPPED")
    p.add_argument("--no-ip-takeover", action="store_true",
                   help="NoIPTakeover=1: addresses never move to another node")
    p.add_argument("--no-ip-failback", action="store_true",
                   help="NoIPFailback=1: no rebalancing onto nodes that come back")
    p.add_argument("--runstates", metavar="R0,R1,...",
                   help="node runstates (numbers or names; only RUNNING=5 hosts "
                        "addresses; default: all RUNNING)")
    p.add_argument("--home-nodes", metavar="FILE",
                   help="CTDB home_nodes file (IP PNN lines) for --algorithm det")
    p.add_argument("--force-rebalance", metavar="N,...",
                   help="lcp2: nodes to rebalance onto although they host addresses")
    p.add_argument("--multi", action="store_true",
                   help="stdin holds one block per node (blank-line separated), each "
                        "that node's own view")
    p.add_argument("--log-level", default="WARNING",
                   help="CTDB log messages to show on stderr: ERR, WARNING (default), "
                        "NOTICE, INFO, DEBUG or 0-4")
    return p


def _int_list(text: str, what: str, base: int = 10) -> List[int]:
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            v = int(part, base)
        except ValueError:
            raise UsageError("invalid %s value %r in %r" % (what, part, text)) from None
        if v < 0:
            raise UsageError("invalid %s value %r in %r" % (what, part, text))
        out.append(v)
    return out


def _node_flags(text: str) -> List[int]:
    flags = _int_list(text, "node flags", 0)       # decimal or 0x...
    for f in flags:
        if f > 0xFFFFFFFF:
            raise UsageError("invalid node flags value %#x" % f)
    return flags


def _runstates(text: str) -> List[int]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if part.upper() in ipalloc.RUNSTATES:
            out.append(ipalloc.RUNSTATES[part.upper()])
            continue
        try:
            out.append(int(part, 10))
        except ValueError:
            raise UsageError("invalid runstate %r (a number 0-6 or a name such as "
                              "RUNNING)" % part) from None
    return out


def _log_level(text: str) -> int:
    t = text.strip().upper()
    if t in ipalloc.LOG_LEVELS:
        return ipalloc.LOG_LEVELS[t]
    if t.isdigit():
        return int(t)
    raise UsageError("invalid log level %r (ERR, WARNING, NOTICE, INFO or DEBUG)" % text)


def _run(argv: List[str], stdin, stdout, stderr) -> int:
    args = _parser().parse_args(argv)
    try:
        algorithm = ipalloc.ALGORITHMS[ipalloc._algorithm_index(args.algorithm)]
    except ValueError as e:
        raise UsageError(str(e)) from None
    flags = _node_flags(args.node_flags)
    num = len(flags)
    runstates = None
    if args.runstates is not None:
        runstates = _runstates(args.runstates)
        if len(runstates) != num:
            raise UsageError("--runstates has %d values for %d nodes" % (len(runstates), num))
    force = None
    if args.force_rebalance is not None:
        force = _int_list(args.force_rebalance, "--force-rebalance")
    level = _log_level(args.log_level)
    home = None
    if args.home_nodes is not None:
        try:
            with open(args.home_nodes) as f:
                text = f.read()
        except OSError as e:
            raise UsageError("cannot read home_nodes file %s: %s"
                              % (args.home_nodes, e.strerror or e)) from None
        try:
            home = ipalloc.parse_home_nodes(text)
        except ValueError as e:
            raise UsageError("home_nodes file %s: %s" % (args.home_nodes, e)) from None
        if algorithm != "det":
            stderr.write("%s: warning: --home-nodes only affects --algorithm det\n" % PROG)

    try:
        text = stdin.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError("cannot read stdin: %s" % e) from None
    try:
        if args.multi:
            ips = ipalloc.parse_multi(text)
            blocks = _count_blocks(text)
            if blocks > num:
                raise UsageError("stdin has %d blocks (one per node) but --node-flags gives "
                                  "%d nodes" % (blocks, num))
        else:
            ips = ipalloc.parse_input(text)
        for ip in ips:
            for n in ip.available_on or ():
                if n >= num:
                    raise UsageError("%s is allowed on node %d, but --node-flags gives %d "
                                      "nodes" % (ip.address, n, num))
        logs: List[str] = []
        result = ipalloc.allocate(ips, flags, algorithm=algorithm,
                                  no_ip_failback=args.no_ip_failback,
                                  no_ip_takeover=args.no_ip_takeover,
                                  runstates=runstates, home_nodes=home,
                                  force_rebalance_nodes=force,
                                  log=lambda lvl, msg: logs.append(msg), log_level=level)
    except ValueError as e:
        raise UsageError("stdin: %s" % e) from None
    for msg in logs:
        stderr.write(msg + "\n")
    stdout.write(ipalloc.format_result(result))
    return 0


def _count_blocks(text: str) -> int:
    blocks = [0]
    for line in text.splitlines():
        if not line.strip():
            blocks.append(0)
        elif line.split("#", 1)[0].strip():
            blocks[-1] += 1
    while blocks and not blocks[-1]:
        blocks.pop()
    return len(blocks)


def main(argv: Optional[List[str]] = None, *, stdin=None, stdout=None, stderr=None) -> int:
    """Entry point for ``pyctdb ipalloc ARGS``; returns the exit code.

    ``stdin``/``stdout``/``stderr`` default to the process's streams."""
    if argv is None:
        argv = sys.argv[1:]
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    try:
        return _run(list(argv), stdin, stdout, stderr)
    except UsageError as e:
        stderr.write("%s: error: %s\n" % (PROG, e))
        return 2
    except SystemExit as e:                      # --help
        return e.code if isinstance(e.code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
