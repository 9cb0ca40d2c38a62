"""pyctdb: the command-line tool, in CTDB's output formats.

    pyctdb [--socket PATH] [-X] [--json] [-t SECONDS] COMMAND [ARGS]

``-X`` gives CTDB's machine-readable ``|``-separated output; ``--json`` gives the API's
JSON. If the agent cannot be reached, one line goes to stderr and the exit code is 1.

The commands are registered in their modules' tables (``tools/commands.py``): the
cluster's (cluster_commands), messaging (messaging_commands), databases (db_commands),
the registry (conf_commands); and here ``ipalloc``, which runs offline.
"""

from __future__ import annotations

import argparse
import json
import sys

from pyctdb.client.connection import AgentUnavailable, ApiCallError, Client, default_socket
from pyctdb.errors import UsageError
from pyctdb.tools import (cluster_commands, commands, conf_commands, db_commands,
                          messaging_commands)

OFFLINE = commands.Table()


@OFFLINE.command("ipalloc", help="plan a public address allocation offline, as CTDB would "
                 "(see 'pyctdb ipalloc --help')", offline=True)
def run_ipalloc(argv):
    """``pyctdb ipalloc ...`` plans an allocation offline: no agent involved."""
    # imported here, not at the top: pyctdb.tools.ipalloc and pyctdb.rules.ipalloc add
    # 11 ms of imports to the 63 ms every other command takes to import at start
    # (python -X importtime -m pyctdb.tools.cli --help, best of 8)
    from pyctdb.tools.ipalloc import main as ipalloc_main
    return ipalloc_main(argv)


#: every command, in the order of the help: name -> commands.Command
COMMANDS = commands.merge(OFFLINE, cluster_commands.COMMANDS, messaging_commands.COMMANDS,
                          db_commands.COMMANDS, conf_commands.COMMANDS)

#: Commands that act on another node with -n PNN (CTDB's "remote" commands we have).
REMOTE = {name for name, cmd in COMMANDS.items() if cmd.remote}


#: the common options that take a value (to find the command word in argv)
_VALUED = ("--socket", "-t", "--timeout", "-n", "--node")


def command_word(argv):
    """The command named in ``argv`` (the first word that is not a common option or
    its value), or None."""
    skip = False
    for tok in argv:
        if skip:
            skip = False
            continue
        if tok.startswith("-"):
            skip = tok in _VALUED
            continue
        return tok
    return None


def build_parser(only=None):
    """The tool's parser: every command's, or with ``only`` just that command's. Making
    all 48 subparsers (argparse asks gettext for every string) was most of a call's
    22 ms of Python; a command's own parser answers its arguments, errors and --help
    the same."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS,
                        help="agent API socket (default $PYCTDB_SOCKET or "
                             "/run/pyctdb/pyctdbd.socket)")
    common.add_argument("-X", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output, '|'-separated (as CTDB's -X)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="JSON output")
    common.add_argument("-t", "--timeout", type=float, default=argparse.SUPPRESS,
                        help="seconds to wait for the agent (default 10)")
    common.add_argument("-n", "--node", type=int, metavar="PNN", default=argparse.SUPPRESS,
                        help="act on node PNN instead of this node (" + ", ".join(
                            sorted(REMOTE)) + ")")
    p = argparse.ArgumentParser(prog="pyctdb", parents=[common],
                                description="control and query pyctdbd (CTDB-style)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in ([COMMANDS[only]] if only in COMMANDS else COMMANDS.values()):
        cmd.add_parser(sub, common)
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS and COMMANDS[argv[0]].offline:
        return COMMANDS[argv[0]].run(argv[1:])
    parser = build_parser(command_word(argv))
    a = parser.parse_args(argv)
    for key, default in (("socket", None), ("X", False), ("json", False), ("timeout", 10.0),
                         ("node", None)):
        if not hasattr(a, key):
            setattr(a, key, default)
    if not a.command:
        parser.print_help(sys.stderr)
        return 2
    if a.node is not None and a.command not in REMOTE:
        print(f"pyctdb: node cannot be specified for command {a.command} (-n works with: "
              f"{', '.join(sorted(REMOTE))})", file=sys.stderr)
        return 2
    if a.X and a.json:
        print("pyctdb: -X and --json cannot be used together", file=sys.stderr)
        return 2
    run = COMMANDS[a.command].run
    client = Client(a.socket or default_socket(), timeout=a.timeout)
    try:
        out, rc = run(client, a)
    except AgentUnavailable as exc:
        print(f"pyctdb: {exc}", file=sys.stderr)
        return 1
    except ApiCallError as exc:
        print(f"pyctdb: {a.command} failed: {exc.message} ({exc.code})", file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"pyctdb: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()
    if out is not None:
        if a.json:
            print(json.dumps(out, indent=2, sort_keys=True))
        else:
            print(out)
    return rc


if __name__ == "__main__":
    sys.exit(main())
