#!/usr/bin/env python3
"""Probe public addresses over TCP until each is answered by a node other than the victim.

Run on the Ansible controller by playbooks/failover_test.yml, started (asynchronously)
before a fault is injected into the victim node:

    failover_probe.py --port 4380 --victim node1 --timeout 60 --ready-file F ADDR...

One thread per address connects to ADDR:PORT every --interval seconds (connect timeout
--connect-timeout). Modes:

* listener (default): every node runs a listener on PORT that answers each connection
  with its name (the playbook passes the inventory name). First, every address must be
  answered by the victim (it hosts them): then --ready-file is written and the playbook
  injects the fault. An address counts as moved when a node other than the victim
  answers it; its time is the wall-clock time (time.time()) when that answer was read.
* --any-answer (no listener; PORT is a service every node runs, such as smbd on 445):
  nodes cannot be told apart, and the service may send nothing on its own. An answer is
  an accepted connection. Every address must answer once (then ready), and the prober
  keeps that first connection open, as a client of the service would (TCP keepalives
  every second). The address counts as moved when it answers a new connection after an
  outage: a failed attempt, or the kept connection ended or reset (the victim's service
  died, or the node that took the address reset it: the client must reconnect, as an SMB
  client does). A move can be too quick for any attempt to fail, but not for the kept
  connection, which the victim's host held. An address with neither until --timeout is
  reported with "no_outage": no move the prober could see.

Ends when every address has moved, or at --timeout seconds after ready. Prints one JSON
object on stdout: {"ready_at", "addresses": {ADDR: {"before", "moved_at", "by",
"attempts", "no_outage"}}, "last_moved_at", "timed_out": [ADDR...], "error"}. Exit
status 0 unless the probe could not start (an address not answered by the victim
before the fault: "error" says which, also written to --ready-file), which is 2. Standard library only.
"""

import argparse
import json
import os
import socket
import sys
import threading
import time


def ask(addr, port, connect_timeout, read_timeout):
    """The peer's answer (its name, '' when it sent nothing), or None when unreachable."""
    try:
        s = socket.create_connection((addr, port), timeout=connect_timeout)
    except OSError:
        return None
    try:
        s.settimeout(read_timeout)
        data = b""
        while len(data) < 256:
            chunk = s.recv(256)
            if not chunk:
                break
            data += chunk
            if b"\n" in data:
                break
        return data.decode(errors="replace").strip()
    except OSError:
        return ""
    finally:
        s.close()


def connects(addr, port, connect_timeout):
    """Whether a new connection to ADDR:PORT is accepted (--any-answer's answer)."""
    try:
        socket.create_connection((addr, port), timeout=connect_timeout).close()
        return True
    except OSError:
        return False


def hold(addr, port, connect_timeout):
    """A connection kept open (None if refused), with keepalives every second so that a
    node that has no such connection resets it even when nothing else is sent."""
    try:
        s = socket.create_connection((addr, port), timeout=connect_timeout)
    except OSError:
        return None
    s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, val in (("TCP_KEEPIDLE", 1), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, opt):
            s.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), val)
    s.setblocking(False)
    return s


def ended(s):
    """Whether the kept connection ``s`` was closed or reset by the other end."""
    try:
        return s.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def write_ready(path, text):
    """Tell the playbook (waiting for PATH) that the fault may come, or why not."""
    if path:
        with open(path + ".tmp", "w") as f:
            f.write(text + "\n")
        os.replace(path + ".tmp", path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--victim", required=True, help="name the victim's listener answers with")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds after ready before giving up on the addresses not moved")
    p.add_argument("--start-timeout", type=float, default=30.0,
                   help="seconds to wait for every address to answer before the fault")
    p.add_argument("--interval", type=float, default=0.005, help="seconds between attempts")
    p.add_argument("--connect-timeout", type=float, default=0.1)
    p.add_argument("--read-timeout", type=float, default=0.5)
    p.add_argument("--ready-file", help="written once every address answered as expected")
    p.add_argument("--any-answer", action="store_true",
                   help="no listener: any answer counts, after an outage")
    p.add_argument("addresses", nargs="+")
    a = p.parse_args(argv)

    state = {addr: {"before": None, "moved_at": None, "by": None, "attempts": 0,
                    "no_outage": False} for addr in a.addresses}
    lock = threading.Lock()
    ready = threading.Event()
    stop = threading.Event()
    errors = []

    def probe(addr):
        st = state[addr]
        outage = False
        kept = None
        # Phase 1: the address answers as it should before the fault.
        t_end = time.monotonic() + a.start_timeout
        while not stop.is_set():
            if a.any_answer:
                kept = hold(addr, a.port, max(a.connect_timeout, 0.5))
                ans = None if kept is None else ""
            else:
                ans = ask(addr, a.port, max(a.connect_timeout, 0.5), a.read_timeout)
            if ans is not None and (a.any_answer or ans == a.victim):
                st["before"] = ans
                break
            if time.monotonic() > t_end:
                with lock:
                    errors.append("%s:%d is %s before the fault, not by the victim %s" % (
                        addr, a.port, "not answered" if ans is None
                        else "answered by %r" % ans, a.victim))
                stop.set()
                return
            time.sleep(0.05)
        ready.wait()
        # Phase 2: until another node answers (or, without listener, until it answers
        # again after an outage).
        while not stop.is_set():
            if a.any_answer:
                if kept is not None and ended(kept):
                    kept.close()
                    kept, outage = None, True
                ans = "" if connects(addr, a.port, a.connect_timeout) else None
            else:
                ans = ask(addr, a.port, a.connect_timeout, a.read_timeout)
            now = time.time()
            st["attempts"] += 1
            if ans is None:
                outage = True
            elif a.any_answer:
                if outage:
                    st["moved_at"], st["by"] = now, ans
                    if kept is not None:
                        kept.close()
                    return
            elif ans and ans != a.victim:
                st["moved_at"], st["by"] = now, ans
                return
            time.sleep(a.interval)

    threads = [threading.Thread(target=probe, args=(addr,), daemon=True)
               for addr in a.addresses]
    for t in threads:
        t.start()
    # Ready once phase 1 is over for every address.
    while not stop.is_set() and not all(st["before"] is not None for st in state.values()):
        time.sleep(0.01)
    result = {"victim": a.victim, "port": a.port, "mode": "any-answer" if a.any_answer
              else "listener", "ready_at": None, "addresses": state, "last_moved_at": None,
              "timed_out": [], "error": None}
    if errors:
        result["error"] = "; ".join(errors)
        write_ready(a.ready_file, "error: " + result["error"])
        print(json.dumps(result))
        return 2
    result["ready_at"] = time.time()
    write_ready(a.ready_file, "ready %.6f" % result["ready_at"])
    ready.set()
    deadline = time.monotonic() + a.timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stop.set()
    for t in threads:
        t.join(a.connect_timeout + a.read_timeout + 1)
    for addr, st in state.items():
        if st["moved_at"] is None:
            result["timed_out"].append(addr)
            st["no_outage"] = a.any_answer
    moved = [st["moved_at"] for st in state.values() if st["moved_at"] is not None]
    result["last_moved_at"] = max(moved) if moved else None
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
