"""TDB files, through Debian's libtdb (``libtdb.so.1``, by ctypes), for the databases
Samba attaches through CTDB's socket: the file format and its chain locks are libtdb's
own, so smbd, winbindd and ``tdbdump`` open the same files as pyctdbd.

:class:`TdbFile` is one open TDB: fetch, store, delete, chain locks (blocking or not),
traverse, transactions, the sequence number, wipe. A handle is not thread-safe: use each
from one thread (the database's worker), never from the event loop when a lock may
block (with mutexes, a chain locked by one thread is unlocked by the same thread).
:func:`ctdb_tdb_flags` gives the flags ctdbd opens a database with, and
:data:`LTDB_HEADER` is CTDB's record header (``struct ctdb_ltdb_header``: RSN, DMASTER,
flags; 24 bytes in the host's byte order) that every record of a clustered TDB starts
with.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import struct

from pyctdb.errors import PyctdbError

# tdb_open flags (tdb.h)
TDB_DEFAULT = 0
TDB_CLEAR_IF_FIRST = 1
TDB_NOMMAP = 8
TDB_NOSYNC = 64
TDB_SEQNUM = 128
TDB_DISALLOW_NESTING = 1024
TDB_INCOMPATIBLE_HASH = 2048
TDB_MUTEX_LOCKING = 4096
# tdb_store flags
TDB_REPLACE, TDB_INSERT, TDB_MODIFY = 1, 2, 3
# enum TDB_ERROR
TDB_ERR_NOEXIST = 8
TDB_ERR_LOCK = 3

#: struct ctdb_ltdb_header: u64 rsn, u32 dmaster, u32 reserved1, u32 flags, padding
LTDB_HEADER = struct.Struct("<QIII4x")


class TdbError(PyctdbError):
    code = "EIO"


class _Data(ctypes.Structure):
    _fields_ = [("dptr", ctypes.POINTER(ctypes.c_ubyte)), ("dsize", ctypes.c_size_t)]


class _Key(ctypes.Structure):
    """A TDB_DATA passed in (a key, a value to store): it points into the bytes object
    itself, not a copy (libtdb only reads it)."""
    _fields_ = [("dptr", ctypes.c_char_p), ("dsize", ctypes.c_size_t)]


_TRAVERSE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, _Data, _Data, ctypes.c_void_p)
_lib = None
_libc = None


def _library():
    """libtdb, loaded once (TdbError when it is missing)."""
    global _lib, _libc
    if _lib is None:
        name = ctypes.util.find_library("tdb") or "libtdb.so.1"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            raise TdbError(f"libtdb is missing ({exc}): apt-get install libtdb1") from None
        lib.tdb_open.restype = ctypes.c_void_p
        lib.tdb_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                 ctypes.c_uint]
        lib.tdb_close.argtypes = [ctypes.c_void_p]
        lib.tdb_fetch.restype = _Data
        lib.tdb_fetch.argtypes = [ctypes.c_void_p, _Key]
        for fn in ("tdb_store",):
            getattr(lib, fn).argtypes = [ctypes.c_void_p, _Key, _Key, ctypes.c_int]
        for fn in ("tdb_delete", "tdb_exists", "tdb_chainlock", "tdb_chainlock_nonblock",
                   "tdb_chainunlock", "tdb_chainlock_read_nonblock", "tdb_chainunlock_read"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p, _Key]
        for fn in ("tdb_error", "tdb_transaction_start", "tdb_transaction_commit",
                   "tdb_transaction_cancel", "tdb_get_seqnum", "tdb_wipe_all",
                   "tdb_lockall_nonblock", "tdb_unlockall", "tdb_enable_seqnum"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p]
        lib.tdb_runtime_check_for_robust_mutexes.restype = ctypes.c_bool
        lib.tdb_runtime_check_for_robust_mutexes.argtypes = []
        lib.tdb_errorstr.restype = ctypes.c_char_p
        lib.tdb_errorstr.argtypes = [ctypes.c_void_p]
        lib.tdb_traverse.argtypes = [ctypes.c_void_p, _TRAVERSE_FN, ctypes.c_void_p]
        _libc = ctypes.CDLL(ctypes.util.find_library("c"))
        _libc.free.argtypes = [ctypes.c_void_p]
        _lib = lib
    return _lib


def _data(b: bytes) -> _Key:
    return _Key(b, len(b))


def _bytes(d: _Data) -> bytes:
    return ctypes.string_at(d.dptr, d.dsize) if d.dsize else b""


_robust = None


def robust_mutexes() -> bool:
    """Whether libtdb can lock with robust mutexes here (its own runtime check, which
    ctdbd makes too; asked once: the check forks a child the first time)."""
    global _robust
    if _robust is None:
        _robust = bool(_library().tdb_runtime_check_for_robust_mutexes())
    return _robust


def ctdb_tdb_flags(persistent: bool, mutexes: bool = False) -> int:
    """The tdb_open flags ctdbd uses (ctdb/common/ctdb_ltdb.c ``ctdb_db_tdb_flags``):
    persistent databases TDB_DEFAULT, volatile ones TDB_NOSYNC | TDB_CLEAR_IF_FIRST |
    TDB_INCOMPATIBLE_HASH, and TDB_MUTEX_LOCKING when ``mutexes`` (ctdb.conf's
    ``[database] tdb mutexes``, true by default) and libtdb has robust mutexes here;
    both TDB_DISALLOW_NESTING. Every process that opens a file made with mutexes must
    pass the flag too: smbd learns them from DB_OPEN_FLAGS."""
    flags = TDB_DEFAULT if persistent else (TDB_NOSYNC | TDB_CLEAR_IF_FIRST
                                            | TDB_INCOMPATIBLE_HASH)
    if mutexes and not persistent and robust_mutexes():
        flags |= TDB_MUTEX_LOCKING
    return flags | TDB_DISALLOW_NESTING


def ltdb_pack(rsn, dmaster, flags, value=b"") -> bytes:
    return LTDB_HEADER.pack(rsn, dmaster, 0, flags) + value


def ltdb_unpack(data):
    """``(rsn, dmaster, flags, value)`` of a record with CTDB's header."""
    if len(data) < LTDB_HEADER.size:
        raise TdbError(f"record of {len(data)} bytes is shorter than CTDB's "
                       f"{LTDB_HEADER.size}-byte header")
    rsn, dmaster, _r, flags = LTDB_HEADER.unpack_from(data)
    return rsn, dmaster, flags, bytes(data[LTDB_HEADER.size:])


class TdbFile:
    """One open TDB file (``tdb_open(path, hash_size, tdb_flags, open_flags, mode)``)."""

    def __init__(self, path, tdb_flags=TDB_DEFAULT, open_flags=os.O_RDWR | os.O_CREAT,
                 mode=0o600, hash_size=0):
        self.path = path
        self._lib = _library()
        ctypes.set_errno(0)
        self._tdb = self._lib.tdb_open(os.fsencode(path), hash_size, tdb_flags, open_flags,
                                       mode)
        if not self._tdb:
            err = ctypes.get_errno()
            raise TdbError(f"cannot open {path}: {os.strerror(err) if err else 'tdb_open failed'}")

    def _check(self, ret, what):
        if ret != 0:
            raise TdbError(f"{self.path}: {what}: "
                           f"{self._lib.tdb_errorstr(self._tdb).decode(errors='replace')}")

    def close(self):
        if self._tdb:
            self._lib.tdb_close(self._tdb)
            self._tdb = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def fetch(self, key: bytes):
        """The record's data, or None."""
        d = self._lib.tdb_fetch(self._tdb, _data(key))
        if not d.dptr:
            return None
        try:
            return _bytes(d)
        finally:
            _libc.free(ctypes.cast(d.dptr, ctypes.c_void_p))

    def store(self, key: bytes, value: bytes, flag=TDB_REPLACE):
        self._check(self._lib.tdb_store(self._tdb, _data(key), _data(value), flag),
                    f"store of a {len(value)}-byte record")

    def delete(self, key: bytes) -> bool:
        """Delete the record; False if there was none."""
        if self._lib.tdb_delete(self._tdb, _data(key)) == 0:
            return True
        if self._lib.tdb_error(self._tdb) == TDB_ERR_NOEXIST:
            return False
        self._check(-1, "delete")
        return False

    def chainlock(self, key: bytes, block=True) -> bool:
        """Lock the key's hash chain (fcntl or mutex, as libtdb does it for Samba). Not
        blocking: False when another process holds it."""
        if block:
            self._check(self._lib.tdb_chainlock(self._tdb, _data(key)), "chain lock")
            return True
        return self._lib.tdb_chainlock_nonblock(self._tdb, _data(key)) == 0

    def chainunlock(self, key: bytes):
        self._check(self._lib.tdb_chainunlock(self._tdb, _data(key)), "chain unlock")

    def chainlock_read_nonblock(self, key: bytes) -> bool:
        """A read lock of the key's hash chain, not waiting: False when another process
        holds it for writing."""
        return self._lib.tdb_chainlock_read_nonblock(self._tdb, _data(key)) == 0

    def chainunlock_read(self, key: bytes):
        self._check(self._lib.tdb_chainunlock_read(self._tdb, _data(key)),
                    "chain read unlock")

    def lockall_nonblock(self) -> bool:
        """Lock the whole file (every chain), not waiting: False when another process
        holds a lock in it. This process's own locks nest inside it."""
        return self._lib.tdb_lockall_nonblock(self._tdb) == 0

    def unlockall(self):
        self._check(self._lib.tdb_unlockall(self._tdb), "unlock all")

    @contextlib.contextmanager
    def locked(self, key: bytes):
        self.chainlock(key)
        try:
            yield
        finally:
            self.chainunlock(key)

    def items(self):
        """Every (key, data), in the file's order."""
        out = []

        def each(_tdb, k, v, _private):
            out.append((_bytes(k), _bytes(v)))
            return 0
        cb = _TRAVERSE_FN(each)
        if self._lib.tdb_traverse(self._tdb, cb, None) < 0:
            self._check(-1, "traverse")
        return out

    @contextlib.contextmanager
    def transaction(self):
        """A transaction: committed when the block ends, cancelled when it raises."""
        self._check(self._lib.tdb_transaction_start(self._tdb), "transaction start")
        try:
            yield self
        except BaseException:
            self._lib.tdb_transaction_cancel(self._tdb)
            raise
        self._check(self._lib.tdb_transaction_commit(self._tdb), "transaction commit")

    @property
    def seqnum(self) -> int:
        """libtdb's sequence number (kept with TDB_SEQNUM)."""
        return self._lib.tdb_get_seqnum(self._tdb)

    def enable_seqnum(self):
        """Keep libtdb's sequence number from now on (TDB_SEQNUM on an open file)."""
        self._lib.tdb_enable_seqnum(self._tdb)

    def wipe(self):
        self._check(self._lib.tdb_wipe_all(self._tdb), "wipe")
