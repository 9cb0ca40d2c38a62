"""The node-to-node controls, one typed definition each (see docs/protocol.md).

A CONTROL frame asks the receiving node to run ``op`` with ``args`` (a JSON object); the
REPLY carries the handler's ``result``. As samba's ``ctdb/protocol/protocol_api.h`` has
one request/reply pair per control, this module has one :class:`ControlDef` per op in
:data:`CONTROLS`: its arguments (:class:`Arg`: name, accepted types, required or not,
simple constraints) and its result (:class:`Reply`: top-level type and keys). The
definitions are read from the handlers (``_ctl_*`` in ``pyctdb.server``) and from every
place the agent sends a control; ``agent/tests/test_controls.py`` checks both, and that
the tables of docs/protocol.md are :func:`markdown_table` of these definitions.

The API, for the side that serves a control (before it calls the handler)::

    from pyctdb.protocol import controls
    args = controls.validate_request(op, args)   # the same dict, unchanged
    # raises controls.UnknownControl (code ENOSYS) for an op nobody defined, and
    # controls.ControlArgumentError (code EINVAL) for a missing or mistyped argument;
    # both are pyctdb.errors.PyctdbError, and their message names the op and argument

and, optionally, for the side that receives a REPLY::

    controls.validate_reply(op, result)          # the result, or ControlReplyError (EPROTO)

Rules the checks follow:

* A missing required argument, or one of a type the definition does not list, is
  refused. A bool is never taken for an int (JSON keeps them apart; Python does not).
  An int is taken where a float is.
* Values are checked only loosely (non-negative numbers, list element types): a handler
  that checks a value itself, with its own message, stays the one that refuses it. An
  argument whose value the handler checks entirely (``checked=False``) is only required
  to be present: its documented type is what the agent sends.
* Arguments the definition does not know are ignored, as unknown fields of a frame are,
  so a later minor version can add arguments (``strict=True`` refuses them: the tests
  use it for the agent's own controls).
* Defaults are never filled in: a handler may tell a missing argument from a given one.
  ``Arg.default`` documents what the handler assumes when it is missing.
* A node calling a control on itself passes Python values: a binary chunk is ``bytes``
  there (base64 text on the wire), which the definitions of ``db_pull``/``db_push``
  accept.

``python -m pyctdb.protocol.controls --markdown [cluster|database]`` prints the tables of
docs/protocol.md; ``--update-docs docs/protocol.md`` rewrites them there.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from pyctdb.errors import PyctdbError

NoneType = type(None)


class ControlArgumentError(PyctdbError):
    """A control's arguments do not match its definition: ``op``, ``argument`` (the
    argument's name) and ``problem`` (what is wrong with it)."""

    code = "EINVAL"

    def __init__(self, op, argument, problem):
        super().__init__(f"control {op}: argument {argument!r} {problem}")
        self.op = op
        self.argument = argument
        self.problem = problem


class UnknownControl(PyctdbError):
    """A control no definition names. ENOSYS (not EINVAL): the op is well formed, this
    node does not implement it (e.g. an older agent), which a caller may want to tell
    apart from bad arguments. The message is the agent's ``unknown control 'OP'``."""

    code = "ENOSYS"

    def __init__(self, op):
        super().__init__(f"unknown control {op!r}")
        self.op = op


class ControlReplyError(PyctdbError):
    """A control's result does not have the shape of its definition's :class:`Reply`."""

    code = "EPROTO"

    def __init__(self, op, problem):
        super().__init__(f"control {op}: result {problem}")
        self.op = op
        self.problem = problem


class _Missing:
    """The marker of "no default" (an argument the handler cannot do without)."""

    def __repr__(self):
        return "NO_DEFAULT"


NO_DEFAULT = _Missing()

#: How types are named in messages and in the docs' tables.
_TYPE_NAMES = {bool: "bool", int: "int", float: "number", str: "string", bytes: "bytes",
               list: "list", dict: "object", NoneType: "null"}
_TYPE_WORDS = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               bytes: "bytes", list: "a list", dict: "an object", NoneType: "null"}


def _is(value, types) -> bool:
    """``value`` is of one of ``types`` (a bool only if bool is listed; an int is a
    float)."""
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def _words(types) -> str:
    names = [_TYPE_WORDS[t] for t in types if not (t is int and float in types)]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


@dataclass(frozen=True)
class Arg:
    """One argument of a control: its name, the types it may have, whether it must be
    there, and simple constraints on its value."""

    name: str
    #: accepted types (bool, int, float, str, bytes, list, dict, NoneType)
    types: tuple
    required: bool = True
    #: what the handler assumes when the argument is missing (documentation only)
    default: object = NO_DEFAULT
    #: types of a list's elements, or of an object's values
    items: tuple = ()
    #: smallest value of a number
    min: int | None = None
    #: most characters of a string
    max_len: int | None = None
    #: required unless this other argument is given and true
    required_unless: str | None = None
    #: False: the handler checks the value itself, with its own message; only its
    #: presence is checked here
    checked: bool = True
    #: a few words for the docs' table
    doc: str = ""

    def check(self, op, args):
        if self.name not in args:
            excused = self.required_unless and args.get(self.required_unless)
            if self.required and not excused:
                raise ControlArgumentError(op, self.name, "is missing")
            return
        if not self.checked:
            return
        value = args[self.name]
        if not _is(value, self.types):
            raise ControlArgumentError(op, self.name, f"must be {_words(self.types)}, not "
                                                      f"{type(value).__name__}")
        if self.min is not None and _is(value, (int, float)) and value < self.min:
            raise ControlArgumentError(op, self.name, f"must be at least {self.min}, "
                                                      f"not {value}")
        if (self.max_len is not None and isinstance(value, str)
                and len(value) > self.max_len):
            raise ControlArgumentError(op, self.name, f"must be at most {self.max_len} "
                                                      f"characters, not {len(value)}")
        if self.items and isinstance(value, (list, dict)):
            pairs = value.items() if isinstance(value, dict) else enumerate(value)
            for i, x in pairs:
                if not _is(x, self.items):
                    what = f"value {i!r}" if isinstance(value, dict) else f"element {i}"
                    raise ControlArgumentError(
                        op, self.name, f"{what} must be {_words(self.items)}, not "
                                       f"{type(x).__name__}")

    def signature(self) -> str:
        """``name: type`` (``name?`` when optional) as the docs' table shows it."""
        names = [_TYPE_NAMES[t] for t in self.types
                 if not (t is int and float in self.types)]
        if self.items and list in self.types:
            inner = " or ".join(_TYPE_NAMES[t] for t in self.items
                                if not (t is int and float in self.items))
            names = [f"[{inner}]" if n == "list" else n for n in names]
        if self.items and dict in self.types:
            inner = " or ".join(_TYPE_NAMES[t] for t in self.items)
            names = [f"{{string: {inner}}}" if n == "object" else n for n in names]
        optional = "" if self.required and not self.required_unless else "?"
        return f"{self.name}{optional}: {' or '.join(names)}"


@dataclass(frozen=True)
class Reply:
    """The result of a control: its top-level type and the keys it always has
    (``optional``: keys some answers have)."""

    type: type = dict
    keys: tuple = ()
    optional: tuple = ()
    doc: str = ""

    def shape(self) -> str:
        if self.type is dict:
            keys = list(self.keys) + [f"{k}?" for k in self.optional]
            return "`{" + ", ".join(keys) + "}`"
        return f"`{_TYPE_NAMES[self.type]}`"


@dataclass(frozen=True)
class ControlDef:
    """One control: its op, request (arguments) and reply (result)."""

    op: str
    args: tuple = ()
    reply: Reply = Reply()
    #: groups of arguments of which at least one must be given
    one_of: tuple = ()
    #: the docs' table it is listed in: "cluster" or "database"
    group: str = "cluster"
    #: who sends it, and what the receiver does (the docs' table)
    sent_by: str = ""

    def arg(self, name):
        return next((a for a in self.args if a.name == name), None)

    def validate(self, args, strict=False) -> dict:
        if not isinstance(args, dict):
            raise ControlArgumentError(self.op, "args", f"must be an object, not "
                                                        f"{type(args).__name__}")
        for a in self.args:
            a.check(self.op, args)
        for group in self.one_of:
            if not any(k in args for k in group):
                raise ControlArgumentError(self.op, group[0], "is missing (give one of "
                                           + ", ".join(group) + ")")
        if strict:
            known = {a.name for a in self.args}
            for k in args:
                if k not in known:
                    raise ControlArgumentError(self.op, k, "is not an argument of this "
                                                           "control")
        return args

    def validate_reply(self, result):
        if not _is(result, (self.reply.type,)):
            raise ControlReplyError(self.op, f"must be {_words((self.reply.type,))}, not "
                                             f"{type(result).__name__}")
        if isinstance(result, dict):
            for k in self.reply.keys:
                if k not in result:
                    raise ControlReplyError(self.op, f"lacks {k!r}")
        return result


# -- the definitions ----------------------------------------------------------------------
# Shorthands for the argument types.
INT = (int,)
OPT_INT = (int, NoneType)
STR = (str,)
OPT_STR = (str, NoneType)
BOOL = (bool,)
NUMBER = (int, float)
LIST = (list,)
DICT = (dict,)
#: a binary chunk: base64 text on the wire, bytes when a node calls its own handler
CHUNK = (str, bytes)

#: The argument naming a database by its name, in every database control but db_attach.
DB = Arg("db", STR)


def _db(*args):
    return (DB,) + args


_DEFS = [
    # -- cluster ---------------------------------------------------------------------------
    ControlDef(
        "ping",
        reply=Reply(dict, ("pnn", "time"), doc="(`time`: the receiver's epoch time)"),
        sent_by="API `ping` with a `pnn`: a round trip to that node"),
    ControlDef(
        "admin",
        (Arg("action", STR, checked=False,
             doc="one of `disable`, `enable`, `stop`, `continue`, `ban`, `unban`"),
         Arg("seconds", NUMBER, required=False, checked=False,
             doc="a positive number, for `ban` only")),
        Reply(dict, ("pnn", "old_flags", "flags", "state", "changed")),
        sent_by="API `disable`, `enable`, `stop`, `continue`, `ban`, `unban` with a `pnn` "
                "(`pyctdb -n PNN disable`), to that node, which changes its own flag"),
    ControlDef(
        "get_public_ips",
        reply=Reply(dict, ("configured", "hosted"),
                    doc="(`configured`: `[{address, prefix, interfaces}]`, the receiver's "
                        "address list; `hosted`: `[address]`, the addresses it hosts)"),
        sent_by="the leader at the start of every takeover run (to every connected node), "
                "`move_ip` (to the target), API `ip` (to every connected node)"),
    ControlDef(
        "release_ip",
        (Arg("address", STR),
         Arg("term", INT, required=False, min=0,
             doc="the leader's term: refused (ESTALE) if older than the newest seen")),
        Reply(dict, ("released", "connections"),
              doc="whether the address was on an interface, and the TCP connections it "
                  "had (to tickle from the new holder)"),
        sent_by="the leader in a takeover run, before any take (a node also runs this "
                "handler itself for `RecoveryDropAllIPs`, and for an address `delip` "
                "removed that no run released within 5 s). The receiver runs the "
                "`releaseip` event, removes the address and resets its connections."),
    ControlDef(
        "take_ip",
        (Arg("address", STR),
         Arg("connections", LIST, required=False, default=[], items=LIST,
             doc="connections to tickle"),
         Arg("term", INT, required=False, min=0,
             doc="the leader's term: refused (ESTALE) if older than the newest seen")),
        Reply(dict, ("taken", "iface")),
        sent_by="the leader in a takeover run, once every release is done. The receiver "
                "adds the address to the first configured interface that is up, announces "
                "it (gratuitous ARP / unsolicited NA), runs the `takeip` event and sends "
                "tickle ACKs to `connections` and to those it was told of with `tickles`. "
                "Fails if the address is not in its list or no interface is up."),
    ControlDef(
        "run_event",
        (Arg("event", STR),
         Arg("args", LIST, required=False, default=[], items=STR,
             doc="the event's arguments")),
        Reply(dict, ("status",),
              doc="`OK`, `ERROR`, `TIMEDOUT`, or `NONE` when the event could not be run"),
        sent_by="the leader: `startrecovery` / `recovered` to every member around a "
                "recovery; `startipreallocate` / `ipreallocated` to every node that "
                "reported its addresses, around a takeover run that moves something"),
    ControlDef(
        "tickles",
        (Arg("tickles", DICT, required=False, default={}, items=LIST,
             doc="the connections to each address"),),
        Reply(dict),
        sent_by="every node to every connected node when the TCP connections of the "
                "addresses it hosts change (checked every second)"),
    ControlDef(
        "ctdb_control",
        (Arg("opcode", INT), Arg("data", STR, doc="base64"),
         Arg("srvid", INT, required=False, default=0),
         Arg("flags", INT, required=False, default=0)),
        Reply(dict, ("status", "data"), ("error",),
              doc="`data` base64; `error` when the control failed"),
        sent_by="a node's [CTDB socket](#ctdbs-client-protocol-on-ctdbs-socket), for a "
                "CTDB control a client addressed to this node: answered as this node's "
                "CTDB socket answers it"),
    ControlDef(
        "move_ip",
        (Arg("address", STR, checked=False), Arg("pnn", INT, checked=False)),
        Reply(dict, doc="the takeover run's summary `{time, reason, algorithm, "
                        "duration_ms, moves, unreachable}`"),
        sent_by="API `moveip`, to the leader; fails on a node that is not the leader, with "
                "failover disabled, or when node `pnn` does not list the address"),
    ControlDef(
        "add_public_ip",
        (Arg("address", STR, checked=False), Arg("prefix", INT, checked=False),
         Arg("interfaces", (list, str), items=STR, checked=False,
             doc="a list, or names separated by commas"),
         Arg("check", BOOL, required=False, default=False,
             doc="only say whether it would change anything")),
        Reply(dict, ("pnn", "address", "prefix", "interfaces", "changed"), ("existing",),
              doc="`existing` when the address was already listed"),
        sent_by="API `addip`, to the node whose list changes"),
    ControlDef(
        "del_public_ip",
        (Arg("address", STR, checked=False),
         Arg("check", BOOL, required=False, default=False)),
        Reply(dict, ("pnn", "address", "hosted", "changed"), ("prefix", "interfaces"),
              doc="`prefix` and `interfaces` when it was listed"),
        sent_by="API `delip`, to the node whose list changes"),
    ControlDef(
        "reload_public_ips",
        (Arg("check", BOOL, required=False, default=False),),
        Reply(dict, ("pnn", "added", "removed", "changed"), doc="(address lists)"),
        sent_by="API `reloadips`, to each node named. A hosted address whose prefix "
                "changed is released (and taken again by the takeover run); one whose "
                "interfaces changed stays and moves interface if it must (`updateip` "
                "event)"),
    ControlDef(
        "reload_nodes",
        (Arg("digest", STR, doc="SHA-256 of the asking node's nodes list"),),
        Reply(dict, ("changes",), doc="(`changes`: `[[pnn, change]]`)"),
        sent_by="API `reloadnodes`, to this node and every connected node: the receiver "
                "reads its nodes list again, refuses it unless its digest is `digest` (the "
                "asking node's list), checks CTDB's rules (nodes added at the end or "
                "deleted with `#`, no address changed, not itself deleted) and applies it: "
                "new nodes are connected to, deleted ones disconnected and forgotten. The "
                "HELLO digest of later connections is the new list's"),
    ControlDef(
        "recover",
        (Arg("reason", OPT_STR, required=False, default="recover"),),
        Reply(dict, ("leader",)),
        sent_by="API `recover`, and a coordinator after a transaction in doubt, to the "
                "leader: a recovery at its next cycle even if nothing changed; fails on a "
                "node that is not the leader"),
    ControlDef(
        "ipreallocate",
        (Arg("reason", OPT_STR, required=False, default="ipreallocate"),),
        Reply(dict, doc="the takeover run's summary, or `{skipped}` when failover is "
                        "disabled on the leader"),
        sent_by="API `addip`, `delip`, `reloadips` (after a change) and `ipreallocate`, to "
                "the leader; fails on a node that is not the leader or while the cluster "
                "is in recovery"),
    ControlDef(
        "disable_takeover_runs",
        (Arg("seconds", NUMBER, doc="how long; 0 enables them again"),),
        Reply(dict, ("pnn", "until"), doc="`until`: CLOCK_MONOTONIC seconds, or null"),
        sent_by="a node's CTDB socket, to the leader, for CTDB's "
                "`CTDB_SRVID_DISABLE_TAKEOVER_RUNS` message (`ctdb reloadips`): no "
                "takeover run starts on the leader until then (periodic, on a change, or "
                "asked: those fail with EAGAIN); fails on a node that is not the leader"),

    # -- database --------------------------------------------------------------------------
    ControlDef(
        "db_attach",
        (Arg("name", STR), Arg("persistent", BOOL, required=False, default=False),
         Arg("tdb", BOOL, required=False, default=False,
             doc="as a TDB file (attached through CTDB's socket)")),
        Reply(dict, ("name", "db_id", "persistent", "seqnum")),
        group="database",
        sent_by="API `attach` and CTDB's DB_ATTACH(_PERSISTENT), to every other member; the "
                "receiver creates the database if it lacks it (an existing one of the other "
                "kind: error)"),
    ControlDef(
        "db_migrate",
        _db(Arg("key", STR, doc="base64"), Arg("to", INT, min=0, doc="a PNN")),
        Reply(list, doc="a record"),
        group="database",
        sent_by="a node that wants a volatile record it is not the DMASTER of, to the key's "
                "LMASTER. The LMASTER (serialising per key) hands over its own copy when "
                "it is the DMASTER, nobody is, or the DMASTER is not a member; otherwise it "
                "asks the DMASTER with `db_give`. It records `to` as DMASTER in its copy."),
    ControlDef(
        "db_give",
        _db(Arg("key", STR, doc="base64"), Arg("to", INT, min=0, doc="a PNN")),
        Reply(list, doc="a record"),
        group="database",
        sent_by="the LMASTER, to the record's DMASTER, which waits at most 1 s for a local "
                "lock on the record, raises the RSN, records `to` as DMASTER and returns "
                "the record; fails if it is not the DMASTER"),
    ControlDef(
        "db_trans_commit",
        _db(Arg("writes", LIST, items=LIST, doc="`[[key, value or null]]`"),
            Arg("txid", OPT_STR, required=False, default=None),
            Arg("expect_seqnum", OPT_INT, required=False, default=None)),
        Reply(dict, ("seqnum", "nodes")),
        group="database",
        sent_by="API `pstore`, `pdelete`, `ptrans`, `conf_*`, to the database's coordinator "
                "(`vnnmap[db_id % len(vnnmap)]`), which serialises the transactions of a "
                "database and sends `db_trans_apply` to every member; fails unless every "
                "member applied it. The transactions that arrive while one "
                "`db_trans_apply` round is out go together in the next round (each "
                "numbered in order, one `db_trans_apply` and one fsync per member for all "
                "of them). With `expect_seqnum` (the registry's read-modify-write) it fails "
                "with `transaction conflict` unless the database's sequence number is still "
                "that one. A round that some member did not apply fails with `transaction "
                "in doubt`; the coordinator then asks the leader for a recovery (`recover`) "
                "and refuses the database's transactions (`frozen`) until the generation "
                "changes; the requester waits for the recovery and looks for `txid` in the "
                "record `__pyctdb_txids__` of its copy (databases.md)"),
    ControlDef(
        "db_trans_apply",
        _db(Arg("db_id", OPT_INT, required=False, default=None, min=0),
            Arg("seqnum", INT, min=0), Arg("records", LIST, items=LIST),
            Arg("tdb", BOOL, required=False, default=False,
                doc="a TDB database (attached through CTDB's socket), created as one")),
        Reply(dict, (), ("skipped",)),
        group="database",
        sent_by="the coordinator, to every member (itself included): one LMDB transaction "
                "writes the records and sets the sequence number. A node that cannot serve "
                "the database (unopenable environment, damaged database) answers "
                "`skipped`"),
    ControlDef(
        "db_wipe",
        _db(),
        Reply(dict),
        group="database",
        sent_by="API `wipedb`, to every member (persistent: the sequence number goes up)"),
    ControlDef(
        "db_freeze",
        reply=Reply(dict, ("dbs", "unavailable"),
                    doc="(`dbs`: `[{name, db_id, persistent, seqnum, unhealthy, tdb}]`; "
                        "`unavailable`: `[persistent]`)"),
        group="database",
        sent_by="the leader, first in a recovery, and a node running `restoredb`, to every "
                "member: no more database requests are served until `db_thaw` (or until "
                "the node follows a new generation in NORMAL mode); writes already queued "
                "finish first"),
    ControlDef(
        "db_pull",
        _db(Arg("after", OPT_STR, required=False, default=None,
                doc="the previous reply's `last` key"),
            Arg("dmaster_only", BOOL, required=False, default=False),
            Arg("chunk", BOOL, required=False, default=False)),
        Reply(dict, ("more", "last", "seqnum"), ("chunk", "records")),
        group="database",
        sent_by="the leader in a recovery (every record, at most 2 MiB of records per "
                "reply, as a [binary chunk](#binary-record-chunks); `after`: the previous "
                "reply's `last` key); API `catdb` on a volatile database with "
                "`dmaster_only` (every member's live records it is DMASTER of). Without "
                "`chunk: true` the reply has `records` (a list of wire records, about "
                "1 MiB) instead of `chunk`, as agents before the binary chunks answer"),
    ControlDef(
        "db_push",
        _db(Arg("db_id", OPT_INT, required=False, default=None, min=0),
            Arg("persistent", BOOL),
            Arg("tdb", BOOL, required=False, default=False,
                doc="a TDB database (attached through CTDB's socket), created as one"),
            Arg("chunk", CHUNK, required=False, doc="base64"),
            Arg("records", LIST, required=False, items=LIST,
                doc="wire records, instead of `chunk`"),
            Arg("first", BOOL, required=False, default=False),
            Arg("last", BOOL, required=False, default=False),
            Arg("seqnum", OPT_INT, required=False, default=None, min=0)),
        Reply(dict, (), ("records", "skipped")),
        one_of=(("chunk", "records"),),
        group="database",
        sent_by="the leader in a recovery, to every member: the merged database in [binary "
                "chunks](#binary-record-chunks) (a push with `records`, a list of wire "
                "records, instead of `chunk` is still accepted); `first` creates the "
                "database if needed and starts the staging, `last` replaces the node's "
                "copy in one LMDB transaction (and sets `seqnum` for a persistent "
                "database). A damaged chunk is refused (`RuntimeError: recovery push of DB "
                "rejected: REASON`, logged as `recovery: damaged records of DB from node N "
                "rejected (REASON)`), and so is every later chunk of that push: the node's "
                "copy stays as it was and the recovery fails (the leader runs it again)"),
    ControlDef(
        "db_thaw",
        (Arg("members", (list, NoneType), required=False, default=None, items=INT,
             doc="the generation's members"),
         Arg("if_generation", OPT_INT, required=False, default=None)),
        Reply(dict, (), ("skipped",)),
        group="database",
        sent_by="the leader, to every member, after the new generation is in place; "
                "`members` are its members (a follower may adopt the generation from the "
                "leader's STATE a little later; transactions, `wipedb` and `catdb` use "
                "these members until then). A restoring node (API `restoredb`, after its "
                "`db_freeze` and `db_restore` chunks) sends `if_generation`: the node thaws "
                "only if its generation is still that one and it is not in recovery (else "
                "`skipped`: the recovery's thaw ends the freeze)"),
    ControlDef(
        "db_vacuum_fetch",
        _db(Arg("keys", LIST, items=STR, doc="base64 keys")),
        Reply(dict),
        group="database",
        sent_by="vacuuming: a DMASTER of tombstones, to their LMASTER, which migrates them "
                "to itself in the background and deletes them everywhere "
                "(`db_vacuum_delete`)"),
    ControlDef(
        "db_vacuum_delete",
        _db(Arg("records", LIST, items=LIST, doc="`[[key, rsn]]`")),
        Reply(dict, ("kept",), doc="(`kept`: `[key]`, the copies left)"),
        group="database",
        sent_by="vacuuming: the LMASTER (holding the key's migration lock), to every other "
                "member: delete each copy whose RSN is at most `rsn` and that is not held "
                "as DMASTER"),
    ControlDef(
        "db_detach",
        (Arg("check", BOOL, required=False, default=False,
             doc="only ask whether `AllowClientDBAttach` is set"),
         Arg("db", STR, required_unless="check")),
        Reply(dict, (), ("allow_attach", "detached")),
        group="database",
        sent_by="API `detach`, to every member: first `{check: true}` (the answer's "
                "`allow_attach`: whether `AllowClientDBAttach` is set), then `{db}` to "
                "remove the (volatile) database (`detached`)"),
    ControlDef(
        "db_restore",
        _db(Arg("persistent", BOOL), Arg("records", LIST, items=LIST),
            Arg("first", BOOL, required=False, default=False),
            Arg("last", BOOL, required=False, default=False),
            Arg("seqnum", OPT_INT, required=False, default=None, min=0),
            Arg("token", STR, doc="one restore")),
        Reply(dict, (), ("records",)),
        group="database",
        sent_by="API `restoredb`, to every member, between its `db_freeze` and `db_thaw`: "
                "chunks of the backup; `first` creates the database if needed, `last` "
                "replaces the node's copy in one LMDB transaction and voids the locks held "
                "on it"),
]

#: op -> its definition
CONTROLS: dict[str, ControlDef] = {d.op: d for d in _DEFS}
assert len(CONTROLS) == len(_DEFS), "two definitions of one control"
GROUPS = ("cluster", "database")


def definition(op) -> ControlDef:
    """The definition of ``op``; :class:`UnknownControl` if there is none."""
    d = CONTROLS.get(op) if isinstance(op, str) else None
    if d is None:
        raise UnknownControl(op)
    return d


def validate_request(op, args, strict=False) -> dict:
    """Check the arguments ``args`` of control ``op`` against its definition and return
    them (the same dict, unchanged: no default is filled in).

    Raises :class:`UnknownControl` (ENOSYS) for an op with no definition and
    :class:`ControlArgumentError` (EINVAL) naming the argument that is missing or of the
    wrong type. ``strict``: arguments the definition does not know are refused too
    (otherwise ignored, as a later minor version may add some)."""
    return definition(op).validate(args, strict)


def validate_reply(op, result):
    """Check the result of control ``op`` (leniently: its top-level type and the keys
    every answer has) and return it; :class:`ControlReplyError` (EPROTO) if it does not
    fit, :class:`UnknownControl` for an op with no definition."""
    return definition(op).validate_reply(result)


# -- the docs' tables ----------------------------------------------------------------------
def _args_cell(d: ControlDef) -> str:
    cell = "`{" + ", ".join(a.signature() for a in d.args) + "}`"
    notes = []
    for a in d.args:
        parts = [a.doc] if a.doc else []
        if a.required_unless:
            parts.append(f"required unless `{a.required_unless}`")
        if a.default is not NO_DEFAULT and a.default not in (None, False, [], {}):
            parts.append(f"default `{a.default}`")
        if a.min is not None:
            parts.append(f"at least {a.min}")
        if not a.checked:
            parts.append("checked by the handler")
        if parts:
            notes.append(f"`{a.name}`: " + ", ".join(parts))
    for group in d.one_of:
        notes.append("one of " + ", ".join(f"`{k}`" for k in group) + " is required")
    return cell + ("; " + "; ".join(notes) if notes else "")


def _reply_cell(d: ControlDef) -> str:
    r = d.reply
    if r.type is dict and not r.keys and not r.optional and r.doc:
        return r.doc
    return r.shape() + (f" {r.doc}" if r.doc.startswith("(") else
                        f": {r.doc}" if r.doc else "")


def markdown_table(group=None) -> str:
    """The table of the controls of ``group`` ("cluster", "database"; None: all) as
    docs/protocol.md has it."""
    lines = ["| `op` | `args` | `result` | sent by |", "|---|---|---|---|"]
    for d in _DEFS:
        if group is None or d.group == group:
            lines.append(f"| `{d.op}` | {_args_cell(d)} | {_reply_cell(d)} | {d.sent_by} |")
    return "\n".join(lines) + "\n"


#: The markers around a generated table in docs/protocol.md (``{group}``: its group).
TABLE_BEGIN = "<!-- generated: python -m pyctdb.protocol.controls --markdown {group} -->\n"
TABLE_END = "<!-- end of generated table -->"


def update_docs(text: str) -> str:
    """``text`` (docs/protocol.md) with each group's table between its markers replaced
    by :func:`markdown_table`; ValueError if a group's markers are missing."""
    for group in GROUPS:
        begin = TABLE_BEGIN.format(group=group)
        start = text.find(begin)
        end = text.find(TABLE_END, start) if start >= 0 else -1
        if end < 0:
            raise ValueError(f"no table markers for the {group} controls")
        start += len(begin)
        text = text[:start] + markdown_table(group) + text[end:]
    return text


USAGE = f"""usage: python -m pyctdb.protocol.controls --markdown [{'|'.join(GROUPS)}]
       python -m pyctdb.protocol.controls --update-docs PATH/TO/docs/protocol.md"""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--markdown"] and len(argv) <= 2 and set(argv[1:]) <= set(GROUPS):
        sys.stdout.write(markdown_table(argv[1] if len(argv) == 2 else None))
        return 0
    if argv[:1] == ["--update-docs"] and len(argv) == 2:
        with open(argv[1], encoding="utf-8") as f:
            old = f.read()
        new = update_docs(old)
        if new != old:
            with open(argv[1], "w", encoding="utf-8") as f:
                f.write(new)
        print(f"{argv[1]}: {'updated' if new != old else 'up to date'}")
        return 0
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
