"""ctdb_conf and ctdb_db against three real pyctdbd agents, run as Ansible runs them:
check mode changes nothing, a second run is unchanged, diff shown, bad input fails with
nothing changed."""

import os
import sys

import pytest

AGENT = os.path.join(os.path.dirname(__file__), "..", "..", "agent")
if not any(os.path.exists(os.path.join(d, "pyctdb", "testing")) for d in sys.path if d):
    sys.path.insert(0, AGENT)  # the agent is not installed into this Python: the checkout
LocalCluster = pytest.importorskip("pyctdb.testing.localcluster").LocalCluster

from test_ctdb_ip_node_live import mod  # noqa: E402  (runs a module against node PNN)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    with LocalCluster.healthy_cluster(3, tmp_path_factory.mktemp("dbconf")) as c:
        yield c


def conf(c, pnn):
    return c.call(pnn, "conf_list")["text"]


def test_ctdb_conf(local, helpers):
    c = local
    a = {"section": "Data", "params": {"path": "/srv/data", "read only": False}}
    rc, r = mod(helpers, c, 0, "ctdb_conf", a, check=True, diff=True)
    assert rc == 0 and r["changed"] is True, r
    assert r["diff"]["before"] == ""
    assert r["diff"]["after"] == "[data]\n\tpath = /srv/data\n\tread only = no\n"
    assert conf(c, 1) == ""  # check mode changed nothing
    rc, r = mod(helpers, c, 0, "ctdb_conf", a, diff=True)
    assert rc == 0 and r["changed"] is True and r["exists"] is True, r
    assert conf(c, 2) == "[data]\n\tpath = /srv/data\n\tread only = no\n\n"
    rc, r = mod(helpers, c, 1, "ctdb_conf", a)
    assert rc == 0 and r["changed"] is False, r
    # exclusive: the section is exactly params
    rc, r = mod(helpers, c, 1, "ctdb_conf", {"section": "data", "exclusive": True,
                                             "params": {"path": "/srv/d2"}}, diff=True)
    assert rc == 0 and r["changed"] is True, r
    assert r["diff"]["before"] == "[data]\n\tpath = /srv/data\n\tread only = no\n"
    assert r["diff"]["after"] == "[data]\n\tpath = /srv/d2\n"
    # bad tunable: clear error, nothing changed, in check mode too
    seq = r["seqnum"]
    for check in (True, False):
        rc, r = mod(helpers, c, 0, "ctdb_conf", {"section": "pyctdb:tunables",
                                                 "params": {"MonitorIntervall": 5}},
                    check=check)
        assert rc != 0 and "no such tunable" in r["msg"] and r["changed"] is False, r
    assert c.call(2, "getdbseqnum", db_name="pyctdb_registry.tdb")["seqnum"] == seq
    # a tunable through the module reaches every node
    rc, r = mod(helpers, c, 2, "ctdb_conf", {"section": "pyctdb:tunables",
                                             "params": {"MonitorInterval": 22}})
    assert rc == 0 and r["changed"] is True and r["params"] == [["MonitorInterval", "22"]]
    c.wait_for(lambda: all(c.call(p, "getvar", name="MonitorInterval")["value"] == 22
                           for p in range(3)), timeout=10, what="MonitorInterval 22")
    # absent: a parameter, then the section
    rc, r = mod(helpers, c, 0, "ctdb_conf", {"section": "data", "state": "absent",
                                             "params": ["path"]}, diff=True)
    assert rc == 0 and r["changed"] is True and r["params"] == [], r
    rc, r = mod(helpers, c, 0, "ctdb_conf", {"section": "data", "state": "absent"},
                check=True)
    assert rc == 0 and r["changed"] is True and "[data]" in conf(c, 0)
    rc, r = mod(helpers, c, 0, "ctdb_conf", {"section": "data", "state": "absent"})
    assert rc == 0 and r["changed"] is True and r["exists"] is False
    rc, r = mod(helpers, c, 0, "ctdb_conf", {"section": "data", "state": "absent"})
    assert rc == 0 and r["changed"] is False
    assert "[data]" not in conf(c, 1)


def test_ctdb_db(local, helpers):
    c = local
    a = {"name": "app.tdb", "persistent": True, "keys": {"mode": "active", "n": 3},
         "absent_keys": ["legacy"]}
    rc, r = mod(helpers, c, 0, "ctdb_db", a, check=True, diff=True)
    assert rc == 0 and r["changed"] is True and r["attached"] is True, r
    assert r["diff"]["before"] == {"attached": False, "keys": {"mode": None, "n": None,
                                                               "legacy": None}}
    assert r["diff"]["after"]["keys"] == {"mode": "active", "n": "3", "legacy": None}
    assert "app.tdb" not in c.cli(1, "getdbmap").stdout  # check mode changed nothing
    rc, r = mod(helpers, c, 0, "ctdb_db", a, diff=True)
    assert rc == 0 and r["changed"] is True and sorted(r["written"]) == ["mode", "n"], r
    assert c.cli(2, "pfetch", "app.tdb", "mode").stdout == "active\n"
    rc, r = mod(helpers, c, 1, "ctdb_db", a)
    assert rc == 0 and r["changed"] is False, r
    # a key to delete, in check mode first
    c.cli(0, "pstore", "app.tdb", "legacy", "old", check=True)
    b = dict(a, keys={"mode": "active"})
    rc, r = mod(helpers, c, 1, "ctdb_db", b, check=True, diff=True)
    assert rc == 0 and r["changed"] is True and r["deleted"] == ["legacy"], r
    assert r["diff"]["before"]["keys"]["legacy"] == "old"
    assert c.cli(2, "pfetch", "app.tdb", "legacy").stdout == "old\n"
    rc, r = mod(helpers, c, 1, "ctdb_db", b)
    assert rc == 0 and r["changed"] is True and r["deleted"] == ["legacy"], r
    assert c.cli(2, "pfetch", "app.tdb", "legacy").stdout == ""
    # volatile: attached once
    rc, r = mod(helpers, c, 2, "ctdb_db", {"name": "vol.tdb"})
    assert rc == 0 and r["changed"] is True and r["attached"] is True, r
    rc, r = mod(helpers, c, 0, "ctdb_db", {"name": "vol.tdb"})
    assert rc == 0 and r["changed"] is False, r
    # bad parameters: clear error, nothing changed
    for bad, msg in (({"name": "vol.tdb", "keys": {"a": "1"}}, "persistent databases"),
                     ({"name": "vol.tdb", "persistent": True}, "attached as a volatile"),
                     ({"name": "bad/name", "persistent": True}, "invalid database name"),
                     (dict(a, absent_keys=["mode"]), "both in keys and absent_keys"),
                     (dict(a, keys={"k" * 600: "x"}), "1 to 511 bytes")):
        rc, r = mod(helpers, c, 0, "ctdb_db", bad)
        assert rc != 0 and msg in r["msg"] and r["changed"] is False, (bad, r)
    assert "bad/name" not in c.cli(0, "getdbmap").stdout


def test_ctdb_conf_on_samba_registry(local, helpers, tmp_path):
    """registry=samba: Samba's own registry configuration (net conf, clustered through
    pyctdb's CTDB socket). Check mode changes nothing; names Samba stores otherwise
    (writeable -> read only) are idempotent; exclusive; absent; every node's net sees it."""
    import shutil
    import subprocess
    if shutil.which("net") is None:
        pytest.skip("Samba's net (samba-common-bin) is missing")
    from pyctdb.testing.samba import write_smb_conf
    c = local
    smb = {p: write_smb_conf(str(tmp_path / f"samba{p}"), c.ctdb_socket(p)) for p in range(3)}

    def run(pnn, args, **kw):
        return mod(helpers, c, pnn, "ctdb_conf", dict(args, registry="samba",
                                                      smb_conf=smb[pnn]), **kw)

    def showshare(pnn, section):
        r = subprocess.run(["net", "-s", smb[pnn], "conf", "showshare", section],
                           capture_output=True, text=True)
        return r.stdout if r.returncode == 0 else None
    a = {"section": "data", "params": {"path": "/srv/data", "writeable": True}}
    rc, r = run(0, a, check=True, diff=True)
    assert rc == 0 and r["changed"] is True, r
    assert r["diff"]["before"] == ""
    assert r["diff"]["after"] == "[data]\n\tpath = /srv/data\n\tread only = no\n"
    assert showshare(1, "data") is None  # check mode changed nothing
    rc, r = run(0, a, diff=True)
    assert rc == 0 and r["changed"] is True and r["exists"] is True, r
    assert r["params"] == [["path", "/srv/data"], ["read only", "no"]]
    assert showshare(2, "data") == "[data]\n\tpath = /srv/data\n\tread only = no\n"
    rc, r = run(1, a)  # (writeable = yes is read only = no: unchanged)
    assert rc == 0 and r["changed"] is False, r
    rc, r = run(2, {"section": "data", "params": {"comment": "shared"}}, diff=True)
    assert rc == 0 and r["changed"] is True, r
    assert "comment = shared" in showshare(0, "data") and "path = /srv/data" in \
        showshare(0, "data")
    rc, r = run(1, {"section": "data", "params": {"path": "/srv/d2"}, "exclusive": True})
    assert rc == 0 and r["changed"] is True, r
    assert showshare(0, "data") == "[data]\n\tpath = /srv/d2\n"
    rc, r = run(0, {"section": "global", "params": {"workgroup": "PYCTDB"}})
    assert rc == 0 and r["changed"] is True, r
    rc, r = run(0, {"section": "data", "state": "absent"}, diff=True)
    assert rc == 0 and r["changed"] is True and r["exists"] is False, r
    assert showshare(2, "data") is None and "workgroup = PYCTDB" in showshare(2, "global")
    rc, r = run(0, {"section": "data", "state": "absent"})
    assert rc == 0 and r["changed"] is False, r
    # a parameter Samba does not know: a clear error, nothing changed
    rc, r = run(0, {"section": "global", "params": {"no such parameter": "1"}})
    assert rc != 0 and r["changed"] is False and "setparm" in r["msg"], r
    assert "no such parameter" not in showshare(1, "global")
