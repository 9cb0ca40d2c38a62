"""One agent per database directory: DirectoryLocks (flock, per open file description,
so two holders in one process conflict as two processes do)."""

import os

import pytest

from pyctdb.server.db.dirlock import LOCK_FILE, DirectoryInUse, DirectoryLocks


def test_a_second_holder_is_refused_with_the_directory_and_pid(tmp_path):
    a = DirectoryLocks([tmp_path / "v", tmp_path / "p"])
    a.acquire()
    assert (tmp_path / "v" / LOCK_FILE).read_text() == "%d\n" % os.getpid()
    b = DirectoryLocks([tmp_path / "other", tmp_path / "p"])
    with pytest.raises(DirectoryInUse) as ei:
        b.acquire()
    assert ei.value.code == "EBUSY"
    assert ei.value.message.startswith(
        "database directory %s is in use by another pyctdbd (PID %d)" % (tmp_path / "p",
                                                                         os.getpid()))
    # b holds nothing after its refusal: its first directory is free for a third
    c = DirectoryLocks([tmp_path / "other"])
    c.acquire()
    c.release()
    a.release()
    b.acquire()  # once a lets go
    b.release()


def test_the_same_directory_twice_in_one_agent_is_one_lock(tmp_path):
    d = DirectoryLocks([tmp_path / "x", str(tmp_path / "x") + "/"])
    d.acquire()
    d.release()


def test_a_directory_that_cannot_be_made_is_named(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(DirectoryInUse) as ei:
        DirectoryLocks([tmp_path / "file" / "db"]).acquire()
    assert "database directory %s/file/db: cannot make its lock file" % tmp_path \
        in ei.value.message
