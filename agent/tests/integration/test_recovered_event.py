"""The `recovered` event runs once the databases are thawed, as in CTDB: a `recovered`
script can write to a clustered database (before, it waited for a thaw that came only after
the event, until its timeout)."""

import pytest

from pyctdb.testing.localcluster import LocalCluster

pytestmark = pytest.mark.timeout(120)


def test_recovered_script_can_use_the_databases(tmp_path):
    with LocalCluster.healthy_cluster(3, tmp_path) as c:
        c.cli_ok(0, "attach", "ev.tdb", "persistent")
        c.cli_ok(0, "pstore", "ev.tdb", "k", "v")
        out = tmp_path / "recovered.out"
        cli = " ".join(c.cli_argv(1, "-t", "1", "pstore", "ev.tdb", "k2", "w"))
        c.event_script(1, "90.db", f'[ "$1" = recovered ] || exit 0\n'
                                   f'PYTHONPATH={c.cli_env()["PYTHONPATH"]} {cli} '
                                   f'> {out} 2>&1 || echo "failed $?" >> {out}\n'
                                   f'echo done >> {out}\nexit 0\n')
        c.cli_ok(1, "recover")
        c.wait_for(lambda: out.exists() and out.read_text(), 20, what="the recovered event")
        assert out.read_text() == "done\n", out.read_text()
        assert c.cli_ok(2, "pfetch", "ev.tdb", "k2") == "w\n"
