"""TDB files through Debian's libtdb: records, CTDB's header, chain locks between
processes, transactions, and the files read by Debian's own tdbdump."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyctdb.server.db import tdbfile as T

AGENT = str(Path(T.__file__).resolve().parents[3])

pytestmark = pytest.mark.skipif(not os.path.exists("/lib/x86_64-linux-gnu/libtdb.so.1")
                                and not os.path.exists("/usr/lib/x86_64-linux-gnu/libtdb.so.1"),
                                reason="libtdb1 missing")


def test_records_round_trip_and_deletes(tmp_path):
    with T.TdbFile(str(tmp_path / "a.tdb"), T.ctdb_tdb_flags(persistent=True)) as db:
        assert db.fetch(b"k") is None
        db.store(b"k", T.ltdb_pack(3, 1, 0x10000, b"value"))
        db.store(b"", b"empty key")
        assert T.ltdb_unpack(db.fetch(b"k")) == (3, 1, 0x10000, b"value")
        assert db.fetch(b"") == b"empty key"
        assert sorted(db.items()) == sorted([(b"k", T.ltdb_pack(3, 1, 0x10000, b"value")),
                                             (b"", b"empty key")])
        assert db.delete(b"k") is True and db.delete(b"k") is False
        with pytest.raises(T.TdbError, match="store"):
            db.store(b"", b"x", T.TDB_INSERT)  # (exists)


def test_the_header_is_ctdbs_24_bytes_in_host_order():
    raw = T.ltdb_pack(0x0102030405060708, 2, 0x00010000)
    assert len(raw) == 24 and raw[:8] == bytes([8, 7, 6, 5, 4, 3, 2, 1])
    with pytest.raises(T.TdbError, match="shorter than CTDB's 24-byte header"):
        T.ltdb_unpack(b"\0" * 10)


def test_a_transaction_commits_or_leaves_nothing(tmp_path):
    with T.TdbFile(str(tmp_path / "t.tdb"), T.ctdb_tdb_flags(True) | T.TDB_SEQNUM) as db:
        s0 = db.seqnum
        with db.transaction():
            db.store(b"a", b"1")
            db.store(b"b", b"2")
        assert db.fetch(b"a") == b"1" and db.seqnum > s0
        with pytest.raises(RuntimeError):
            with db.transaction():
                db.store(b"c", b"3")
                raise RuntimeError("no")
        assert db.fetch(b"c") is None


def test_a_chain_lock_held_by_another_process_is_seen_without_blocking(tmp_path):
    path = str(tmp_path / "v.tdb")
    flags = T.ctdb_tdb_flags(persistent=False)
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
sys.path.insert(0, {AGENT!r})
from pyctdb.server.db import tdbfile as T

db = T.TdbFile({path!r}, {flags})
db.chainlock(b"rec")
print("locked", flush=True)
sys.stdin.readline()
db.chainunlock(b"rec")
print("unlocked", flush=True)
sys.stdin.readline()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with T.TdbFile(path, flags) as db:
            assert db.chainlock(b"rec", block=False) is False
            assert db.chainlock(b"other", block=False) is True  # (another chain)
            db.chainunlock(b"other")
            holder.stdin.write("\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "unlocked"
            assert db.chainlock(b"rec", block=False) is True
            db.chainunlock(b"rec")
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.skipif(shutil.which("tdbdump") is None, reason="tdb-tools missing")
def test_debian_s_tdbdump_reads_what_pyctdb_wrote(tmp_path):
    path = str(tmp_path / "d.tdb")
    with T.TdbFile(path, T.ctdb_tdb_flags(True)) as db:
        db.store(b"hello", T.ltdb_pack(1, 0, 0, b"world"))
    out = subprocess.run(["tdbdump", path], capture_output=True, text=True, check=True).stdout
    assert 'key(5) = "hello"' in out and "world" in out and "data(29)" in out


def test_a_file_that_cannot_be_opened_is_an_error_that_names_it(tmp_path):
    with pytest.raises(T.TdbError, match="cannot open .*nodir/x.tdb"):
        T.TdbFile(str(tmp_path / "nodir" / "x.tdb"))
