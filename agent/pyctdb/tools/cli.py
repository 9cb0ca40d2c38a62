"""pyctdb: the command-line tool, in CTDB's output formats.

    pyctdb [--socket PATH] [-X] [--json] [-t SECONDS] COMMAND [ARGS]

``-X`` gives CTDB's machine-readable ``|``-separated output; ``--json`` gives the API's
JSON. If the agent cannot be reached, one line goes to stderr and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from pyctdb import __version__
from pyctdb.rules import nodeflags
from pyctdb.client.connection import AgentUnavailable, ApiCallError, Client, default_socket
from pyctdb.errors import UsageError

SEP = "|"


def _machine_header():
    cols = ["Node", "IP", "Disconnected", "Banned", "Disabled", "Unhealthy", "Stopped",
            "Inactive", "PartiallyOnline", "ThisNode"]
    return SEP + SEP.join(cols) + SEP


def _machine_line(n):
    fl = n["flags"]
    vals = [str(n["pnn"]), n["address"] or "",
            str(int(bool(fl & nodeflags.DISCONNECTED))), str(int(bool(fl & nodeflags.BANNED))),
            str(int(bool(fl & nodeflags.PERMANENTLY_DISABLED))), str(int(bool(fl & nodeflags.UNHEALTHY))),
            str(int(bool(fl & nodeflags.STOPPED))), str(int(bool(fl & nodeflags.INACTIVE))), "0",
            "Y" if n["this_node"] else "N"]
    return SEP + SEP.join(vals) + SEP


def _node_line(n):
    return "pnn:%d %-16s %s%s" % (n["pnn"], n["address"], n["state"],
                                  " (THIS NODE)" if n["this_node"] else "")


def _nodemap_lines(st, header=True):
    out = []
    if header:
        if st["num_deleted"]:
            out.append("Number of nodes:%d (including %d deleted nodes)"
                       % (st["num_nodes"], st["num_deleted"]))
        else:
            out.append("Number of nodes:%d" % st["num_nodes"])
    out += [_node_line(n) for n in st["nodes"] if not n["deleted"]]
    return out


def _ctime(ts):
    return time.strftime("%a %b %e %H:%M:%S %Y", time.localtime(ts))


def _dhms(secs):
    secs = max(0, int(secs))
    d, secs = divmod(secs, 86400)
    h, secs = divmod(secs, 3600)
    m, s = divmod(secs, 60)
    return "(%03d %02d:%02d:%02d)" % (d, h, m, s)


def _fmt_value(v):
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


# -- commands ---------------------------------------------------------------------------
def cmd_status(c, a):
    st = c.call("status")
    if a.json:
        return st, 0
    if a.X:
        return "\n".join([_machine_header()] + [_machine_line(n) for n in st["nodes"]
                                                  if not n["deleted"]]), 0
    lines = _nodemap_lines(st)
    lines.append("Generation:%s" % ("INVALID" if st["generation"] is None
                                    else st["generation"]))
    lines.append("Size:%d" % len(st["vnnmap"]))
    lines += ["hash:%d lmaster:%d" % (i, p) for i, p in enumerate(st["vnnmap"])]
    lines.append("Recovery mode:%s (%d)" % (st["recovery_mode"], st["recovery_mode_value"]))
    lines.append("Leader:%s" % ("UNKNOWN" if st["leader"] is None else st["leader"]))
    return "\n".join(lines), 0


def cmd_nodestatus(c, a):
    st = c.call("status")
    target = a.pnn if a.pnn is not None else str(st["pnn"])
    nodes = [n for n in st["nodes"] if not n["deleted"]]
    if target != "all":
        try:
            want = {int(x) for x in target.split(",")}
        except ValueError:
            raise UsageError(f"invalid node specification {target!r}: use a PNN, a "
                             "comma-separated list of PNNs, or 'all'") from None
        known = {n["pnn"] for n in nodes}
        missing = sorted(want - known)
        if missing:
            raise UsageError("node %s does not exist" % ",".join(map(str, missing)))
        nodes = [n for n in nodes if n["pnn"] in want]
    rc = 0
    for n in nodes:
        rc |= n["flags"]
    if a.json:
        return {"nodes": nodes}, rc
    if a.X:
        return "\n".join([_machine_header()] + [_machine_line(n) for n in nodes]), rc
    lines = []
    if target == "all":
        lines += _nodemap_lines(st, header=True)
    else:
        lines += [_node_line(n) for n in nodes]
    return "\n".join(lines), rc


def cmd_listnodes(c, a):
    res = c.call("listnodes")
    if a.json:
        return res, 0
    nodes = [n for n in res["nodes"] if not n["deleted"]]
    if a.X:
        return "\n".join(SEP + SEP.join([str(n["pnn"]), n["address"]]) + SEP
                         for n in nodes), 0
    return "\n".join(n["address"] for n in nodes), 0


def cmd_pnn(c, a):
    res = c.call("pnn")
    return (res if a.json else str(res["pnn"])), 0


def cmd_leader(c, a):
    res = c.call("leader")
    if a.json:
        return res, 0 if res["leader"] is not None else 1
    if res["leader"] is None:
        print("Leader:UNKNOWN (no leader elected)", file=sys.stderr)
        return None, 1
    return str(res["leader"]), 0


def cmd_uptime(c, a):
    u = c.call("uptime")
    if a.json:
        return u, 0
    now = u["current_time"]
    lines = ["Current time of node %-4d     :                %s" % (u["pnn"], _ctime(now)),
             "Ctdbd start time              : %s %s" % (_dhms(now - u["start_time"]),
                                                         _ctime(u["start_time"]))]
    fin, start = u["last_recovery_finished"], u["last_recovery_started"]
    if fin is None:
        lines.append("Time of last recovery/failover: (none yet)")
        lines.append("Duration of last recovery/failover: 0.000000 seconds")
    else:
        lines.append("Time of last recovery/failover: %s %s" % (_dhms(now - fin), _ctime(fin)))
        lines.append("Duration of last recovery/failover: %f seconds"
                     % max(0.0, fin - (start or fin)))
    return "\n".join(lines), 0


def _var_line(name, value):
    return "%-26s = %s" % (name, _fmt_value(value))


def cmd_getvar(c, a):
    try:
        res = c.call("getvar", name=a.name)
    except ApiCallError as exc:
        if exc.code == "ENOENT":
            return f"No such tunable {a.name}", 1
        raise
    return (res if a.json else _var_line(res["name"], res["value"])), 0


def cmd_setvar(c, a):
    try:
        res = c.call("setvar", name=a.name, value=a.value)
    except ApiCallError as exc:
        if exc.code == "ENOENT":
            return f"No such tunable {a.name}", 1
        raise
    return (res if a.json else None), 0


def cmd_listvars(c, a):
    res = c.call("listvars")
    if a.json:
        return res, 0
    return "\n".join(_var_line(t["name"], t["value"]) for t in res["tunables"]), 0


def cmd_version(c, a):
    try:
        agent = c.call("version")
    except AgentUnavailable:
        agent = None
    if a.json:
        return {"cli_version": __version__, "agent": agent}, 0
    return __version__, 0


def cmd_ip(c, a):
    all_ = a.which == "all"
    if a.which not in (None, "all"):
        raise UsageError(f"invalid argument {a.which!r}: use 'all' or nothing")
    res = c.call("ip", all=all_)
    if a.json:
        return res, 0
    ips = res["ips"]
    out = []
    if a.X:
        hdr = "|Public IP|Node|" + ("ActiveInterfaces|AvailableInterfaces|ConfiguredInterfaces|"
                                    if a.v else "")
        out.append(hdr)
    else:
        out.append("Public IPs on ALL nodes" if all_ else f"Public IPs on node {res['pnn']}")
    for e in ips:
        ifaces = ",".join(e.get("interfaces") or [])
        if a.X:
            line = f"|{e['address']}|{e['pnn']}|"
            if a.v:
                line += f"{ifaces if e['pnn'] == res['pnn'] else ''}|{ifaces}|{ifaces}|"
        else:
            line = f"{e['address']} {e['pnn']}"
            if a.v:
                act = ifaces if e["pnn"] == res["pnn"] else ""
                line = (f"{e['address']} node[{e['pnn']}] active[{act}] available[{ifaces}] "
                        f"configured[{ifaces}]")
        out.append(line)
    return "\n".join(out), 0


def cmd_moveip(c, a):
    import ipaddress
    try:
        addr = str(ipaddress.ip_address(a.address))
        pnn = int(a.pnn)
    except ValueError:
        raise UsageError(f"usage: moveip IP PNN (got {a.address!r} {a.pnn!r})") from None
    res = c.call("moveip", address=addr, pnn=pnn)
    return (res if a.json else None), 0


def _takeover_problem(res):
    """A line for stderr when the takeover run that should follow a change failed."""
    err = (res.get("takeover") or {}).get("error")
    return f"Failed to ask the leader to distribute IPs: {err}" if err else None


def _ip_change_done(a, res, unchanged):
    """Output and exit code of addip/delip: CTDB's note (exit 0) when nothing changed;
    exit 1 when the takeover run that follows a change failed."""
    problem = unchanged if not res["changed"] else _takeover_problem(res)
    if problem:
        print(problem, file=sys.stderr)
    return (res if a.json else None), 1 if problem and res["changed"] else 0


def cmd_addip(c, a):
    import ipaddress
    try:
        net = ipaddress.ip_interface(a.address)
        if "/" not in a.address:
            raise ValueError
    except ValueError:
        print(f"Invalid IP/Mask {a.address}", file=sys.stderr)
        return None, 1
    res = c.call("addip", address=str(net.ip), prefix=net.network.prefixlen,
                 interfaces=a.iface.split(","), **_node_arg(a))
    return _ip_change_done(a, res, f"Node already knows about IP {res['address']}")


def cmd_delip(c, a):
    import ipaddress
    try:
        addr = str(ipaddress.ip_address(a.address))
    except ValueError:
        print(f"Invalid IP address {a.address}", file=sys.stderr)
        return None, 1
    res = c.call("delip", address=addr, **_node_arg(a))
    return _ip_change_done(a, res, f"Node does not know about IP address {addr}")


def cmd_reloadips(c, a):
    args = {}
    if a.nodes == "all":
        args["pnns"] = "all"
    elif a.nodes is not None:
        try:
            args["pnns"] = [int(x) for x in a.nodes.split(",")]
        except ValueError:
            print(f"Invalid node specification {a.nodes!r}: use a PNN, a comma-separated "
                  "list of PNNs, or 'all'", file=sys.stderr)
            return None, 1
    res = c.call("reloadips", **args)
    rc = 0
    for f in res["failed"]:
        print(f"Node {f['pnn']} failed to reload IPs: {f['error']}", file=sys.stderr)
        rc = 1
    if res["failed"]:
        print("Failed to reload IPs on some nodes.", file=sys.stderr)
    problem = _takeover_problem(res)
    if problem:
        print(problem, file=sys.stderr)
        rc = 1
    return (res if a.json else None), rc


def cmd_reloadnodes(c, a):
    """CTDB's output: Node N is unchanged/NEW/DELETED, Reloading nodes file on node N."""
    res = c.call("reloadnodes")
    if a.json:
        return res, 1 if res["failed"] else 0
    if not res["changed"]:
        print("No change in nodes file, skipping unnecessary reload")
        return None, 0
    for n in res["nodes"]:
        print(f"Node {n['pnn']} is {n['change']}")
    for p in res["reloaded"]:
        print(f"Reloading nodes file on node {p}")
    for p, err in res["failed"].items():
        print(f"Failed to reload nodes file on node {p}: {err}", file=sys.stderr)
    return None, 1 if res["failed"] else 0


def cmd_recover(c, a):
    res = c.call("recover")
    return (res if a.json else None), 0


def cmd_ipreallocate(c, a):
    res = c.call("ipreallocate")
    return (res if a.json else None), 0


def cmd_event(c, a):
    """event status|run|script ..., with CTDB's optional component name 'legacy'."""
    rest = [x for x in a.args if x != "legacy"]
    if a.action == "status":
        ev = rest[0] if rest else "monitor"
        res = c.call("event_status", event=ev)
        if a.json:
            return res, 0
        lines = []
        for sc in res["scripts"]:
            when = _ctime(sc["start"]) if sc.get("start") else ""
            lines.append("%-20s %-10s %.3f %s" % (sc["script"], sc["status"],
                                                    sc["duration"], when))
            if sc["status"] not in ("OK", "DISABLED", "SKIPPED") and sc["output"]:
                lines += ["  OUTPUT: " + l for l in sc["output"].rstrip().splitlines()[-5:]]
        return "\n".join(lines), 0 if res["status"] == "OK" else 1
    if a.action == "run":
        timeout = None
        if rest and rest[0].replace(".", "", 1).isdigit():
            timeout = float(rest.pop(0))
        if not rest:
            raise UsageError("usage: event run [TIMEOUT] [legacy] EVENT [ARGS...]")
        res = c.call("event_run", event=rest[0], args=rest[1:], timeout=timeout)
        if a.json:
            return res, 0
        rc = 0 if res["status"] == "OK" else 1
        if rc:
            return f"Failed to run event {rest[0]}, result={res['status']}", rc
        return None, 0
    if a.action == "script":
        if not rest or rest[0] not in ("list", "enable", "disable"):
            raise UsageError("usage: event script list|enable|disable [legacy] [SCRIPT]")
        if rest[0] == "list":
            res = c.call("event_script", action="list")
            if a.json:
                return res, 0
            return "\n".join(("* " if s["enabled"] else "  ") + s["script"]
                             for s in res["scripts"]), 0
        if len(rest) != 2:
            raise UsageError(f"usage: event script {rest[0]} [legacy] SCRIPT")
        res = c.call("event_script", action=rest[0], script=rest[1])
        return (res if a.json else None), 0
    raise UsageError("usage: event status|run|script ...")


def cmd_ping(c, a):
    args = {}
    if a.pnn is not None:
        try:
            args["pnn"] = int(a.pnn)
        except ValueError:
            raise UsageError(f"invalid PNN {a.pnn!r}") from None
    res = c.call("ping", **args)
    if a.json:
        return res, 0
    return "response from %d time=%.6f sec" % (res["pnn"], res["time"]), 0


def _node_arg(a):
    """``{"pnn": N}`` for ``-n N``, else nothing (the command acts on this node)."""
    return {} if a.node is None else {"pnn": a.node}


def _admin_cmd(action):
    def run(c, a):
        if action == "ban":
            try:
                secs = float(a.seconds)
                if secs <= 0:
                    raise ValueError
            except ValueError:
                raise UsageError(f"invalid ban time {a.seconds!r}: give a positive number "
                                 "of seconds") from None
            res = c.call("ban", seconds=secs, **_node_arg(a))
        else:
            res = c.call(action, **_node_arg(a))
        return (res if a.json else None), 0
    return run


COMMANDS = {
    "status": (cmd_status, "show the cluster status"),
    "nodestatus": (cmd_nodestatus, "show and return node status (exit code = OR of flags)"),
    "listnodes": (cmd_listnodes, "list the nodes in the cluster"),
    "pnn": (cmd_pnn, "show the PNN of this node"),
    "leader": (cmd_leader, "show the PNN of the leader"),
    "uptime": (cmd_uptime, "show node uptime and time of the last recovery"),
    "getvar": (cmd_getvar, "show a tunable"),
    "setvar": (cmd_setvar, "set a tunable on this node (not persisted)"),
    "listvars": (cmd_listvars, "list all tunables"),
    "version": (cmd_version, "show the version"),
    "ip": (cmd_ip, "show public addresses ('all': of every node) and who hosts them"),
    "moveip": (cmd_moveip, "move a public address to node PNN now"),
    "addip": (cmd_addip, "add a public address to this node's list (at runtime only; a "
                         "takeover run follows)"),
    "delip": (cmd_delip, "remove a public address from this node's list (at runtime only; "
                         "released first if hosted here)"),
    "reloadips": (cmd_reloadips, "re-read the public_addresses file on this node (or "
                                 "'all', or PNN,PNN) and apply the difference"),
    "ipreallocate": (cmd_ipreallocate, "ask the leader for a takeover run now and wait "
                                       "for it"),
    "reloadnodes": (cmd_reloadnodes, "read the nodes file again on every node (nodes added "
                                     "at the end or deleted with #) without a restart"),
    "recover": (cmd_recover, "ask the leader for a database recovery now and wait for "
                             "the new generation"),
    "event": (cmd_event, "event scripts: status [EVENT], run [TIMEOUT] EVENT [ARGS], "
                         "script list|enable|disable [SCRIPT]"),
    "ping": (cmd_ping, "check that this node (or node PNN, through the cluster) answers"),
    "disable": (_admin_cmd("disable"), "disable this node (it stays a member, hosts no IPs)"),
    "enable": (_admin_cmd("enable"), "re-enable this node"),
    "stop": (_admin_cmd("stop"), "stop this node (inactive until 'continue')"),
    "continue": (_admin_cmd("continue"), "restart a stopped node"),
    "ban": (_admin_cmd("ban"), "ban this node for SECONDS"),
    "unban": (_admin_cmd("unban"), "lift this node's ban"),
}

# -- messaging (pyctdb additions: CTDB has such tools only in its tests) ---------------
def _srvid(text):
    try:
        v = int(text, 0)
        if not 0 <= v < 2 ** 64:
            raise ValueError
        return v
    except ValueError:
        raise UsageError(f"invalid srvid {text!r}: give an unsigned 64-bit integer "
                         "(decimal or 0x hex)") from None


def cmd_msgsend(c, a):
    from pyctdb.client.messaging import Messenger
    if a.pnn in ("all", "connected"):
        dst = a.pnn
    else:
        try:
            dst = int(a.pnn)
        except ValueError:
            raise UsageError(f"invalid node {a.pnn!r}: give a PNN or 'all'") from None
    with Messenger(c.path, timeout=c.timeout) as m:
        pnns = m.send(dst, _srvid(a.srvid), a.text.encode("utf-8"))
    return ({"pnns": pnns, "srvid": _srvid(a.srvid)} if a.json else None), 0


def _msg_json(msg):
    import base64
    try:
        text = msg.data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {"src": msg.src, "srvid": msg.srvid, "data": base64.b64encode(msg.data).decode(),
            "text": text, "dropped": msg.dropped}


def cmd_msglisten(c, a):
    from pyctdb.client.messaging import Messenger
    srvid = _srvid(a.srvid)
    if a.count is not None and a.count < 1:
        raise UsageError("--count must be at least 1")
    n = 0
    with Messenger(c.path, timeout=c.timeout) as m:
        m.register(srvid)
        print(f"Listening for messages to srvid {srvid} on node {m.pnn}", file=sys.stderr,
              flush=True)
        try:
            for msg in m.messages(timeout=a.wait, count=a.count):
                n += 1
                if a.json:
                    line = json.dumps(_msg_json(msg), sort_keys=True)
                elif a.X:
                    line = SEP + SEP.join([str(msg.src), str(msg.srvid), str(len(msg.data)),
                                           msg.text.replace("\n", "\\n")]) + SEP
                else:
                    line = (f"Message from node {msg.src} to srvid {msg.srvid} "
                            f"({len(msg.data)} bytes): {msg.text}")
                if msg.dropped:
                    print(f"pyctdb: {msg.dropped} messages were dropped before this one "
                          "(not read fast enough)", file=sys.stderr)
                print(line, flush=True)
        except KeyboardInterrupt:
            return None, 0
    if a.count is not None and n < a.count:
        print(f"pyctdb: {n} of {a.count} messages received within {a.wait}s",
              file=sys.stderr)
        return None, 1
    return None, 0


MESSAGING_COMMANDS = {
    "msgsend": (cmd_msgsend, "send TEXT to the clients of SRVID on node PNN (or 'all' "
                             "connected nodes) (pyctdb addition)"),
    "msglisten": (cmd_msglisten, "register SRVID and print the messages that arrive "
                                 "(pyctdb addition)"),
}
COMMANDS.update(MESSAGING_COMMANDS)


def _messaging_args(name, sp):
    if name == "msgsend":
        sp.add_argument("pnn", metavar="PNN|all")
        sp.add_argument("srvid", metavar="SRVID")
        sp.add_argument("text", metavar="TEXT")
    elif name == "msglisten":
        sp.add_argument("srvid", metavar="SRVID")
        sp.add_argument("--count", type=int, metavar="N",
                        help="exit after N messages (default: run until interrupted)")
        sp.add_argument("--wait", type=float, metavar="SECONDS",
                        help="give up after SECONDS without a message (exit 1 if --count "
                             "was not reached)")


from pyctdb.tools import (db_commands as _db_cli)  # noqa: E402  (database commands: db/cli.py)
COMMANDS.update(_db_cli.COMMANDS)
from pyctdb.tools import (conf_commands as _conf_cli)  # noqa: E402  (pyctdb conf: db/registry_cli.py)
COMMANDS.update(_conf_cli.COMMANDS)

#: Commands that act on another node with -n PNN (CTDB's "remote" commands we have).
REMOTE = {"disable", "enable", "stop", "continue", "ban", "unban", "addip", "delip"}


def build_parser():
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
    sub.add_parser("ipalloc", help="plan a public address allocation offline, as CTDB "
                   "would (see 'pyctdb ipalloc --help')", add_help=False)
    for name, (_fn, help_) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, parents=[common], description=help_)
        if name == "nodestatus":
            sp.add_argument("pnn", nargs="?", help="PNN, PNN list (0,2) or 'all'")
        elif name == "getvar":
            sp.add_argument("name")
        elif name == "ip":
            sp.add_argument("which", nargs="?", metavar="all")
            sp.add_argument("-v", action="store_true", help="verbose: show interfaces")
        elif name == "moveip":
            sp.add_argument("address", metavar="IP")
            sp.add_argument("pnn", metavar="PNN")
        elif name == "addip":
            sp.add_argument("address", metavar="IP/MASK")
            sp.add_argument("iface", metavar="IFACE[,IFACE...]")
        elif name == "delip":
            sp.add_argument("address", metavar="IP")
        elif name == "reloadips":
            sp.add_argument("nodes", nargs="?", metavar="all|PNN-LIST")
        elif name == "event":
            sp.add_argument("action", choices=["status", "run", "script"])
            sp.add_argument("args", nargs="*")
        elif name == "ping":
            sp.add_argument("pnn", nargs="?", metavar="PNN")
        elif name == "ban":
            sp.add_argument("seconds", metavar="SECONDS")
        elif name == "setvar":
            sp.add_argument("name")
            sp.add_argument("value")
        _messaging_args(name, sp)
        _db_cli.add_arguments(name, sp)
        _conf_cli.add_arguments(name, sp)
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    # `pyctdb ipalloc ...` plans an allocation offline: no agent involved.
    if argv and argv[0] == "ipalloc":
        from pyctdb.tools.ipalloc import main as ipalloc_main
        return ipalloc_main(argv[1:])
    parser = build_parser()
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
    fn = COMMANDS[a.command][0]
    client = Client(a.socket or default_socket(), timeout=a.timeout)
    try:
        out, rc = fn(client, a)
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
