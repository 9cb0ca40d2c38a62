"""Database administration and vacuuming on real agents: detach, getdbstatus, ptrans
from the CLI, backupdb/restoredb (and refusing a damaged backup), and vacuuming that
keeps a volatile database under churn bounded on every node."""

import json
import os
import subprocess

import pytest

from pyctdb.testing.localcluster import AGENT_DIR, LocalCluster

pytestmark = pytest.mark.timeout(150)


def ok(c, pnn, *args):
    r = c.cli(pnn, *args)
    assert r.returncode == 0, (args, r.stdout, r.stderr, c.log(pnn)[-3000:])
    return r.stdout


def records(c, pnn, db):
    return c.call(pnn, "getdbstatus", db_name=db)["records"]


def test_vacuuming_keeps_a_volatile_database_under_churn_bounded(tmp_path):
    with LocalCluster(3, base_dir=tmp_path, tunables={"VacuumInterval": 1}) as c:
        c.start()
        c.wait_healthy(30)
        ok(c, 0, "attach", "churn.tdb")
        # churn from every node: write then delete, every key taken by two nodes
        for i in range(60):
            a, b = i % 3, (i + 1) % 3
            key = f"churn-{i}"
            ok(c, a, "writekey", "churn.tdb", key, "x" * 100)
            ok(c, b, "deletekey", "churn.tdb", key)
        ok(c, 2, "writekey", "churn.tdb", "keep", "me")
        # every tombstone and every copy of it goes, on every node; the live record stays
        c.wait_for(lambda: all(records(c, p, "churn.tdb") <= 2 for p in range(3)), 30,
                   what="vacuuming")
        for p in range(3):
            assert ok(c, p, "readkey", "churn.tdb", "keep").strip() == "Data: size:2 ptr:[me]"
            assert ok(c, p, "readkey", "churn.tdb", "churn-7").strip() == \
                "Data: size:0 ptr:[]"
        out = ok(c, 1, "catdb", "churn.tdb")
        assert "Dumped 1 records" in out and 'key(4) = "keep"' in out
        st = c.call(0, "getdbstatus", db_name="churn.tdb")
        assert st["vacuum"]["runs"] >= 1
        assert any("vacuumed churn.tdb" in c.log(p) for p in range(3))


def test_detach_getdbstatus_ptrans(tmp_path):
    with LocalCluster(3, base_dir=tmp_path) as c:
        c.start()
        c.wait_healthy(30)
        ok(c, 0, "attach", "vol.tdb")
        ok(c, 0, "attach", "reg.tdb", "persistent")
        # getdbstatus: CTDB's form
        out = ok(c, 1, "getdbstatus", "reg.tdb").splitlines()
        assert out[0] == "dbid: 0x%08x" % c.call(1, "getdbstatus", db_name="reg.tdb")["db_id"]
        assert out[1:] == ["name: reg.tdb", out[2], "PERSISTENT: yes", "REPLICATED: no",
                           "STICKY: no", "READONLY: no", "HEALTH: OK"]
        assert out[2].startswith("path: ") and out[2].endswith("#reg.tdb")
        x = ok(c, 1, "getdbstatus", "-X", "vol.tdb").splitlines()
        assert x[0] == "|dbid|name|path|persistent|replicated|sticky|readonly|health|records|"
        assert json.loads(ok(c, 2, "--json", "getdbstatus", "vol.tdb"))["persistent"] is False
        r = c.cli(0, "getdbstatus", "nosuch.tdb")
        assert r.returncode == 1 and "no database 'nosuch.tdb'" in r.stderr

        # ptrans: "key" "value" lines from a file or standard input, one transaction
        f = tmp_path / "ptrans.txt"
        f.write_text('"a" "1"\n"b\\00c" "two words"\n\n"gone" "x"\n')
        ok(c, 0, "ptrans", "reg.tdb", str(f))
        env = dict(os.environ, PYTHONPATH=AGENT_DIR)
        r = subprocess.run([c.python, "-m", "pyctdb.tools.cli", "--socket", c.socket(1),
                            "ptrans", "reg.tdb"], input='"gone" ""\n"a" "3"\n',
                           capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        for p in range(3):
            assert ok(c, p, "pfetch", "reg.tdb", "a") == "3\n"
            assert ok(c, p, "pfetch", "reg.tdb", "0x620063") == "two words\n"
            assert ok(c, p, "pfetch", "reg.tdb", "gone") == ""
            assert ok(c, p, "getdbseqnum", "reg.tdb").strip() == "0x2"
        f.write_text('"a" "4"\n"b" unquoted\n')
        r = c.cli(0, "ptrans", "reg.tdb", str(f))
        assert r.returncode != 0 and "line 2" in r.stderr
        assert ok(c, 0, "pfetch", "reg.tdb", "a") == "3\n"  # nothing applied

        # detach: CTDB's rules and messages
        r = c.cli(0, "detach", "vol.tdb")
        assert r.returncode == 1 and "Database access is still active on node 0. " \
            "Set AllowclientDBAttach=0 on all nodes." in r.stderr
        for p in range(3):
            ok(c, p, "setvar", "AllowClientDBAttach", "0")
        r = c.cli(0, "detach", "reg.tdb")
        assert r.returncode == 1 and "Only volatile databases can be detached" in r.stderr
        r = c.cli(0, "attach", "new.tdb")
        assert r.returncode == 1 and "AllowClientDBAttach" in r.stderr
        ok(c, 2, "writekey", "vol.tdb", "k", "v")
        r = c.cli(1, "detach", "vol.tdb", "nosuch.tdb")
        assert r.returncode == 0 and "No database matching 'nosuch.tdb' found" in r.stderr
        for p in range(3):
            out = ok(c, p, "getdbmap")
            assert "name:vol.tdb" not in out and "name:reg.tdb" in out
        ok(c, 0, "stop")
        c.wait_for(lambda: "STOPPED" in ok(c, 1, "status"), 20)
        for p in range(3):
            ok(c, p, "setvar", "AllowClientDBAttach", "1")
        ok(c, 1, "attach", "v2.tdb")
        for p in range(1, 3):
            ok(c, p, "setvar", "AllowClientDBAttach", "0")
        r = c.cli(1, "detach", "v2.tdb")
        assert r.returncode == 1 and "Database cannot be detached on inactive (stopped " \
            "or banned) node 0" in r.stderr


def test_backupdb_restoredb(tmp_path):
    with LocalCluster(3, base_dir=tmp_path) as c:
        c.start()
        c.wait_healthy(30)
        ok(c, 0, "attach", "reg.tdb", "persistent")
        ok(c, 0, "attach", "vol.tdb")
        for i in range(30):
            ok(c, i % 3, "pstore", "reg.tdb", f"k{i}", f"v{i}")
        for i in range(10):
            ok(c, i % 3, "writekey", "vol.tdb", f"w{i}", f"x{i}")
        bk = tmp_path / "reg.bak"
        assert "Database reg.tdb backed up to" in ok(c, 1, "backupdb", "reg.tdb", str(bk))
        vbk = tmp_path / "vol.bak"
        assert ": 10 records" in ok(c, 2, "backupdb", "vol.tdb", str(vbk))
        # change things after the backup
        ok(c, 0, "pstore", "reg.tdb", "k1", "changed")
        ok(c, 0, "pstore", "reg.tdb", "new", "after backup")
        ok(c, 1, "writekey", "vol.tdb", "w1", "changed")
        ok(c, 1, "deletekey", "vol.tdb", "w2")
        seq = int(ok(c, 0, "getdbseqnum", "reg.tdb"), 16)

        # a damaged or truncated backup is refused and changes nothing
        data = bk.read_bytes()
        bad = tmp_path / "bad.bak"
        bad.write_bytes(data[:len(data) // 2])
        r = c.cli(0, "restoredb", str(bad))
        assert r.returncode == 1 and "is truncated" in r.stderr
        bad.write_bytes(data[:40] + bytes([data[40] ^ 0xFF]) + data[41:])
        r = c.cli(0, "restoredb", str(bad))
        assert r.returncode == 1 and "damaged (checksum mismatch)" in r.stderr
        bad.write_bytes(b"not a backup at all")
        r = c.cli(0, "restoredb", str(bad))
        assert r.returncode == 1 and "not a pyctdb backup" in r.stderr
        assert ok(c, 2, "pfetch", "reg.tdb", "new") == "after backup\n"
        r = c.cli(0, "restoredb", str(vbk), "reg.tdb")
        assert r.returncode == 1 and "persistent" in r.stderr

        # restore: the database is replaced on every node
        out = ok(c, 2, "restoredb", str(bk))
        assert "Restoring database 'reg.tdb' from backup @" in out
        for p in range(3):
            assert ok(c, p, "pfetch", "reg.tdb", "k1") == "v1\n"
            assert ok(c, p, "pfetch", "reg.tdb", "new") == ""
            assert ok(c, p, "pfetch", "reg.tdb", "k29") == "v29\n"
            assert int(ok(c, p, "getdbseqnum", "reg.tdb"), 16) == seq + 1
        ok(c, 1, "restoredb", str(vbk))
        for p in range(3):
            assert ok(c, p, "readkey", "vol.tdb", "w1").strip() == "Data: size:2 ptr:[x1]"
            assert ok(c, p, "readkey", "vol.tdb", "w2").strip() == "Data: size:2 ptr:[x2]"
        # into another (new) database, then it survives a recovery
        res = json.loads(ok(c, 0, "--json", "restoredb", str(bk), "copy.tdb"))
        assert res["records"] == 30 and res["persistent"] is True
        leader = c.status(0)["leader"]
        c.kill(leader)
        rest = [p for p in range(3) if p != leader]
        c.wait_for(lambda: all(c.status(p)["joined"] and leader not in c.status(p)["vnnmap"]
                               for p in rest), 30)
        for p in rest:
            assert ok(c, p, "pfetch", "copy.tdb", "k5") == "v5\n"
            assert ok(c, p, "pfetch", "reg.tdb", "k1") == "v1\n"


def test_large_restore_and_recovery_keep_every_node_connected(tmp_path):
    """Restoring a 100k-record database and recovering it (a node stopped and continued:
    the leader pulls, merges and pushes 100k records, seconds of CPU) must not cost a
    node its links: keepalives keep flowing (KeepaliveInterval 0.5 s x KeepaliveLimit 3)
    and every node ends with every record."""
    from pyctdb.protocol import backup as B
    from pyctdb.rules import records as L
    n = 100_000
    bk = tmp_path / "big.bak"
    B.write(str(bk), "big.tdb", False, 0,
            [(f"key-{i:06d}".encode(), L.Record(1, 0, 0, b"v" * 100)) for i in range(n)])
    with LocalCluster(3, base_dir=tmp_path, tunables={"VacuumInterval": 0}) as c:
        c.start()
        c.wait_healthy(30)
        start = {p: len(c.log(p)) for p in range(3)}
        ok(c, 0, "restoredb", str(bk))
        assert [records(c, p, "big.tdb") for p in range(3)] == [n] * 3
        ok(c, 2, "stop")
        c.wait_for(lambda: 2 not in c.status(0)["vnnmap"], 30, what="node 2 out")
        ok(c, 2, "continue")
        c.wait_for(lambda: c.status(0)["vnnmap"] == [0, 1, 2]
                   and c.status(0)["recovery_mode"] == "NORMAL", 60, what="node 2 back")
        leader = c.status(0)["leader"]
        c.wait_for(lambda: f"{n} records merged and pushed to [0, 1, 2]" in c.log(leader),
                   30, what="the recovery of the 100k records")
        for p in range(3):
            new = c.log(p)[start[p]:]
            assert "is DISCONNECTED" not in new and "silent for" not in new, new[-3000:]
            assert records(c, p, "big.tdb") == n
            assert ok(c, p, "readkey", "big.tdb", f"key-{p * 33333:06d}").strip() == \
                f"Data: size:100 ptr:[{'v' * 100}]"


def test_restore_freezes_the_cluster(tmp_path):
    """As CTDB's restoredb, the databases are frozen while a restore runs: a write made
    on another node meanwhile waits and lands on the restored copy (without the freeze
    the restore's push would overwrite it on some or all nodes)."""
    from pyctdb.protocol import backup as B
    from pyctdb.rules import records as L
    n = 60_000
    bk = tmp_path / "big.bak"
    B.write(str(bk), "preg.tdb", True, 5,
            [(f"key-{i:06d}".encode(), L.Record(1, 0, 0, b"old" * 30)) for i in range(n)])
    with LocalCluster.healthy_cluster(3, tmp_path / "c", tunables={"VacuumInterval": 0}) as c:
        ok(c, 0, "attach", "preg.tdb", "persistent")
        mark = len(c.log(0))
        restore = subprocess.Popen(c.cli_argv(0, "restoredb", str(bk)), env=c.cli_env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        c.wait_for(lambda: "restoredb preg.tdb: freezing" in c.log(0)[mark:], 30,
                   interval=0.005, what="the restore's freeze")
        ok(c, 2, "pstore", "preg.tdb", "key-000007", "written during the restore")
        out, err = restore.communicate(timeout=60)
        assert restore.returncode == 0, (out, err)
        for p in range(3):
            assert ok(c, p, "pfetch", "preg.tdb", "key-000007") == \
                "written during the restore\n"
            assert ok(c, p, "pfetch", "preg.tdb", "key-000008") == "old" * 30 + "\n"
            assert records(c, p, "preg.tdb") >= n
