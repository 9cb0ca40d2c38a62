"""``pyctdb conf ...``: the cluster registry, with ``net conf``'s sub-commands, output
and error messages (docs/databases.md, "Cluster registry")."""

from __future__ import annotations

import argparse
import sys

from pyctdb.client.connection import ApiCallError
from pyctdb.errors import UsageError
from pyctdb.tools.commands import Table, arg

COMMANDS = Table()

USAGE = {
    "list": "conf list",
    "import": "conf import [-T|--test] FILENAME [SECTION]",
    "drop": "conf drop",
    "showsection": "conf showsection SECTION",
    "setparm": "conf setparm SECTION PARAM VALUE",
    "getparm": "conf getparm SECTION PARAM",
    "delparm": "conf delparm SECTION PARAM",
    "delsection": "conf delsection SECTION",
}
NARGS = {"list": (0, 0), "import": (1, 2), "drop": (0, 0), "showsection": (1, 1),
         "setparm": (3, 3), "getparm": (2, 2), "delparm": (2, 2), "delsection": (1, 1)}


@COMMANDS.command(
    "conf", help="the cluster registry (smb.conf in a persistent database, as 'net conf'): "
    "list, import FILE [SECTION], drop, showsection SECTION, setparm SECTION PARAM VALUE, "
    "getparm SECTION PARAM, delparm SECTION PARAM, delsection SECTION",
    args=[arg("action", metavar="list|import|drop|showsection|setparm|getparm|delparm|"
                                "delsection"),
          # everything after the action (values may start with "-"); -T/--test, --json
          # and -X are picked out of it by cmd_conf
          arg("args", nargs=argparse.REMAINDER, metavar="ARG",
              help="import: [-T|--test] (print what would be imported, change nothing) "
                   "FILENAME [SECTION]")])
def cmd_conf(c, a):
    action, args = a.action, []
    a.test = False
    for word in a.args:
        if word in ("-T", "--test"):
            a.test = True
        elif word == "--json":
            a.json = True
        elif word == "-X":
            a.X = True
        else:
            args.append(word)
    if a.json and a.X:
        raise UsageError("-X and --json cannot be used together")
    if action not in NARGS:
        raise UsageError("usage: pyctdb conf list|import|drop|showsection|setparm|getparm|"
                         "delparm|delsection ...")
    lo, hi = NARGS[action]
    if not lo <= len(args) <= hi:
        raise UsageError("usage: pyctdb " + USAGE[action])
    if a.test and action != "import":
        raise UsageError("-T/--test is only for conf import")
    try:
        return _run(c, a, action, args)
    except ApiCallError as exc:
        if a.json:
            raise
        print(exc.message, file=sys.stderr)  # net conf's own messages
        return None, 1


def _run(c, a, action, args):
    if action == "list":
        res = c.call("conf_list")
        return (res if a.json else res["text"][:-1] if res["text"] else None), 0
    if action == "showsection":
        res = c.call("conf_showsection", section=args[0])
        return (res if a.json else res["text"][:-1]), 0
    if action == "getparm":
        res = c.call("conf_getparm", section=args[0], param=args[1])
        return (res if a.json else res["value"]), 0
    if action == "import":
        path = args[0]
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            print(f"Error reading configuration file {path}: {exc}", file=sys.stderr)
            return None, 1
        res = c.call("conf_import", text=text, source=path,
                     section=args[1] if len(args) > 1 else None, test=bool(a.test))
        if a.json:
            return res, 0
        if a.test:
            return "\nTEST MODE - would import the following configuration:\n\n" + \
                res["text"][:-1], 0
        return None, 0
    command = {"drop": "conf_drop", "setparm": "conf_setparm", "delparm": "conf_delparm",
               "delsection": "conf_delsection"}[action]
    keys = {"setparm": ("section", "param", "value"), "delparm": ("section", "param"),
            "delsection": ("section",), "drop": ()}[action]
    res = c.call(command, **dict(zip(keys, args)))
    return (res if a.json else None), 0

