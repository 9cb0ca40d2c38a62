"""The cluster's commands of ``pyctdb``, in CTDB's output forms (plain, ``-X``,
``--json``): status and nodes, tunables, public addresses, recovery, event scripts, and
the node administration commands (disable, enable, stop, continue, ban, unban)."""

from __future__ import annotations

import ipaddress
import sys
import time

from pyctdb import __version__
from pyctdb.client.connection import AgentUnavailable, ApiCallError
from pyctdb.errors import UsageError
from pyctdb.rules import nodeflags
from pyctdb.tools.commands import SEP, Table, arg

COMMANDS = Table()


def _machine_header():
    """ctdb's -X status/nodestatus header (print_nodemap_machine in tools/ctdb.c):
    scripts such as CTDB's NAT gateway and LVS helpers pick their columns by place."""
    cols = ["Node", "IP", "Disconnected", "Unknown", "Banned", "Disabled", "Unhealthy",
            "Stopped", "Inactive", "PartiallyOnline", "ThisNode"]
    return SEP + SEP.join(cols) + SEP


def _machine_line(n):
    fl = n["flags"]
    columns = (nodeflags.DISCONNECTED, nodeflags.UNKNOWN, nodeflags.BANNED,
               nodeflags.PERMANENTLY_DISABLED, nodeflags.UNHEALTHY, nodeflags.STOPPED,
               nodeflags.INACTIVE)
    vals = ([str(n["pnn"]), n["address"] or ""] + [str(int(bool(fl & f))) for f in columns]
            + ["0", "Y" if n["this_node"] else "N"])
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


@COMMANDS.command("status", help="show the cluster status")
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


@COMMANDS.command("nodestatus", help="show and return node status (exit code = OR of flags)",
                  args=[arg("pnn", nargs="?", help="PNN, PNN list (0,2) or 'all'")])
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


@COMMANDS.command("listnodes", help="list the nodes in the cluster")
def cmd_listnodes(c, a):
    res = c.call("listnodes")
    if a.json:
        return res, 0
    nodes = [n for n in res["nodes"] if not n["deleted"]]
    if a.X:
        return "\n".join(SEP + SEP.join([str(n["pnn"]), n["address"]]) + SEP
                         for n in nodes), 0
    return "\n".join(n["address"] for n in nodes), 0


@COMMANDS.command("pnn", help="show the PNN of this node")
def cmd_pnn(c, a):
    res = c.call("pnn")
    return (res if a.json else str(res["pnn"])), 0


@COMMANDS.command("leader", help="show the PNN of the leader")
def cmd_leader(c, a):
    res = c.call("leader")
    if a.json:
        return res, 0 if res["leader"] is not None else 1
    if res["leader"] is None:
        print("Leader:UNKNOWN (no leader elected)", file=sys.stderr)
        return None, 1
    return str(res["leader"]), 0


@COMMANDS.command("getdebug", help="show the agent's log level")
def cmd_getdebug(c, a):
    res = c.call("getdebug")
    return (res, 0) if a.json else (res["level"], 0)


@COMMANDS.command("setdebug", help="set the agent's log level until it restarts",
                  args=[arg("level", help="ERROR, WARNING, NOTICE, INFO or DEBUG")])
def cmd_setdebug(c, a):
    res = c.call("setdebug", level=a.level)
    return (res, 0) if a.json else (None, 0)


@COMMANDS.command("uptime", help="show node uptime and time of the last recovery")
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


@COMMANDS.command("getvar", help="show a tunable", args=[arg("name")])
def cmd_getvar(c, a):
    try:
        res = c.call("getvar", name=a.name)
    except ApiCallError as exc:
        if exc.code == "ENOENT":
            return f"No such tunable {a.name}", 1
        raise
    return (res if a.json else _var_line(res["name"], res["value"])), 0


@COMMANDS.command("setvar", help="set a tunable on this node (not persisted)",
                  args=[arg("name"), arg("value")])
def cmd_setvar(c, a):
    try:
        res = c.call("setvar", name=a.name, value=a.value)
    except ApiCallError as exc:
        if exc.code == "ENOENT":
            return f"No such tunable {a.name}", 1
        raise
    return (res if a.json else None), 0


@COMMANDS.command("listvars", help="list all tunables")
def cmd_listvars(c, a):
    res = c.call("listvars")
    if a.json:
        return res, 0
    return "\n".join(_var_line(t["name"], t["value"]) for t in res["tunables"]), 0


@COMMANDS.command("version", help="show the version")
def cmd_version(c, a):
    try:
        agent = c.call("version")
    except AgentUnavailable:
        agent = None
    if a.json:
        return {"cli_version": __version__, "agent": agent}, 0
    return __version__, 0


@COMMANDS.command("ip", help="show public addresses ('all': of every node) and who hosts them",
                  args=[arg("which", nargs="?", metavar="all"),
                        arg("-v", action="store_true", help="verbose: show interfaces")])
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


@COMMANDS.command("moveip", help="move a public address to node PNN now",
                  args=[arg("address", metavar="IP"), arg("pnn", metavar="PNN")])
def cmd_moveip(c, a):
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


@COMMANDS.command("addip", help="add a public address to this node's list (at runtime only; "
                  "a takeover run follows)", remote=True,
                  args=[arg("address", metavar="IP/MASK"),
                        arg("iface", metavar="IFACE[,IFACE...]")])
def cmd_addip(c, a):
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


@COMMANDS.command("delip", help="remove a public address from this node's list (at runtime "
                  "only; released first if hosted here)", remote=True,
                  args=[arg("address", metavar="IP")])
def cmd_delip(c, a):
    try:
        addr = str(ipaddress.ip_address(a.address))
    except ValueError:
        print(f"Invalid IP address {a.address}", file=sys.stderr)
        return None, 1
    res = c.call("delip", address=addr, **_node_arg(a))
    return _ip_change_done(a, res, f"Node does not know about IP address {addr}")


@COMMANDS.command("reloadips", help="re-read the public_addresses file on this node (or 'all', "
                  "or PNN,PNN) and apply the difference",
                  args=[arg("nodes", nargs="?", metavar="all|PNN-LIST")])
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


@COMMANDS.command("ipreallocate", help="ask the leader for a takeover run now and wait for "
                  "it")
def cmd_ipreallocate(c, a):
    res = c.call("ipreallocate")
    return (res if a.json else None), 0


@COMMANDS.command("reloadnodes", help="read the nodes file again on every node (nodes added "
                  "at the end or deleted with #) without a restart")
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


@COMMANDS.command("recover", help="ask the leader for a database recovery now and wait for "
                  "the new generation")
def cmd_recover(c, a):
    res = c.call("recover")
    return (res if a.json else None), 0


@COMMANDS.command("event", help="event scripts: status [EVENT], run [TIMEOUT] EVENT [ARGS], "
                  "script list|enable|disable [SCRIPT]",
                  args=[arg("action", choices=["status", "run", "script"]),
                        arg("args", nargs="*")])
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
            # (CTDB's form: the scripts CTDB provides, a blank line, the local ones)
            lines = [("* " if s["enabled"] else "  ") + s["script"] for s in res["scripts"]
                     if s.get("provided")]
            local = [("* " if s["enabled"] else "  ") + s["script"] for s in res["scripts"]
                     if not s.get("provided")]
            if lines and local:
                lines.append("")
            return "\n".join(lines + local), 0
        if len(rest) != 2:
            raise UsageError(f"usage: event script {rest[0]} [legacy] SCRIPT")
        res = c.call("event_script", action=rest[0], script=rest[1])
        return (res if a.json else None), 0
    raise UsageError("usage: event status|run|script ...")


@COMMANDS.command("ping", help="check that this node (or node PNN, through the cluster) "
                  "answers",
                  args=[arg("pnn", nargs="?", metavar="PNN")])
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


def _admin(c, a, action, **args):
    """disable, enable, stop, continue, ban, unban: no output (the API's result with
    --json)."""
    res = c.call(action, **args, **_node_arg(a))
    return (res if a.json else None), 0


@COMMANDS.command("disable", help="disable this node (it stays a member, hosts no IPs)",
                  remote=True)
def cmd_disable(c, a):
    return _admin(c, a, "disable")


@COMMANDS.command("enable", help="re-enable this node", remote=True)
def cmd_enable(c, a):
    return _admin(c, a, "enable")


@COMMANDS.command("stop", help="stop this node (inactive until 'continue')", remote=True)
def cmd_stop(c, a):
    return _admin(c, a, "stop")


@COMMANDS.command("continue", help="restart a stopped node", remote=True)
def cmd_continue(c, a):
    return _admin(c, a, "continue")


@COMMANDS.command("ban", help="ban this node for SECONDS", remote=True,
                  args=[arg("seconds", metavar="SECONDS")])
def cmd_ban(c, a):
    try:
        secs = float(a.seconds)
        if secs <= 0:
            raise ValueError
    except ValueError:
        raise UsageError(f"invalid ban time {a.seconds!r}: give a positive number "
                         "of seconds") from None
    return _admin(c, a, "ban", seconds=secs)


@COMMANDS.command("unban", help="lift this node's ban", remote=True)
def cmd_unban(c, a):
    return _admin(c, a, "unban")
