"""The database commands of ``pyctdb`` (CTDB's output forms; -X and --json).

Keys and values on the command line are text (UTF-8), as with CTDB's tool; a key or
value starting with ``0x`` is hex."""

from __future__ import annotations

import base64
import os
import sys
import time

from pyctdb.errors import UsageError
from pyctdb.tools.commands import SEP, Table, arg

COMMANDS = Table()
DB = arg("db", metavar="DB")
KEY = arg("key", metavar="KEY")
VALUE = arg("value", metavar="VALUE")


def _arg(s):
    if s.startswith("0x") and len(s) > 2:
        try:
            return bytes.fromhex(s[2:])
        except ValueError:
            pass
    return s.encode()


def _b(s):
    return base64.b64encode(_arg(s)).decode()


def _show(b64):
    return base64.b64decode(b64).decode("utf-8", "backslashreplace")


@COMMANDS.command("attach", help="attach a database DB ('persistent': a persistent one) on "
                  "every node",
                  args=[DB, arg("flag", nargs="?", metavar="persistent")])
def cmd_attach(c, a):
    if a.flag not in (None, "persistent"):
        raise UsageError(f"unknown attach flag {a.flag!r} (only 'persistent')")
    res = c.call("attach", db_name=a.db, persistent=a.flag == "persistent")
    if a.json:
        return res, 0
    return "database %s attached (0x%08x)%s" % (res["name"], res["db_id"], "".join(
        f"\nnot attached on node {p}: {e}" for p, e in sorted(res["failed"].items()))), 0


@COMMANDS.command("getdbmap", help="list the databases of this node")
def cmd_getdbmap(c, a):
    res = c.call("getdbmap")
    if a.json:
        return res, 0
    if a.X:
        lines = [SEP + SEP.join(["ID", "Name", "Path", "Persistent", "Sticky", "Unhealthy",
                                 "Readonly", "Replicated"]) + SEP]
        lines += [SEP + SEP.join(["0x%08x" % d["db_id"], d["name"], d["path"],
                                  str(int(d["persistent"])), "0", str(int(d["unhealthy"])),
                                  "0", "0"]) + SEP for d in res["dbs"]]
        return "\n".join(lines), 0
    lines = ["Number of databases:%d" % len(res["dbs"])]
    for d in res["dbs"]:
        lines.append("dbid:0x%08x name:%s path:%s%s%s" % (
            d["db_id"], d["name"], d["path"], " PERSISTENT" if d["persistent"] else "",
            " UNHEALTHY" if d["unhealthy"] else ""))
    lines += [f"problem: {p}" for p in res["problems"]]
    return "\n".join(lines), 0


@COMMANDS.command("catdb", help="dump the records of database DB held on this node",
                  args=[DB])
def cmd_catdb(c, a):
    res = c.call("catdb", db_name=a.db)
    if a.json:
        return res, 0
    out = []
    for r in res["records"]:
        k, v = base64.b64decode(r["key"]), base64.b64decode(r["value"])
        out += ['key(%d) = "%s"' % (len(k), _show(r["key"])), "dmaster: %d" % r["dmaster"],
                "rsn: %d" % r["rsn"], "flags: 0x%08x" % r["flags"],
                'data(%d) = "%s"' % (len(v), _show(r["value"])), ""]
    out.append("Dumped %d records" % len(res["records"]))
    return "\n".join(out), 0


@COMMANDS.command("readkey", help="read KEY of volatile database DB (migrates it here)",
                  args=[DB, KEY])
def cmd_readkey(c, a):
    res = c.call("readkey", db_name=a.db, key=_b(a.key))
    if a.json:
        return res, 0
    v = base64.b64decode(res["value"])
    return "Data: size:%d ptr:[%s]" % (len(v), _show(res["value"])), 0


def _quiet(c, a, command, with_value):
    """writekey, deletekey, pstore, pdelete: no output (the API's result with --json)."""
    args = {"db_name": a.db, "key": _b(a.key)}
    if with_value:
        args["value"] = _b(a.value)
    res = c.call(command, **args)
    return (res if a.json else None), 0


@COMMANDS.command("writekey", help="write KEY VALUE to volatile database DB",
                  args=[DB, KEY, VALUE])
def cmd_writekey(c, a):
    return _quiet(c, a, "writekey", True)


@COMMANDS.command("deletekey", help="delete KEY from volatile database DB", args=[DB, KEY])
def cmd_deletekey(c, a):
    return _quiet(c, a, "deletekey", False)


@COMMANDS.command("pstore", help="store KEY VALUE in persistent database DB (a transaction)",
                  args=[DB, KEY, VALUE])
def cmd_pstore(c, a):
    return _quiet(c, a, "pstore", True)


@COMMANDS.command("pfetch", help="print the value of KEY of persistent database DB",
                  args=[DB, KEY])
def cmd_pfetch(c, a):
    res = c.call("pfetch", db_name=a.db, key=_b(a.key))
    if a.json:
        return res, 0
    return (_show(res["value"]) if res["exists"] else None), 0


@COMMANDS.command("pdelete", help="delete KEY from persistent database DB (a transaction)",
                  args=[DB, KEY])
def cmd_pdelete(c, a):
    return _quiet(c, a, "pdelete", False)


@COMMANDS.command("getdbseqnum", help="show the sequence number of database DB", args=[DB])
def cmd_getdbseqnum(c, a):
    res = c.call("getdbseqnum", db_name=a.db)
    return (res if a.json else "0x%x" % res["seqnum"]), 0


@COMMANDS.command("wipedb", help="remove every record of database DB on every node",
                  args=[DB])
def cmd_wipedb(c, a):
    res = c.call("wipedb", db_name=a.db)
    return (res if a.json else "Database %s wiped" % a.db), 0


@COMMANDS.command("detach", help="detach volatile databases DB... on every node (needs "
                  "AllowClientDBAttach=0 on all nodes)",
                  args=[arg("dbs", nargs="+", metavar="DB")])
def cmd_detach(c, a):
    res = c.call("detach", db_names=a.dbs)
    if a.json:
        return res, 0
    lines = [f"No database matching '{n}' found" for n in res["missing"]]
    lines += [f"Database {n} detach failed" for n in sorted(res["failed"])]
    if lines:
        print("\n".join(lines), file=sys.stderr)
    return None, (1 if res["failed"] else 0)


@COMMANDS.command("getdbstatus", help="show the status of database DB on this node",
                  args=[DB])
def cmd_getdbstatus(c, a):
    res = c.call("getdbstatus", db_name=a.db)
    if a.json:
        return res, 0
    yn = {True: "yes", False: "no"}
    if a.X:
        cols = ["dbid", "name", "path", "persistent", "replicated", "sticky", "readonly",
                "health", "records"]
        return "\n".join([SEP + SEP.join(cols) + SEP, SEP + SEP.join([
            "0x%08x" % res["db_id"], res["name"], res["path"],
            str(int(res["persistent"])), "0", "0", "0", res["health"],
            str(res["records"] if res["records"] is not None else "")]) + SEP]), 0
    return "\n".join([
        "dbid: 0x%08x" % res["db_id"], "name: %s" % res["name"], "path: %s" % res["path"],
        "PERSISTENT: %s" % yn[res["persistent"]], "REPLICATED: no", "STICKY: no",
        "READONLY: no", "HEALTH: %s" % res["health"]]), 0


def _unquote(s, lineno, pos):
    """A ``"..."`` string at ``s[pos:]`` with catdb's escapes (``\\XX`` hex):
    (bytes, position after the closing quote)."""
    if pos >= len(s) or s[pos] != '"':
        raise UsageError(f"line {lineno}: expected a quoted string at column {pos + 1}")
    out = bytearray()
    i = pos + 1
    while i < len(s):
        ch = s[i]
        if ch == '"':
            return bytes(out), i + 1
        if ch == "\\":
            hx = s[i + 1:i + 3]
            try:
                out.append(int(hx, 16))
            except ValueError:
                raise UsageError(f"line {lineno}: bad escape \\{hx!s} (use \\XX, two hex "
                                 "digits)") from None
            i += 3
            continue
        out += ch.encode()
        i += 1
    raise UsageError(f"line {lineno}: unterminated string")


def parse_ptrans(text):
    """``"key" "value"`` lines (CTDB's ptrans input) -> [(key, value or None)]; an empty
    value deletes the key; blank lines are skipped."""
    writes = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        key, i = _unquote(s, n, 0)
        while i < len(s) and s[i] in " \t":
            i += 1
        value, i = _unquote(s, n, i)
        if s[i:].strip():
            raise UsageError(f"line {n}: unexpected text after the value: {s[i:]!r}")
        if not key:
            raise UsageError(f"line {n}: empty key")
        writes.append((key, value or None))
    return writes


@COMMANDS.command("ptrans", help="one transaction on persistent database DB from '\"key\" "
                  "\"value\"' lines in FILE (default: standard input)",
                  args=[DB, arg("file", nargs="?", metavar="FILE")])
def cmd_ptrans(c, a):
    if a.file:
        try:
            with open(a.file, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except OSError as exc:
            raise UsageError(f"cannot read {a.file}: {exc.strerror}") from None
    else:
        text = sys.stdin.read()
    writes = parse_ptrans(text)
    res = c.call("ptrans", db_name=a.db, writes=[
        [base64.b64encode(k).decode(), None if v is None else base64.b64encode(v).decode()]
        for k, v in writes])
    return (res if a.json else None), 0


@COMMANDS.command("backupdb", help="back up database DB to FILE",
                  args=[DB, arg("file", metavar="FILE")])
def cmd_backupdb(c, a):
    res = c.call("backupdb", db_name=a.db, file=os.path.abspath(a.file))
    if a.json:
        return res, 0
    return "Database %s backed up to %s: %d records" % (
        res["db_name"], res["file"], res["records"]), 0


@COMMANDS.command("restoredb", help="replace database DB (default: the one backed up) on "
                  "every node with the backup in FILE",
                  args=[arg("file", metavar="FILE"), arg("db", nargs="?", metavar="DB")])
def cmd_restoredb(c, a):
    args = {"file": os.path.abspath(a.file)}
    if a.db:
        args["db_name"] = a.db
    res = c.call("restoredb", **args)
    if a.json:
        return res, 0
    when = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(res["backup_time"]))
    return "Restoring database '%s' from backup @ %s\n%d records restored" % (
        res["db_name"], when, res["records"]), 0
