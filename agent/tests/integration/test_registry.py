"""The cluster registry (`pyctdb conf`) on three real agents: a change on one node is
seen on the others, import/list round-trips, bad input changes nothing, and the
registry's [pyctdb:tunables] takes effect on every node."""

import pytest

from pyctdb.testing.localcluster import LocalCluster

pytestmark = pytest.mark.timeout(150)

SMB = """\
[global]
\tclustering = yes
\tworkgroup = EXAMPLE

[share1]
\tpath = /srv/share1
\tread only = no

"""


def ok(c, pnn, *args):
    r = c.cli(pnn, *args)
    assert r.returncode == 0, (args, r.stdout, r.stderr, c.log(pnn)[-3000:])
    return r.stdout


def fails(c, pnn, *args):
    r = c.cli(pnn, *args)
    assert r.returncode != 0, (args, r.stdout)
    return r.stderr.strip()


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    with LocalCluster.healthy_cluster(3, tmp_path_factory.mktemp("reg")) as c:
        yield c


def test_conf_commands_across_nodes(c, tmp_path):
    assert ok(c, 0, "conf", "list") == ""
    assert fails(c, 1, "conf", "getparm", "global", "workgroup") == \
        "Error: given service 'global' does not exist."
    ok(c, 0, "conf", "setparm", "Global", "WorkGroup", "EXAMPLE")
    assert ok(c, 2, "conf", "getparm", "global", "workgroup") == "EXAMPLE\n"
    assert fails(c, 2, "conf", "getparm", "global", "realm") == \
        "Error: given parameter 'realm' is not set."
    assert "name:pyctdb_registry.tdb" in ok(c, 1, "getdbmap")

    f = tmp_path / "smb.conf"
    f.write_text("# ours\n" + SMB)
    ok(c, 1, "conf", "import", str(f))
    for p in range(3):
        assert ok(c, p, "conf", "list") == SMB
    assert ok(c, 2, "conf", "showsection", "share1") == \
        "[share1]\n\tpath = /srv/share1\n\tread only = no\n"
    seq = ok(c, 0, "getdbseqnum", "pyctdb_registry.tdb")

    # bad input: file:line error, nothing changed (not even the sequence number)
    bad = tmp_path / "bad.conf"
    bad.write_text("[global]\n\tworkgroup = X\n[share2\n")
    err = fails(c, 0, "conf", "import", str(bad))
    assert err == f"{bad}:3: section header without \"]\": '[share2'", err
    assert "no such tunable" in fails(c, 0, "conf", "setparm", "pyctdb:tunables",
                                      "KeepAliveIntervall", "2")
    assert ok(c, 0, "getdbseqnum", "pyctdb_registry.tdb") == seq
    assert ok(c, 1, "conf", "list") == SMB

    # test mode prints, changes nothing
    out = ok(c, 0, "conf", "import", "-T", str(bad.parent / "smb.conf"))
    assert "TEST MODE - would import" in out and "[share1]" in out
    assert ok(c, 0, "getdbseqnum", "pyctdb_registry.tdb") == seq

    ok(c, 2, "conf", "delparm", "share1", "read only")
    assert ok(c, 0, "conf", "showsection", "share1") == "[share1]\n\tpath = /srv/share1\n"
    ok(c, 1, "conf", "delsection", "share1")
    assert "share1" not in ok(c, 0, "conf", "list")
    ok(c, 0, "conf", "drop")
    assert ok(c, 2, "conf", "list") == ""


def getvar(c, pnn, name):
    return c.call(pnn, "getvar", name=name)["value"]


def test_registry_tunables_apply_on_every_node(c):
    assert all(getvar(c, p, "MonitorInterval") == 15 for p in range(3))
    ok(c, 1, "conf", "setparm", "pyctdb:tunables", "monitorinterval", "21")
    assert ok(c, 0, "conf", "showsection", "pyctdb:tunables") == \
        "[pyctdb:tunables]\n\tMonitorInterval = 21\n"
    c.wait_for(lambda: all(getvar(c, p, "MonitorInterval") == 21 for p in range(3)),
               timeout=10, what="MonitorInterval 21 on every node")
    ok(c, 0, "conf", "delparm", "pyctdb:tunables", "MonitorInterval")
    c.wait_for(lambda: all(getvar(c, p, "MonitorInterval") == 15 for p in range(3)),
               timeout=10, what="MonitorInterval back to 15 on every node")


def test_concurrent_edits_on_several_nodes_all_take_effect(c):
    """setparm on every node at once, into the same section: each is a read-modify-write
    of the whole section, committed only if no other node changed the registry in
    between (otherwise read again), so no node's parameter is lost (last-writer-wins
    would drop most of them)."""
    from concurrent.futures import ThreadPoolExecutor

    def setparms(pnn):
        for i in range(8):
            r = c.call(pnn, "conf_setparm", timeout=30, section="race",
                       param=f"p{pnn}x{i}", value=str(i))
            assert r.get("ok", True) is not False, r
    with ThreadPoolExecutor(3) as ex:
        list(ex.map(setparms, range(3)))
    want = {f"p{p}x{i}": str(i) for p in range(3) for i in range(8)}
    for p in range(3):
        out = ok(c, p, "conf", "showsection", "race")
        got = dict(line.strip().split(" = ") for line in out.splitlines()[1:])
        assert got == want, (p, sorted(set(want) - set(got)))
    ok(c, 0, "conf", "delsection", "race")
