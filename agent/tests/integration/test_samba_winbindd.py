"""Debian's own winbindd 4.17 (`clustering = yes`), one per node, on pyctdb's CTDB
socket: each starts, answers wbinfo, and the nodes' winbindds share one ID map.

winbindd keeps its ID map in winbindd_idmap.tdb (``idmap config * : backend = tdb``), a
persistent database in a cluster: attached through CTDB's socket, changed in Samba's
transactions (g_lock.tdb's lock, then TRANS3_COMMIT on every node). Allocations made on
all nodes at once must never hand out one ID twice.

Every winbindd runs in a mount namespace of its own where its node's socket directory is
/run/samba/winbindd (wbinfo finds winbindd only there), and so does every wbinfo."""

import concurrent.futures
import os
import shutil
import subprocess
import time

import pytest

from pyctdb.testing.localcluster import LocalCluster
from pyctdb.testing.samba import write_smb_conf

pytestmark = [
    pytest.mark.skipif(shutil.which("winbindd") is None or shutil.which("wbinfo") is None,
                       reason="Samba's winbindd is missing (apt-get install winbind)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="winbindd runs as root"),
    pytest.mark.timeout(300),
]

NODES = 3
LOW = 100000


def in_node(d, argv):
    """argv in a new mount namespace where ``d/wbsock`` is /run/samba/winbindd."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f"mkdir -p /run/samba/winbindd && mount --bind {d}/wbsock /run/samba/winbindd"
            " && exec \"$@\"", "winbind-node", *argv]


@pytest.fixture(scope="module")
def winbind(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("winbindd"))
    c = LocalCluster(NODES, base_dir=os.path.join(base, "c"))
    c.wb = [os.path.join(base, f"wb{p}") for p in range(NODES)]
    procs = []
    try:
        c.start()
        c.wait_healthy(60)
        for p, d in enumerate(c.wb):
            os.makedirs(os.path.join(d, "wbsock"))
            conf = write_smb_conf(d, c.ctdb_socket(p), global_extra=(
                f"workgroup = PYCTDB\nnetbios name = PYCTDB{p}\n"
                f"idmap config * : backend = tdb\nidmap config * : range = {LOW}-199999\n"))
            procs.append(subprocess.Popen(
                in_node(d, ["winbindd", "-F", "--no-process-group", "-s", conf,
                            "--debug-stdout"]),
                stdout=open(os.path.join(d, "winbindd.out"), "w"),
                stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 60
        for p in range(NODES):
            while wbinfo(c, p, "-p").returncode != 0:
                assert procs[p].poll() is None, open(os.path.join(c.wb[p],
                                                                  "winbindd.out")).read()
                assert time.monotonic() < deadline, f"winbindd of node {p} never answered"
                time.sleep(0.2)
        yield c
    finally:
        for pr in procs:
            try:
                os.killpg(pr.pid, 9)
            except ProcessLookupError:
                pass
            pr.wait()
        c.stop_all()


def wbinfo(c, pnn, *args):
    return subprocess.run(in_node(c.wb[pnn], ["wbinfo", *args]), capture_output=True,
                          text=True, timeout=60)


def test_winbindd_runs_on_every_node(winbind):
    c = winbind
    for p in range(NODES):
        r = wbinfo(c, p, "--online-status")
        assert r.returncode == 0 and "BUILTIN : active connection" in r.stdout, r
        assert wbinfo(c, p, "--own-domain").stdout.strip() == "PYCTDB"
    for p in range(NODES):
        assert "Traceback" not in c.log(p)


def test_ids_allocated_on_every_node_at_once_are_never_the_same(winbind):
    """15 uids and 15 gids, allocated five at a time on each node, all at once: every
    one different, and together the next ones of the range (none lost)."""
    c = winbind

    def allocate(p, what):
        r = wbinfo(c, p, f"--allocate-{what}")
        assert r.returncode == 0, (p, r.stdout, r.stderr)
        return int(r.stdout.split(":")[1])

    for what in ("uid", "gid"):
        first = allocate(0, what)
        with concurrent.futures.ThreadPoolExecutor(NODES * 2) as ex:
            got = list(ex.map(lambda p: allocate(p, what), [p for p in range(NODES)] * 5))
        assert len(set(got)) == len(got), sorted(got)
        assert sorted(got) == list(range(first + 1, first + 1 + len(got))), sorted(got)
    for p in range(NODES):  # (the ID map: a persistent TDB database of the cluster)
        r = subprocess.run(["ctdb", "getdbmap"], capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, CTDB_SOCKET=c.ctdb_socket(p)))
        assert (f"name:winbindd_idmap.tdb path:{c.node_dir(p)}/db/persistent/"
                f"winbindd_idmap.tdb.{p} PERSISTENT") in r.stdout, r.stdout
