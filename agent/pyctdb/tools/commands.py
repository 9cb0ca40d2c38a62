"""The one way a ``pyctdb`` command is registered.

Each command module has a :class:`Table` and registers its commands on it with a
decorator::

    COMMANDS = Table()

    @COMMANDS.command("getvar", help="show a tunable", args=[arg("name")])
    def cmd_getvar(client, a):
        ...
        return output, exit_code

``tools/cli.py`` imports the command modules, puts their tables together with
:func:`merge` (in the order of its help) and builds its parser from them. This module
imports no command module and not cli.py.

A command runs as ``run(client, a) -> (output, exit code)``: ``client`` the local API's
:class:`~pyctdb.client.connection.Client`, ``a`` the parsed arguments (with the common
options ``-X``, ``--json``, ``-n``...); ``output`` is printed (as JSON with ``--json``)
unless None. An *offline* command runs as ``run(argv) -> exit code``, with its own
arguments and without the agent (``pyctdb ipalloc``).
"""

from __future__ import annotations

from collections import namedtuple

#: the field separator of CTDB's machine-readable output (-X)
SEP = "|"


# (collections.namedtuple, not typing.NamedTuple: importing typing would cost every call
# of the tool about 2.5 ms, a tenth of its budget)
class Arg(namedtuple("Arg", "names options")):
    """One ``add_argument`` call of a command's parser: ``names`` (a tuple), ``options``
    (a dict)."""

    __slots__ = ()


def arg(*names, **options) -> Arg:
    """An argument of a command, as ``ArgumentParser.add_argument(*names, **options)``."""
    return Arg(names, options)


class Command(namedtuple("Command", "name run help args remote offline",
                          defaults=((), False, False))):
    """One command of the tool: its ``name``, ``run`` function, ``help`` line and
    ``args`` (a tuple of :class:`Arg`); ``remote``: it acts on another node with ``-n
    PNN`` (one of CTDB's "remote" commands we have); ``offline``: ``run(argv) -> exit
    code``, without the agent and the common options."""

    __slots__ = ()

    def add_parser(self, subparsers, common):
        """Add this command's parser to ``subparsers`` (``common``: the parser of the
        common options, a parent of every command that is not offline)."""
        if self.offline:   # its own parser parses its arguments (see its --help)
            return subparsers.add_parser(self.name, help=self.help, add_help=False)
        sp = subparsers.add_parser(self.name, help=self.help, parents=[common],
                                   description=self.help)
        for a in self.args:
            sp.add_argument(*a.names, **a.options)
        return sp


class Table:
    """The commands one module registers, in the order registered (the order of the
    tool's help)."""

    def __init__(self):
        self.commands = {}  # name -> Command

    def command(self, name, help, args=(), remote=False, offline=False):
        """Decorator: register the function as command ``name`` (see :class:`Command`)."""
        def register(fn):
            if name in self.commands:
                raise ValueError(f"command {name!r} registered twice")
            self.commands[name] = Command(name, fn, help, tuple(args), remote, offline)
            return fn
        return register


def merge(*tables: Table) -> dict:
    """The commands of ``tables``, in order: name -> :class:`Command` (a name in two
    tables is an error)."""
    out = {}
    for table in tables:
        for name, cmd in table.commands.items():
            if name in out:
                raise ValueError(f"command {name!r} registered twice")
            out[name] = cmd
    return out
