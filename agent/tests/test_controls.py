"""The node-to-node controls' definitions (protocol/controls.py), checked against the
code: every control a server module registers has one; it declares every argument its
handler reads; every control the agent sends fits it; and docs/protocol.md's tables are
generated from them. No network."""

from __future__ import annotations

import ast
import pathlib

import pytest

from pyctdb.errors import PyctdbError
from pyctdb.protocol import controls
from pyctdb.protocol.controls import CONTROLS, ControlArgumentError, UnknownControl

SRC = pathlib.Path(__file__).resolve().parent.parent / "pyctdb"
DOCS = SRC.parent.parent / "docs"

#: Arguments a handler reads through a helper, not by name in its own body.
READ_ELSEWHERE = {("db_push", "chunk"), ("db_push", "records")}  # wire.stored_records


def _trees():
    return {p: ast.parse(p.read_text(), str(p)) for p in sorted(SRC.rglob("*.py"))}


TREES = _trees()


def _registered():
    """{op: [(path, handler method name)]} of every ``control_handlers`` registration in
    the agent: ``x.control_handlers = {...}``, ``x.control_handlers["op"] = h`` and
    ``x.control_handlers.update({...})``."""
    found = {}

    def is_handlers(node):
        return isinstance(node, ast.Attribute) and node.attr == "control_handlers"

    def add(path, key, value):
        assert isinstance(key, ast.Constant), f"{path}:{key.lineno}: op not a literal"
        name = value.attr if isinstance(value, ast.Attribute) else ast.unparse(value)
        found.setdefault(key.value, []).append((path, name))

    for path, tree in TREES.items():
        for node in ast.walk(tree):
            dicts = []
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    if is_handlers(t) and isinstance(node.value, ast.Dict):
                        dicts.append(node.value)
                    if isinstance(t, ast.Subscript) and is_handlers(t.value):
                        add(path, t.slice, node.value)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "update" and is_handlers(node.func.value)):
                dicts += [a for a in node.args if isinstance(a, ast.Dict)]
            for d in dicts:
                for k, v in zip(d.keys, d.values):
                    add(path, k, v)
    return found


REGISTERED = _registered()


def _handlers(op):
    """The functions (ast) of the handlers of ``op``: the methods of that name in the
    modules that register it (one, unless code is being moved)."""
    out = []
    for path, name in REGISTERED[op]:
        fns = [node for node in ast.walk(TREES[path])
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
               and node.name == name]
        assert fns, f"handler {name} of {op} not found in {path}"
        out += fns
    return out


def _reads(fn):
    """({keys read as args[k]}, {keys read with args.get(k) or k in args}) of a handler
    whose last positional parameter is its arguments."""
    param = fn.args.args[-1].arg
    indexed, looked_up = set(), set()

    def is_args(node):
        return isinstance(node, ast.Name) and node.id == param

    for node in ast.walk(fn):
        if (isinstance(node, ast.Subscript) and is_args(node.value)
                and isinstance(node.slice, ast.Constant)):
            indexed.add(node.slice.value)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "get" and is_args(node.func.value)
              and node.args and isinstance(node.args[0], ast.Constant)):
            looked_up.add(node.args[0].value)
        elif (isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant)
              and any(isinstance(o, (ast.In, ast.NotIn)) for o in node.ops)
              and any(is_args(c) for c in node.comparators)):
            looked_up.add(node.left.value)
    return indexed, looked_up


# -- every control has a definition, that fits its handler -----------------------------
def test_every_registered_control_has_a_definition_and_no_other():
    assert len(REGISTERED) >= 25
    assert {"ping", "admin", "take_ip", "db_pull", "db_push"} <= set(REGISTERED)
    assert set(CONTROLS) == set(REGISTERED)


@pytest.mark.parametrize("op", sorted(REGISTERED))
def test_definition_declares_what_the_handler_reads(op):
    d = CONTROLS[op]
    indexed, looked_up = set(), set()
    for fn in _handlers(op):
        i, g = _reads(fn)
        indexed |= i
        looked_up |= g
    declared = {a.name for a in d.args}
    assert (indexed | looked_up) <= declared, f"{op}: undeclared arguments"
    # args[k] without a default: required (or one of a group, or required unless a flag)
    in_groups = {k for g in d.one_of for k in g}
    for k in indexed - looked_up:  # (read with .get too: guarded)
        a = d.arg(k)
        assert a.required or a.required_unless or k in in_groups, \
            f"{op}: the handler needs {k!r}, the definition calls it optional"
    # and nothing declared that the handler does not read
    unread = {k for k in declared - indexed - looked_up if (op, k) not in READ_ELSEWHERE}
    assert not unread, f"{op}: declared but never read by its handler: {unread}"


@pytest.mark.parametrize("op", sorted(REGISTERED))
def test_reply_keys_are_those_the_handler_returns(op):
    reply = CONTROLS[op].reply
    allowed = set(reply.keys) | set(reply.optional)
    for node in (n for fn in _handlers(op) for n in ast.walk(fn)):
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Dict):
            assert reply.type is dict
            keys = {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
            if allowed:
                assert keys <= allowed, f"{op} returns {keys - allowed} not in its Reply"
            if None not in node.value.keys:  # (no **unpacking: every key is listed)
                assert set(reply.keys) <= keys, f"{op}: a return lacks {reply.keys}"


# -- every control the agent sends fits its definition -------------------------------------
_SAMPLES = {int: 1, float: 1.5, str: "x", bytes: b"x", bool: True, list: [], dict: {},
            type(None): None}


def _sample(arg):
    return _SAMPLES[arg.types[0]]


#: method -> index of the op in its arguments (any method named ``*control`` or ``call``:
#: 1)
SENDERS = {"control": 1, "on_node": 1, "_on_node": 1, "on_members": 1, "_on_members": 1}


def _value(node, arg):
    """A value like the one the expression ``node`` gives, for argument ``arg``."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "x"
    if isinstance(node, ast.List):
        return []
    if isinstance(node, ast.Dict):
        return {}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        known = {"bool": True, "int": 1, "str": "x", "b64": "eA==", "list": []}
        if node.func.id in known:
            return known[node.func.id]
    return _sample(arg)


def _call_sites():
    """[(where, op, args)] of every control the agent sends with a literal op: calls of
    ``x.control(pnn, "op", {...})`` (and the API's and maintenance's wrappers), and direct
    calls of a handler (``self._ctl_release_ip(pnn, {...})``)."""
    handler_ops = {where: op for op, wheres in REGISTERED.items() for where in wheres}
    sites = []
    for path, tree in TREES.items():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name = node.func.attr
            if name in SENDERS or name.endswith("control") or name == "call":
                i = SENDERS.get(name, 1)
                if len(node.args) <= i or not isinstance(node.args[i], ast.Constant):
                    continue  # a wrapper passing its own op along
                op, rest = node.args[i].value, node.args[i + 1:]
                if name == "call" and op not in CONTROLS:
                    continue  # (``controls.call(pnn, op, ...)``, not any other call)
            elif (path, name) in handler_ops:
                op, rest = handler_ops[(path, name)], node.args[1:]
            else:
                continue
            where = f"{path.relative_to(SRC.parent)}:{node.lineno}"
            if not rest:
                literal = ast.Dict(keys=[], values=[])
            else:
                literal = rest[0]
            assert isinstance(literal, ast.Dict), f"{where}: {op} args not a literal"
            d = CONTROLS.get(op)
            assert d is not None, f"{where}: sends {op!r}, which has no definition"
            args = {}
            for k, v in zip(literal.keys, literal.values):
                assert isinstance(k, ast.Constant), f"{where}: a computed argument name"
                a = d.arg(k.value)
                assert a is not None, f"{where}: {op} has no argument {k.value!r}"
                args[k.value] = _value(v, a)
            sites.append((where, op, args))
    return sites


SITES = _call_sites()


def test_every_control_is_sent_by_the_agent():
    assert len(SITES) >= len(CONTROLS)
    assert {op for _, op, _ in SITES} == set(CONTROLS)


@pytest.mark.parametrize("where,op,args", SITES, ids=[w for w, _, _ in SITES])
def test_what_the_agent_sends_validates(where, op, args):
    assert controls.validate_request(op, args, strict=True) is args


def test_what_the_recovery_and_the_api_send_validates():
    """A few call sites written out with the values they send at run time."""
    ok = [
        ("db_pull", {"db": "a.tdb", "after": None, "dmaster_only": False, "chunk": True}),
        ("db_pull", {"db": "a.tdb", "after": "eA==", "dmaster_only": True, "chunk": True}),
        ("db_push", {"db": "a.tdb", "db_id": 7, "persistent": False, "chunk": b"PCRC",
                     "first": True, "last": True, "seqnum": None}),
        ("db_push", {"db": "a.tdb", "db_id": 7, "persistent": True, "chunk": "UENSQw==",
                     "first": False, "last": True, "seqnum": 3}),
        ("db_push", {"db": "a.tdb", "persistent": True, "records": [["eA==", 1, 0, 0, ""]]}),
        ("db_trans_commit", {"db": "r.tdb", "writes": [["eA==", None], ["eQ==", "eg=="]],
                             "txid": "00ff", "expect_seqnum": None}),
        ("db_thaw", {"members": [0, 1, 2]}), ("db_thaw", {"if_generation": 12}),
        ("db_thaw", {}),
        ("db_detach", {"check": True}), ("db_detach", {"db": "v.tdb"}),
        ("run_event", {"event": "startrecovery"}),
        ("run_event", {"event": "takeip", "args": ["eth1", "10.0.0.1", "24"]}),
        ("tickles", {"tickles": {"10.0.0.1": [["10.0.0.1", 445, "10.0.0.9", 50000]]}}),
        ("take_ip", {"address": "10.0.0.1", "connections": []}),
        ("admin", {"action": "ban", "seconds": 2.5}), ("admin", {"action": "enable"}),
        ("add_public_ip", {"address": "10.0.0.5", "prefix": 24, "interfaces": "eth1,eth2",
                           "check": False}),
        ("recover", {"reason": "pyctdb recover"}), ("recover", {}),
        ("ipreallocate", {"reason": "addip 10.0.0.5 on node 1"}),
        ("ping", {}), ("db_freeze", {}), ("get_public_ips", {}),
    ]
    for op, args in ok:
        assert controls.validate_request(op, args, strict=True) is args


# -- refusals -------------------------------------------------------------------------
def _valid(d):
    args = {a.name: _sample(a) for a in d.args}
    if d.op == "db_detach":
        args["check"] = False
    return args


def _wrong(arg):
    for v in ({"a": 1}, [1], "x", 1, True, None):
        if not controls._is(v, arg.types):
            return v
    raise AssertionError(arg)


@pytest.mark.parametrize("op", sorted(CONTROLS))
def test_samples_validate(op):
    d = CONTROLS[op]
    controls.validate_request(op, _valid(d), strict=True)
    controls.validate_request(op, {a.name: _sample(a) for a in d.args
                                   if a.required and not a.required_unless}
                              | ({"chunk": "x"} if d.one_of else {})
                              | ({"check": True} if op == "db_detach" else {}))


MISSING = [(op, a.name) for op, d in sorted(CONTROLS.items()) for a in d.args
           if a.required or a.required_unless]
MISTYPED = [(op, a.name) for op, d in sorted(CONTROLS.items()) for a in d.args if a.checked]


@pytest.mark.parametrize("op,name", MISSING)
def test_a_missing_argument_is_refused_by_name(op, name):
    args = _valid(CONTROLS[op])
    del args[name]
    with pytest.raises(ControlArgumentError, match=f"control {op}: argument '{name}' is "
                                                   "missing") as ei:
        controls.validate_request(op, args)
    assert (ei.value.op, ei.value.argument, ei.value.code) == (op, name, "EINVAL")
    assert isinstance(ei.value, PyctdbError)


@pytest.mark.parametrize("op,name", MISTYPED)
def test_a_mistyped_argument_is_refused_by_name(op, name):
    d = CONTROLS[op]
    args = _valid(d)
    args[name] = _wrong(d.arg(name))
    with pytest.raises(ControlArgumentError, match=f"control {op}: argument '{name}' must "
                                                   "be ") as ei:
        controls.validate_request(op, args)
    assert ei.value.argument == name


def test_a_value_the_handler_checks_is_left_to_it():
    # admin's action, addip's values: the handler answers with its own message
    assert controls.validate_request("admin", {"action": 5, "seconds": "x"})
    assert controls.validate_request("move_ip", {"address": 1, "pnn": "1"})
    with pytest.raises(ControlArgumentError, match="'pnn' is missing"):
        controls.validate_request("move_ip", {"address": "10.0.0.1"})


@pytest.mark.parametrize("op,args,msg", [
    ("db_migrate", {"db": "a", "key": "eA==", "to": True},
     "'to' must be an integer, not bool"),
    ("db_migrate", {"db": "a", "key": "eA==", "to": -1}, "'to' must be at least 0, not -1"),
    ("db_migrate", {"db": "a", "key": "eA==", "to": 1.0}, "'to' must be an integer, not float"),
    ("db_thaw", {"members": [0, "1"]}, "'members' element 1 must be an integer, not str"),
    ("db_thaw", {"members": [0, False]}, "'members' element 1 must be an integer, not bool"),
    ("db_thaw", {"members": "0,1"}, "'members' must be a list or null, not str"),
    ("tickles", {"tickles": {"10.0.0.1": "x"}},
     "'tickles' value '10.0.0.1' must be a list, not str"),
    ("db_pull", {"db": None}, "'db' must be a string, not NoneType"),
    ("db_push", {"db": "a", "persistent": True},
     r"'chunk' is missing \(give one of chunk, records\)"),
    ("db_push", {"db": "a", "persistent": True, "chunk": 5},
     "'chunk' must be a string or bytes, not int"),
    ("db_detach", {"check": False}, "'db' is missing"),
    ("admin", {"action": "ban", "seconds": 1, "oops": 1}, None),
    ("ping", ["x"], "'args' must be an object, not list"),
])
def test_refusals(op, args, msg):
    if msg is None:
        assert controls.validate_request(op, args) is args  # unknown: ignored
        with pytest.raises(ControlArgumentError, match="'oops' is not an argument"):
            controls.validate_request(op, args, strict=True)
        return
    with pytest.raises(ControlArgumentError, match=msg):
        controls.validate_request(op, args)


def test_a_float_argument_takes_an_int_and_no_default_is_filled_in():
    args = {"action": "ban", "seconds": 3}
    assert controls.validate_request("admin", args) == {"action": "ban", "seconds": 3}
    args = {"db": "a"}
    assert controls.validate_request("db_pull", args) == {"db": "a"}


def test_max_len():
    arg = controls.Arg("name", controls.STR, max_len=3)
    arg.check("op", {"name": "abc"})
    with pytest.raises(ControlArgumentError, match="at most 3 characters, not 4"):
        arg.check("op", {"name": "abcd"})


@pytest.mark.parametrize("op", ["nope", "", None, 5])
def test_unknown_control(op):
    with pytest.raises(UnknownControl, match="unknown control") as ei:
        controls.validate_request(op, {})
    assert ei.value.code == "ENOSYS" and isinstance(ei.value, PyctdbError)
    assert ei.value.message == f"unknown control {op!r}"
    with pytest.raises(UnknownControl):
        controls.validate_reply(op, {})


def test_validate_reply():
    assert controls.validate_reply("ping", {"pnn": 1, "time": 2.0, "more": 1})
    assert controls.validate_reply("db_migrate", ["eA==", 1, 0, 0, ""])
    assert controls.validate_reply("tickles", {}) == {}
    with pytest.raises(controls.ControlReplyError, match="control ping: result lacks 'time'"):
        controls.validate_reply("ping", {"pnn": 1})
    with pytest.raises(controls.ControlReplyError, match="must be a list, not dict") as ei:
        controls.validate_reply("db_give", {})
    assert ei.value.code == "EPROTO"


# -- docs/protocol.md's tables are generated from the definitions --------------------------
PROTOCOL_MD = DOCS / "protocol.md"


def _docs_table(group):
    text = PROTOCOL_MD.read_text()
    begin = controls.TABLE_BEGIN.format(group=group)
    assert begin in text, f"docs/protocol.md lacks the marker {begin.strip()}"
    start = text.index(begin) + len(begin)
    return text[start:text.index(controls.TABLE_END, start)]


@pytest.mark.parametrize("group", controls.GROUPS)
def test_docs_tables_are_the_definitions(group):
    assert _docs_table(group) == controls.markdown_table(group), (
        "docs/protocol.md is out of date: run `python -m pyctdb.protocol.controls "
        "--update-docs docs/protocol.md` (from agent/)")


def test_docs_tables_list_every_control_with_its_arguments():
    rows = "".join(_docs_table(g) for g in controls.GROUPS).splitlines()
    listed = {}
    for row in rows:
        if row.startswith("| `") and not row.startswith("| `op`"):
            op, args = row.split(" | ")[:2]
            listed[op.strip("|` ")] = args
    assert set(listed) == set(CONTROLS)
    for op, d in CONTROLS.items():
        names = [part.split(":")[0].rstrip("?")
                 for part in listed[op].split("}`")[0].strip("`{").split(", ") if part]
        assert names == [a.name for a in d.args], op


def test_update_docs(tmp_path):
    text = PROTOCOL_MD.read_text()
    assert controls.update_docs(text) == text
    stale = text.replace("| `ping` | `{}` |", "| `ping` | `{x}` |")
    assert stale != text and controls.update_docs(stale) == text
    path = tmp_path / "protocol.md"
    path.write_text(stale)
    assert controls.main(["--update-docs", str(path)]) == 0
    assert path.read_text() == text
    with pytest.raises(ValueError, match="no table markers for the cluster controls"):
        controls.update_docs("# nothing")


def test_markdown_command(capsys):
    assert controls.main(["--markdown", "database"]) == 0
    assert capsys.readouterr().out == controls.markdown_table("database")
    assert controls.main(["--markdown"]) == 0
    assert capsys.readouterr().out == controls.markdown_table()
    assert controls.main(["--markdown", "nope"]) == 2
    assert controls.main(["--html"]) == 2
    assert "usage:" in capsys.readouterr().err
