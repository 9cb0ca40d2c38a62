"""Tunables: the table, value parsing, the Tunables store and the tunables file."""

import ast
import pathlib
import re

import pytest

from pyctdb.common import tunables as T
from pyctdb.errors import ConfigError

# `ctdb listvars` of CTDB 4.17 with default settings, in its order.
CTDB_LISTVARS = """\
SeqnumInterval=1000
ControlTimeout=60
TraverseTimeout=20
KeepaliveInterval=5
KeepaliveLimit=5
RecoverTimeout=30
RecoverInterval=1
ElectionTimeout=3
TakeoverTimeout=9
MonitorInterval=15
TickleUpdateInterval=20
EventScriptTimeout=30
MonitorTimeoutCount=20
RecoveryGracePeriod=120
RecoveryBanPeriod=300
DatabaseHashSize=100001
DatabaseMaxDead=5
RerecoveryTimeout=10
EnableBans=1
NoIPFailback=0
VerboseMemoryNames=0
RecdPingTimeout=60
RecdFailCount=10
LogLatencyMs=0
RecLockLatencyMs=1000
RecoveryDropAllIPs=120
VacuumInterval=10
VacuumMaxRunTime=120
RepackLimit=10000
VacuumFastPathCount=60
MaxQueueDropMsg=1000000
AllowUnhealthyDBRead=0
StatHistoryInterval=1
DeferredAttachTO=120
AllowClientDBAttach=1
FetchCollapse=1
HopcountMakeSticky=50
StickyDuration=600
StickyPindown=200
NoIPTakeover=0
DBRecordCountWarn=100000
DBRecordSizeWarn=10000000
DBSizeWarn=100000000
PullDBPreallocation=10485760
LockProcessesPerDB=200
RecBufferSizeLimit=1000000
QueueBufferSize=1024
IPAllocAlgorithm=2
AllowMixedVersions=0
"""

CTDB_DEFAULTS = dict((line.split("=")[0], int(line.split("=")[1]))
                     for line in CTDB_LISTVARS.splitlines())
PYCTDB_DIFFERENCES = {"KeepaliveInterval": 0.5, "KeepaliveLimit": 3}
PATH = "/etc/pyctdb/pyctdb.tunables"


# -- the table --------------------------------------------------------------------------
def test_listed_tunables_are_ctdbs_in_ctdbs_order():
    assert [n for n, _ in T.Tunables().items()] == list(CTDB_DEFAULTS)


def test_defaults_are_ctdbs_except_keepalive():
    values = T.Tunables().as_dict()
    for name, default in CTDB_DEFAULTS.items():
        assert values[name] == PYCTDB_DIFFERENCES.get(name, default), name
    assert values["KeepaliveInterval"] == 0.5
    assert isinstance(values["KeepaliveInterval"], float)
    assert values["KeepaliveLimit"] == 3


def test_table_is_consistent():
    for name, t in T.TUNABLES.items():
        assert name == t.name
        assert t.kind in ("int", "float", "bool")
        assert t.minimum <= t.default <= t.maximum, name
        assert t.doc, name
        if t.kind == "bool":
            assert (t.minimum, t.maximum) == (0, 1)
    assert len(T.TUNABLES) == len(CTDB_DEFAULTS) + 13  # CTDB's obsolete ones too


def test_obsolete_tunables_are_known_but_not_listed():
    for name in ("MaxRedirectCount", "DisableIPFailover", "VacuumLimit",
                 "TDBMutexEnabled", "NoIPHostOnAllDisabled"):
        assert T.TUNABLES[name].obsolete
        assert name not in T.Tunables().as_dict()


def test_differences_are_documented():
    ki = T.TUNABLES["KeepaliveInterval"]
    assert (ki.kind, ki.minimum, ki.maximum) == ("float", 0.05, 3600)
    assert "CTDB: 5" in ki.doc and "fraction" in ki.doc
    kl = T.TUNABLES["KeepaliveLimit"]
    assert (kl.kind, kl.minimum) == ("int", 1)
    assert "CTDB: 5" in kl.doc


def test_used_by_pyctdb():
    assert set(T.USED_BY_PYCTDB) >= {"KeepaliveInterval", "KeepaliveLimit"}
    order = list(T.TUNABLES)
    assert list(T.USED_BY_PYCTDB) == sorted(T.USED_BY_PYCTDB, key=order.index)
    for name, t in T.TUNABLES.items():
        if name in T.USED_BY_PYCTDB:
            assert "pyctdb uses it" in t.doc and "unused" not in t.doc, name
        elif not t.obsolete:
            assert "Accepted for compatibility" in t.doc, name


AGENT_SRC = pathlib.Path(T.__file__).resolve().parent.parent  # agent/pyctdb
REPO = AGENT_SRC.parent.parent


def _tunables_read_by_the_agent():
    """{tunable: [file:line]} for every string constant in the agent's code (but the
    table itself) that is exactly a tunable's name: ``tunables.get("NAME")``,
    ``t.get("NAME")``, ``tunables["NAME"]``, whatever the spelling of the access."""
    found = {}
    for path in sorted(AGENT_SRC.rglob("*.py")):
        if path.name == "tunables.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                t = T.TUNABLES.get(node.value)
                if t is not None:
                    found.setdefault(t.name, []).append(
                        f"{path.relative_to(AGENT_SRC)}:{node.lineno}")
    return found


def test_every_tunable_the_agent_reads_is_in_used_by_pyctdb():
    found = _tunables_read_by_the_agent()
    assert {"KeepaliveInterval", "MonitorInterval", "IPAllocAlgorithm"} <= set(found)
    missing = {n: where for n, where in found.items() if n not in T.USED_BY_PYCTDB}
    assert not missing, f"read by the agent but not in USED_BY_PYCTDB: {missing}"
    unread = set(T.USED_BY_PYCTDB) - set(found)
    assert not unread, f"in USED_BY_PYCTDB but never read by the agent: {unread}"


def test_configuration_md_marks_exactly_the_used_tunables():
    text = (REPO / "docs" / "configuration.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \|[^|]*\|[^|]*\|([^|]*)\|", text, re.M)
    table = {name: used.strip() for name, used in rows if name in T.TUNABLES}
    assert set(table) == {n for n, t in T.TUNABLES.items() if not t.obsolete}
    assert {n for n, used in table.items() if used == "**yes**"} == set(T.USED_BY_PYCTDB)


# -- lookup -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["KeepaliveInterval", "keepaliveinterval",
                                  "KEEPALIVEINTERVAL", " KeepAliveInterval "])
def test_lookup_is_case_insensitive(name):
    assert T.lookup(name) is T.TUNABLES["KeepaliveInterval"]


def test_lookup_finds_obsolete():
    assert T.lookup("maxredirectcount").obsolete


def test_lookup_unknown_names_close_matches():
    with pytest.raises(KeyError) as ei:
        T.lookup("KeepaliveIntervall")
    msg = str(ei.value)
    assert msg.startswith('no such tunable "KeepaliveIntervall"')
    assert "KeepaliveInterval" in msg
    # str() is the plain message (not KeyError's quoted repr)
    assert not msg.startswith("'")


def test_lookup_unknown_without_close_match():
    with pytest.raises(KeyError) as ei:
        T.lookup("Zzzzzz")
    assert "listvars" in str(ei.value)
    # the API strips quotes off the message: it must survive that
    assert str(ei.value).strip("'\"") == str(ei.value)


# -- parse_value ------------------------------------------------------------------------
@pytest.mark.parametrize("text,value", [
    ("10", 10), (" 10 ", 10), ("0", 0), ("0x1f", 31), ("0XFF", 255), ("010", 8),
    ("4294967295", 4294967295), ("0xffffffff", 4294967295),
])
def test_parse_int(text, value):
    assert T.parse_value(T.lookup("MonitorInterval"), text) == value


@pytest.mark.parametrize("text", ["", "abc", "-1", "+1", "1.5", "08", "0xg", "10s",
                                  "1 0", "0x"])
def test_parse_int_invalid(text):
    with pytest.raises(ValueError) as ei:
        T.parse_value(T.lookup("MonitorInterval"), text)
    assert "MonitorInterval" in str(ei.value)
    assert "0 to 4294967295" in str(ei.value)


def test_parse_int_out_of_range():
    with pytest.raises(ValueError, match=r"MonitorInterval must be an integer from 0 to "
                                         r"4294967295, not 4294967296"):
        T.parse_value(T.lookup("MonitorInterval"), "4294967296")
    with pytest.raises(ValueError, match=r"KeepaliveLimit must be an integer from 1 to"):
        T.parse_value(T.lookup("KeepaliveLimit"), "0")
    with pytest.raises(ValueError, match=r"from 1 to 3600, not 3601"):
        T.parse_value(T.lookup("ElectionTimeout"), "3601")
    with pytest.raises(ValueError, match=r"from 0 to 2, not 3"):
        T.parse_value(T.lookup("IPAllocAlgorithm"), "3")


@pytest.mark.parametrize("text,value", [("0", 0), ("1", 1), ("0x1", 1), ("00", 0)])
def test_parse_bool(text, value):
    assert T.parse_value(T.lookup("EnableBans"), text) == value


@pytest.mark.parametrize("text", ["2", "true", "yes", "-1", "0x2"])
def test_parse_bool_invalid(text):
    with pytest.raises(ValueError, match="0 or 1"):
        T.parse_value(T.lookup("EnableBans"), text)


@pytest.mark.parametrize("text,value", [("0.5", 0.5), ("1", 1.0), ("5", 5.0),
                                        (".25", 0.25), ("2.", 2.0), ("0x2", 2.0),
                                        ("1e-1", 0.1), ("3600", 3600.0)])
def test_parse_float(text, value):
    v = T.parse_value(T.lookup("KeepaliveInterval"), text)
    assert v == pytest.approx(value)
    assert isinstance(v, float)


@pytest.mark.parametrize("text", ["abc", "-0.5", "nan", "inf", "0.5s", ""])
def test_parse_float_invalid(text):
    with pytest.raises(ValueError, match="KeepaliveInterval.*0.05 to 3600"):
        T.parse_value(T.lookup("KeepaliveInterval"), text)


@pytest.mark.parametrize("text", ["0.04", "0", "3600.5"])
def test_parse_float_out_of_range(text):
    with pytest.raises(ValueError, match="KeepaliveInterval must be a number of seconds "
                                         "from 0.05 to 3600"):
        T.parse_value(T.lookup("KeepaliveInterval"), text)


# -- Tunables ---------------------------------------------------------------------------
def test_tunables_get_set():
    t = T.Tunables()
    assert t.get("keepaliveinterval") == 0.5
    assert t.set("KeepaliveInterval", 2) == 0.5
    assert t.get("KeepaliveInterval") == 2.0
    assert isinstance(t.get("KeepaliveInterval"), float)
    assert t.set("keepalivelimit", 7) == 3
    assert t.get("KeepaliveLimit") == 7
    assert t.set("EnableBans", "0") == 1
    assert t.get("EnableBans") == 0
    assert t.set("MonitorInterval", 20.0) == 15
    assert t.get("MonitorInterval") == 20 and isinstance(t.get("MonitorInterval"), int)
    assert t["ElectionTimeout"] == 3


def test_tunables_set_invalid_leaves_value():
    t = T.Tunables()
    with pytest.raises(ValueError, match="0.05 to 3600"):
        t.set("KeepaliveInterval", 0.001)
    with pytest.raises(ValueError, match="an integer from 0"):
        t.set("MonitorInterval", 1.5)
    with pytest.raises(ValueError, match="0 or 1"):
        t.set("EnableBans", 2)
    with pytest.raises(ValueError, match="must be a number"):
        t.set("EnableBans", [1])
    with pytest.raises(ValueError, match="obsolete"):
        t.set("MaxRedirectCount", 3)
    with pytest.raises(KeyError, match="no such tunable"):
        t.set("NoSuchThing", 1)
    with pytest.raises(KeyError):
        t.get("NoSuchThing")
    assert t.as_dict() == T.Tunables().as_dict()


def test_tunables_overrides():
    t = T.Tunables({"keepaliveinterval": 1, "ElectionTimeout": "5"})
    assert t.get("KeepaliveInterval") == 1.0
    assert t.get("ElectionTimeout") == 5
    assert [n for n, _ in t.items()] == list(CTDB_DEFAULTS)
    assert T.Tunables(None).as_dict() == T.Tunables({}).as_dict()
    with pytest.raises(ValueError):
        T.Tunables({"KeepaliveLimit": 0})
    with pytest.raises(KeyError):
        T.Tunables({"Bogus": 1})


def test_tunables_instances_are_independent():
    a, b = T.Tunables(), T.Tunables()
    a.set("KeepaliveLimit", 9)
    assert b.get("KeepaliveLimit") == 3
    assert T.TUNABLES["KeepaliveLimit"].default == 3


# -- parse_tunables ---------------------------------------------------------------------
def test_parse_tunables_empty():
    assert T.parse_tunables("", PATH) == {}
    assert T.parse_tunables("# comment\n\n   \n\t# indented comment\n", PATH) == {}


def test_parse_tunables_ctdb_defaults_file_accepted():
    parsed = T.parse_tunables(CTDB_LISTVARS, PATH)
    assert parsed == {n: (float(v) if n == "KeepaliveInterval" else v)
                      for n, v in CTDB_DEFAULTS.items()}
    # and it is a valid set of overrides
    assert T.Tunables(parsed).get("KeepaliveInterval") == 5.0


def test_parse_tunables_formats():
    text = ("# Leading comment\n"
            "enablebans=0\n"
            "ReCoVerInTeRvAl\t =    10\n"
            "\n"
            "  ELECTIONTIMEOUT=0x19   \n"
            "MonitorInterval= 010\n"
            "KeepaliveInterval = 0.25\n"
            "KeepaliveLimit\t=4\n")
    assert T.parse_tunables(text, PATH) == {
        "EnableBans": 0, "RecoverInterval": 10, "ElectionTimeout": 25,
        "MonitorInterval": 8, "KeepaliveInterval": 0.25, "KeepaliveLimit": 4}


@pytest.mark.parametrize("text,line,fragment", [
    ("Hello\n", 1, 'expected NAME=VALUE, not "Hello"'),
    ("# ok\nHello world!\n", 2, 'expected NAME=VALUE, not "Hello world!"'),
    ("=123\n", 1, 'missing tunable name before "="'),
    (" =0\n", 1, 'missing tunable name'),
    ("EnableBans=\n", 1, "missing value for EnableBans: expected 0 or 1"),
    ("EnableBans=value\n", 1, 'invalid value "value" for EnableBans'),
    ("EnableBans=0xgg\n", 1, 'invalid value "0xgg" for EnableBans'),
    ("\n\nHelloWorld=123\n", 3, 'no such tunable "HelloWorld"'),
    ("KeepaliveIntervl=1\n", 1, "did you mean KeepaliveInterval"),
    ("MaxRedirectCount=123\n", 1, "obsolete tunable MaxRedirectCount"),
    ("DisableIPFailover=1\n", 1, "[failover] disabled"),
    ("TDBMutexEnabled=1\n", 1, "[database] tdb mutexes"),
    ("EnableBans=0\nenablebans=1\n", 2, "EnableBans is set twice (first on line 1)"),
    ("KeepaliveInterval=0.01\n", 1, "KeepaliveInterval must be a number of seconds "
                                    "from 0.05 to 3600, not 0.01"),
    ("ElectionTimeout=1.5\n", 1, "ElectionTimeout"),
    ("[section]\n", 1, "unexpected section header"),
])
def test_parse_tunables_errors(text, line, fragment):
    with pytest.raises(ConfigError) as ei:
        T.parse_tunables(text, PATH)
    e = ei.value
    assert (e.path, e.line) == (PATH, line)
    assert str(e).startswith(f"{PATH}:{line}: ")
    assert fragment in str(e)


def test_parse_tunables_stops_at_first_error():
    with pytest.raises(ConfigError) as ei:
        T.parse_tunables("HelloWorld=123\nEnableBans=value\nEnableBans=0\n", PATH)
    assert ei.value.line == 1
