"""A cluster mutex helper on etcd (v3 API), for clusters without coherent fcntl locks.

    cluster lock = !/usr/bin/python3 -m pyctdb.server.etcdlock \\
        --endpoints http://10.0.0.1:2379,http://10.0.0.2:2379,http://10.0.0.3:2379

It speaks CTDB's mutex helper protocol (ctdb/doc/cluster_mutex_helper.txt): ``0`` taken
(held until killed), ``1`` contended, ``3`` error (the reason on standard error). It
imports only the standard library: it talks to etcd's JSON gateway (``/v3/...``) over
HTTP(S), trying the endpoints in turn, so the loss of an etcd member is survived while
the etcd cluster keeps its quorum.

* **Taking**: a lease of ``--ttl`` seconds is granted, and ``--key`` is created bound to
  it in one transaction, only if the key does not exist (create revision 0). Otherwise
  the lease is revoked and the answer is ``1``: a failed try leaves nothing behind.
* **Holding**: the lease is kept alive every ``ttl / 6`` seconds (on any endpoint that
  answers), and each time the key is checked to be still bound to this lease (deleting
  the key in etcd takes the lock away, as removing the lock file does for fcntl).
* **Letting go**: when no keepalive succeeded for ``2/3 x ttl`` seconds (cut off from
  etcd, or etcd lost its quorum), it exits, a third of the TTL *before* etcd can expire
  the lease and let another node take the key; the agent sees its helper gone and
  steps down. It exits too when its lease is found expired or the key taken from it,
  and when its parent dies. On SIGTERM (the agent releases the lock) it revokes the
  lease, so the key is free at once; after a SIGKILL the key is free after the TTL.
"""

import argparse
import base64
import http.client
import json
import os
import signal
import socket
import ssl
import sys
import time
import urllib.parse

from pyctdb.errors import PyctdbError
from pyctdb.server.lockhelper import PARENT_CHECK, die_with_parent, parent_gone

DEFAULT_KEY = "/pyctdb/cluster-lock"
DEFAULT_TTL = 6


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


class Unreachable(PyctdbError):
    """No endpoint answered."""


class Etcd:
    """The etcd v3 JSON gateway on a list of endpoints, the last good one first."""

    def __init__(self, endpoints, timeout, tls=None):
        self.endpoints = [urllib.parse.urlsplit(e) for e in endpoints]
        self.timeout = timeout
        self.tls = tls

    def _post(self, url, path, body):
        if url.scheme == "https":
            conn = http.client.HTTPSConnection(url.hostname, url.port or 2379,
                                               timeout=self.timeout, context=self.tls)
        else:
            conn = http.client.HTTPConnection(url.hostname, url.port or 2379,
                                              timeout=self.timeout)
        try:
            conn.request("POST", "/v3/" + path, json.dumps(body),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise OSError(f"HTTP {resp.status}: {data[:200]!r}")
        return json.loads(data.decode().splitlines()[0] if data else "{}")

    def call(self, path, body):
        """POST to the first endpoint that answers; Unreachable if none does."""
        errors = []
        for i, url in enumerate(self.endpoints):
            try:
                out = self._post(url, path, body)
            except (OSError, ValueError, http.client.HTTPException, socket.timeout) as exc:
                errors.append(f"{url.netloc}: {exc}")
                continue
            if i:  # remember the one that answered
                self.endpoints.insert(0, self.endpoints.pop(i))
            return out
        raise Unreachable("; ".join(errors))


class Lock:
    def __init__(self, etcd, key, ttl, value):
        self.etcd = etcd
        self.key = key
        self.ttl = ttl
        self.value = value
        self.lease = None

    def take(self) -> bool:
        self.lease = self.etcd.call("lease/grant", {"TTL": self.ttl})["ID"]
        k = _b64(self.key)
        out = self.etcd.call("kv/txn", {
            "compare": [{"key": k, "target": "CREATE", "result": "EQUAL",
                         "create_revision": "0"}],
            "success": [{"request_put": {"key": k, "value": _b64(self.value),
                                         "lease": self.lease}}]})
        if out.get("succeeded"):
            return True
        self.revoke()
        return False

    def refresh(self):
        """Keep the lease alive; the reason the lock is lost, or None. Unreachable."""
        res = self.etcd.call("lease/keepalive", {"ID": self.lease}).get("result", {})
        if int(res.get("TTL", 0)) <= 0:
            return "the lease expired"
        kvs = self.etcd.call("kv/range", {"key": _b64(self.key)}).get("kvs", [])
        if not kvs or kvs[0].get("lease") != self.lease:
            return f"key {self.key} was deleted or taken over"
        return None

    def revoke(self):
        lease, self.lease = self.lease, None
        if lease is not None:
            try:
                self.etcd.call("lease/revoke", {"ID": lease})
            except Unreachable:
                pass


def hold(lock, ppid):
    """Hold the lock until there is a reason to let go; the reason."""
    interval = lock.ttl / 6
    give_up = lock.ttl * 2 / 3
    last_ok = time.monotonic()
    next_try, next_parent = last_ok + interval, last_ok + PARENT_CHECK
    while True:
        time.sleep(max(0.0, min(next_try, next_parent) - time.monotonic()))
        now = time.monotonic()
        if now >= next_parent:
            if ppid != 1 and parent_gone(ppid):
                return "parent gone"
            next_parent = now + PARENT_CHECK
        if now < next_try:
            continue
        sent = time.monotonic()
        next_try = sent + interval
        try:
            why = lock.refresh()
        except Unreachable as exc:
            if time.monotonic() - last_ok >= give_up:
                return f"no keepalive reached etcd for {give_up:.1f}s ({exc})"
            continue
        except (KeyError, ValueError, TypeError) as exc:
            return f"unexpected answer from etcd: {exc!r}"
        if why:
            return why
        last_ok = sent


def _sigterm(signum, frame):
    raise SystemExit(0)


def parse(argv):
    ap = argparse.ArgumentParser(prog="python -m pyctdb.server.etcdlock",
                                 description="CTDB-style cluster mutex helper on etcd v3")
    ap.add_argument("--endpoints", required=True,
                    help="comma-separated etcd client URLs (http:// or https://)")
    ap.add_argument("--key", default=DEFAULT_KEY, help="etcd key of the lock (%(default)s)")
    ap.add_argument("--ttl", type=int, default=DEFAULT_TTL,
                    help="lease TTL in seconds (%(default)s; at least 2)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per request (default ttl/6, at most 2)")
    ap.add_argument("--cacert", help="CA bundle to check https endpoints")
    ap.add_argument("--cert", help="client certificate (https)")
    ap.add_argument("--key-file", dest="keyfile", help="client certificate's key (https)")
    a = ap.parse_args(argv)
    if a.ttl < 2:
        ap.error("--ttl must be at least 2")
    return a


def main(argv=None):
    try:
        a = parse(sys.argv[1:] if argv is None else argv)
    except SystemExit:
        os.write(1, b"3")
        return 1
    ppid = os.getppid()
    die_with_parent()
    signal.signal(signal.SIGTERM, _sigterm)
    tls = None
    if any(e.startswith("https:") for e in a.endpoints.split(",")):
        tls = ssl.create_default_context(cafile=a.cacert)
        if a.cert:
            tls.load_cert_chain(a.cert, a.keyfile)
    etcd = Etcd([e.strip() for e in a.endpoints.split(",") if e.strip()],
                a.timeout or min(2.0, a.ttl / 6), tls)
    lock = Lock(etcd, a.key, a.ttl, f"{socket.gethostname()} pid {os.getpid()}")
    try:
        try:
            taken = lock.take()
        except (Unreachable, KeyError, ValueError, TypeError) as exc:
            sys.stderr.write(f"etcdlock: cannot take {a.key}: {exc}\n")
            os.write(1, b"3")
            return 0
        os.write(1, b"0" if taken else b"1")
        if not taken:
            return 0
        why = hold(lock, ppid)
        sys.stderr.write(f"etcdlock: lock {a.key} lost - {why}\n")
        if why != "parent gone":
            # exit at once: the agent must see the lock lost before etcd can expire
            # the lease, and etcd does not answer, or the lease is gone already
            lock.lease = None
    finally:
        lock.revoke()  # SIGTERM (released), parent gone: the key is free at once
    return 0


if __name__ == "__main__":
    sys.exit(main())
