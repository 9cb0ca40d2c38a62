"""The messaging commands of ``pyctdb``: ``msgsend`` and ``msglisten`` (pyctdb additions:
CTDB has such tools only in its tests)."""

from __future__ import annotations

import base64
import json
import sys

from pyctdb.errors import UsageError
from pyctdb.tools.commands import SEP, Table, arg

COMMANDS = Table()


def _messenger(c):
    """A Messenger on the agent ``c`` talks to."""
    # imported here, not at the top: pyctdb.client.messaging (with asyncio) adds 21 ms of
    # imports to the 63 ms every other command takes to import at start (python -X
    # importtime -m pyctdb.tools.cli --help, best of 8)
    from pyctdb.client.messaging import Messenger
    return Messenger(c.path, timeout=c.timeout)


def _srvid(text):
    try:
        v = int(text, 0)
        if not 0 <= v < 2 ** 64:
            raise ValueError
        return v
    except ValueError:
        raise UsageError(f"invalid srvid {text!r}: give an unsigned 64-bit integer "
                         "(decimal or 0x hex)") from None


@COMMANDS.command("msgsend", help="send TEXT to the clients of SRVID on node PNN (or 'all' "
                  "connected nodes) (pyctdb addition)",
                  args=[arg("pnn", metavar="PNN|all"), arg("srvid", metavar="SRVID"),
                        arg("text", metavar="TEXT")])
def cmd_msgsend(c, a):
    if a.pnn in ("all", "connected"):
        dst = a.pnn
    else:
        try:
            dst = int(a.pnn)
        except ValueError:
            raise UsageError(f"invalid node {a.pnn!r}: give a PNN or 'all'") from None
    with _messenger(c) as m:
        pnns = m.send(dst, _srvid(a.srvid), a.text.encode("utf-8"))
    return ({"pnns": pnns, "srvid": _srvid(a.srvid)} if a.json else None), 0


def _msg_json(msg):
    try:
        text = msg.data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {"src": msg.src, "srvid": msg.srvid, "data": base64.b64encode(msg.data).decode(),
            "text": text, "dropped": msg.dropped}


@COMMANDS.command("msglisten", help="register SRVID and print the messages that arrive "
                  "(pyctdb addition)",
                  args=[arg("srvid", metavar="SRVID"),
                        arg("--count", type=int, metavar="N",
                            help="exit after N messages (default: run until interrupted)"),
                        arg("--wait", type=float, metavar="SECONDS",
                            help="give up after SECONDS without a message (exit 1 if "
                                 "--count was not reached)")])
def cmd_msglisten(c, a):
    srvid = _srvid(a.srvid)
    if a.count is not None and a.count < 1:
        raise UsageError("--count must be at least 1")
    n = 0
    with _messenger(c) as m:
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
