"""An SMB client copying a file through one address, that reconnects and resumes when its
connection dies (bench/smbfailover, the SMB failover test).

    python -m pyctdb.testing.smbcopy ADDRESS PORT NAME [--chunk 65536] [--pace 0.01]

Guest session on ``//ADDRESS/data`` (smbprotocol, SMB 3), ``NAME`` opened (or made) with
read/write sharing and no oplock, then chunk k (``chunk(k)``: its index, repeated) written
at offset k * size every ``pace`` seconds until a line ``stop`` comes on standard input.
A write that fails (the connection reset, closed, or no answer in ``--timeout`` seconds)
ends the connection; the client connects again (every 50 ms until one succeeds), opens
the file again and goes on from the first chunk not acknowledged. What it prints, each
time with CLOCK_MONOTONIC (shared by every namespace of the machine):

    ready T            connected, first chunk written
    error T MESSAGE    a write failed (the first failure of an outage)
    connected T        connected again (session, tree, file open)
    resumed T OFFSET   the first chunk written after the reconnection, at OFFSET
    done SIZE          after ``stop``: the file's size as written

A real client (Windows, Linux's cifs) does the same with its durable handles; this one
reopens the file, which the test's content check makes safe: every chunk's bytes depend
only on its offset.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid

CHUNK = 65536


def chunk(k, size=CHUNK):
    """The bytes of chunk k."""
    return k.to_bytes(8, "little") * (size // 8)


def verify(path, size=None, chunk_size=CHUNK):
    """Check the file at ``path`` (through the cluster filesystem) holds chunks 0.. in
    order (``size`` bytes if given); the first wrong offset or None."""
    with open(path, "rb") as f:
        data = f.read()
    if size is not None and len(data) != size:
        return min(len(data), size)
    for k in range(0, len(data), chunk_size):
        want = chunk(k // chunk_size, chunk_size)[:len(data) - k]
        if data[k:k + chunk_size] != want:
            return k
    return None


def out(*words):
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


def connect(address, port, name, timeout):
    from smbprotocol.connection import Connection
    from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes,
                                  FilePipePrinterAccessMask, ImpersonationLevel, Open,
                                  ShareAccess)
    from smbprotocol.session import Session
    from smbprotocol.tree import TreeConnect

    conn = Connection(uuid.uuid4(), address, port, require_signing=False)
    try:
        conn.connect(timeout=timeout)
        s = Session(conn, "guest", "", require_encryption=False, auth_protocol="ntlm")
        s.connect()
        t = TreeConnect(s, rf"\\{address}\data")
        t.connect(require_secure_negotiate=False)
        f = Open(t, name)
        f.create(ImpersonationLevel.Impersonation,
                 FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE,
                 FileAttributes.FILE_ATTRIBUTE_NORMAL,
                 ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE,
                 CreateDisposition.FILE_OPEN_IF, CreateOptions.FILE_NON_DIRECTORY_FILE)
    except BaseException:
        drop(conn)
        raise
    return conn, f


def drop(conn):
    """End a connection without waiting for the server (it may be gone)."""
    try:
        conn.transport.close()
    except Exception:  # noqa: BLE001 - it is being dropped
        pass
    try:
        conn.disconnect(False)
    except Exception:  # noqa: BLE001
        pass


class Watchdog:
    """Closes the connection of a write that has had no answer for ``timeout`` s."""

    def __init__(self, timeout):
        self.timeout = timeout
        self.since = None
        self.conn = None
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            time.sleep(0.05)
            since, conn = self.since, self.conn
            if since is not None and conn is not None and \
                    time.monotonic() - since > self.timeout:
                self.since = None
                drop(conn)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("address")
    ap.add_argument("port", type=int)
    ap.add_argument("name")
    ap.add_argument("--chunk", type=int, default=CHUNK)
    ap.add_argument("--pace", type=float, default=0.01, help="seconds between chunks")
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="a write unanswered this long fails (the connection is dropped)")
    a = ap.parse_args(argv)
    stop = threading.Event()

    def read_stdin():
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()
    threading.Thread(target=read_stdin, daemon=True).start()
    dog = Watchdog(a.timeout)
    conn, f = connect(a.address, a.port, a.name, 5)
    k, state = 0, "ready"
    while not stop.is_set():
        try:
            dog.conn, dog.since = conn, time.monotonic()
            f.write(chunk(k, a.chunk), k * a.chunk)
            dog.since = None
        except Exception as exc:  # noqa: BLE001 - any failure: reconnect
            dog.since = None
            if state != "down":
                out("error", time.monotonic(), type(exc).__name__,
                    str(exc).replace("\n", " ")[:200])
            state = "down"
            drop(conn)
            while not stop.is_set():
                try:
                    conn, f = connect(a.address, a.port, a.name, 1)
                    break
                except Exception:  # noqa: BLE001 - not yet served: again
                    time.sleep(0.05)
            else:
                break
            out("connected", time.monotonic())
            continue
        if state == "ready":
            out("ready", time.monotonic())
        elif state == "down":
            out("resumed", time.monotonic(), k * a.chunk)
        state = "up"
        k += 1
        if a.pace:
            time.sleep(a.pace)
    try:
        f.close()
    except Exception:  # noqa: BLE001
        pass
    drop(conn)
    out("done", k * a.chunk)


if __name__ == "__main__":
    main()
