"""A client of CTDB's socket that dies holding a record (as an smbd killed inside
dbwrap's fetch_locked does: it holds the record's chain lock in the TDB file itself).

Node 0 holds record ``k`` of a TDB database; another process locks k's chain in node 0's
file. A REQ_CALL for k through node 1 must wait, with both agents answering others
meanwhile; once the holder is killed (the kernel drops its fcntl lock; a robust mutex's
next owner is told its owner died), the record
migrates and the call is answered. A client that goes away with its REQ_CALL pending
leaves nothing behind."""

import os
import subprocess
import sys
import time

import pytest

from pyctdb.protocol.ctdb import marshal as M
from pyctdb.protocol.ctdb import packet as P
from pyctdb.server.db.tdbfile import TDB_MUTEX_LOCKING, robust_mutexes
from pyctdb.testing.localcluster import LocalCluster

from test_ctdb_socket import control, raw, recv_packet  # (this directory)

pytestmark = pytest.mark.timeout(120)

DB = "held.tdb"
KEY = b"k"

HOLDER = """
import sys, time
from pyctdb.server.db.tdbfile import TdbFile
f = TdbFile(sys.argv[1], int(sys.argv[3]), open_flags=2)  # O_RDWR, DB_OPEN_FLAGS' flags
f.chainlock(sys.argv[2].encode())
print("locked", flush=True)
time.sleep(3600)
"""


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    with LocalCluster(2, str(tmp_path_factory.mktemp("holder"))) as c:
        c.start()
        c.wait_healthy(60)
        yield c


def call(s, reqid, db_id, key):
    s.sendall(P.pack(P.REQ_CALL, reqid, P.call_body(db_id, key, callid=P.FETCH_FUNC),
                     destnode=P.CURRENT_NODE, srcnode=0))


def answered(s, reqid):
    h, body = recv_packet(s)
    assert (h.operation, h.reqid) == (P.REPLY_CALL, reqid), (h, body)
    return P.parse_reply_call(body)


def open_flags(s, db_id):
    status, data, err = control(s, M.DB_OPEN_FLAGS, M.u32(db_id), reqid=9)
    assert status == 0, err
    return M.parse_u32(data)


def holder(path, flags):
    """A process holding KEY's chain lock in the TDB file ``path``, opened with the
    tdb flags ``flags`` (as smbd opens it: what DB_OPEN_FLAGS answers)."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, path, KEY.decode(), str(flags)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_record_held_by_a_client_that_dies_moves_once_it_is_dead(c):
    s0, s1 = raw(c, 0), raw(c, 1)
    status, data, err = control(s0, M.DB_ATTACH, DB.encode() + b"\0")
    assert status == 0, err
    db_id = M.parse_u32(data)
    path = control(s0, M.GETDBPATH, M.u32(db_id), reqid=2)[1].rstrip(b"\0").decode()
    flags = open_flags(s0, db_id)
    # (as ctdbd: a volatile database is locked with robust mutexes, `tdb mutexes = true`)
    assert flags & TDB_MUTEX_LOCKING or not robust_mutexes()
    c.wait_for(lambda: os.path.exists(os.path.join(c.node_dir(1), "db", "volatile",
                                                   f"{DB}.1")), 10)
    call(s0, 3, db_id, KEY)  # the record's home is node 0 now
    assert answered(s0, 3)[0] == 0

    p = holder(path, flags)
    try:
        s1.settimeout(30)
        call(s1, 4, db_id, KEY)
        time.sleep(1.5)
        # waiting, and both agents answer others meanwhile
        for pnn in (0, 1):
            assert control(raw(c, pnn), M.GET_PNN)[0] == pnn
        s1.setblocking(False)
        with pytest.raises(BlockingIOError):
            s1.recv(1)  # no answer yet: the record is held
        s1.settimeout(30)
    finally:
        p.kill()
        p.wait()
    t = time.monotonic()
    assert answered(s1, 4)[0] == 0
    assert time.monotonic() - t < 10  # (the store tries the chain every 20 ms at most)


def test_a_client_gone_with_its_call_pending_leaves_nothing_behind(c):
    s0 = raw(c, 0)
    status, data, err = control(s0, M.DB_ATTACH, DB.encode() + b"\0")
    assert status == 0, err
    db_id = M.parse_u32(data)
    path = control(s0, M.GETDBPATH, M.u32(db_id), reqid=2)[1].rstrip(b"\0").decode()
    call(s0, 3, db_id, KEY)
    assert answered(s0, 3)[0] == 0  # (node 0 holds it)
    p = holder(path, open_flags(s0, db_id))
    try:
        s1 = raw(c, 1)
        call(s1, 5, db_id, KEY)
        time.sleep(0.5)
        s1.close()  # gone, its call pending
    finally:
        p.kill()
        p.wait()
    s1 = raw(c, 1)  # the next client's call is answered, the agents go on
    call(s1, 6, db_id, KEY)
    assert answered(s1, 6)[0] == 0
    call(s0, 7, db_id, KEY)
    assert answered(s0, 7)[0] == 0
    for pnn in (0, 1):
        assert "Traceback" not in c.log(pnn)
