"""The cluster registry's pure rules: parse, validate, format, update, key layout."""

import pytest

from pyctdb.rules import registry as R
from pyctdb.server.api.registry_ops import TunablesWatcher
from pyctdb.common.tunables import Tunables

SMB = """\
# a comment
; another
[Global]
   workgroup = EXAMPLE
   Server   String = files \\
      on the cluster
[homes]
\tread only = no
[global]
\tworkgroup = OTHER
[pyctdb:tunables]
  keepaliveinterval = 2
"""


def test_parse_merges_lowercases_and_puts_global_first():
    secs = R.parse(SMB, "smb.conf")
    assert secs == [
        {"name": "global", "params": [["server string", "files on the cluster"],
                                      ["workgroup", "OTHER"]]},
        {"name": "homes", "params": [["read only", "no"]]},
        {"name": "pyctdb:tunables", "params": [["KeepaliveInterval", "2"]]},
    ]
    assert R.parse("a = 1\n[s]\nb=2") == [{"name": "global", "params": [["a", "1"]]},
                                          {"name": "s", "params": [["b", "2"]]}]


def test_format_is_net_conf_list_and_round_trips():
    secs = R.parse(SMB, "smb.conf")
    text = R.format_config(secs)
    assert text == ("[global]\n\tserver string = files on the cluster\n\tworkgroup = OTHER\n\n"
                    "[homes]\n\tread only = no\n\n"
                    "[pyctdb:tunables]\n\tKeepaliveInterval = 2\n\n")
    assert R.parse(text) == secs
    assert R.format_section(secs[1]) == "[homes]\n\tread only = no\n"
    assert R.format_config([]) == ""


@pytest.mark.parametrize("text, msg", [
    ("[global]\nworkgroup\n", "f.conf:2: expected \"name = value\""),
    ("\n[global\n", "f.conf:2: section header without \"]\""),
    ("[  ]\n", "f.conf:1: empty section name"),
    ("[s]\n = x\n", "f.conf:2: [s] empty parameter name"),
    ("[pyctdb:tunables]\nKeepaliveIntervall = 1\n", "f.conf:2: [pyctdb:tunables] no such "
     "tunable \"KeepaliveIntervall\" (did you mean KeepaliveInterval"),
    ("[pyctdb:tunables]\n\nKeepaliveLimit = lots\n", "f.conf:3: [pyctdb:tunables] invalid "
     "value \"lots\" for KeepaliveLimit"),
])
def test_parse_errors_name_file_and_line(text, msg):
    with pytest.raises(R.RegistryError) as e:
        R.parse(text, "f.conf")
    assert str(e.value).startswith(msg), str(e.value)


def test_update_section():
    sec = {"name": "s", "params": [["a", "1"], ["b", "2"]]}
    assert R.update_section(sec, "S", {"A": 5, "c": True}) == {
        "name": "s", "params": [["a", "5"], ["b", "2"], ["c", "yes"]]}
    assert R.update_section(sec, "s", {"c": "3"}, exclusive=True) == {
        "name": "s", "params": [["c", "3"]]}
    assert R.update_section(sec, "s", delete=["a", "b"]) == {"name": "s", "params": []}
    assert R.update_section(None, "new", delete=["a"]) is None
    assert R.update_section(None, "New  Share", {"path": "/srv"}) == {
        "name": "new share", "params": [["path", "/srv"]]}
    assert R.update_section(sec, "s", {"a": "1"}) == sec
    with pytest.raises(R.RegistryError, match="must be one line"):
        R.update_section(sec, "s", {"a": "x\ny"})
    with pytest.raises(R.RegistryError, match="no such tunable"):
        R.update_section(None, "pyctdb:tunables", {"NoSuch": "1"})
    with pytest.raises(R.RegistryError, match="obsolete tunable"):
        R.update_section(None, "pyctdb:tunables", {"EventScriptUnhealthyOnTimeout": "1"})


def test_records_round_trip_in_order():
    secs = [{"name": "global", "params": [["a", "1"]]}, {"name": "z", "params": []},
            {"name": "b", "params": [["x", "y"]]}]
    recs = [(R.key_of(s["name"]), R.encode(s, i)) for i, s in enumerate(secs, 1)]
    assert recs[0][0] == b"smbconf/global"
    assert R.decode(sorted(recs) + [(b"other", b"ignored")]) == secs
    assert R.orders(recs) == {b"smbconf/global": 1, b"smbconf/z": 2, b"smbconf/b": 3}


def test_tunables_watcher_applies_and_restores():
    class St:
        meta, damaged = {}, {}

        def items(self, name):
            return self.recs

    class Db:
        stores = {True: St()}

    t = Tunables({"KeepaliveLimit": 7})
    w = TunablesWatcher(Db(), t)
    st = Db.stores[True]

    class Rec:
        deleted = False

        def __init__(self, v):
            self.value = v

    def registry(seq, params):
        sec = {"name": "pyctdb:tunables", "params": params}
        st.meta[R.DB_NAME] = {"seqnum": seq}
        st.recs = [(R.key_of(sec["name"]), Rec(R.encode(sec, 1)))]
        w.on_cycle()

    registry(1, [["KeepaliveLimit", "9"], ["MonitorInterval", "0x20"]])
    assert t.get("KeepaliveLimit") == 9 and t.get("MonitorInterval") == 32
    registry(2, [["MonitorInterval", "20"]])
    assert t.get("KeepaliveLimit") == 7 and t.get("MonitorInterval") == 20
    st.meta.clear()
    w.on_cycle()
    assert t.get("MonitorInterval") == 15 and w.base == {}
