"""pyctdb.ipalloc must allocate public addresses exactly as CTDB does.

Most of these tests replay CTDB's own unit tests (ctdb/tests/UNIT/takeover/*.sh and
ctdb/tests/UNIT/takeover_helper/*.sh), ported as data files in ipalloc_cases/ - each
file names the CTDB script and commit it comes from. The expected output (log lines at
the case's log level, then ``IP PNN`` lines) is CTDB's, byte for byte.
"""

import io
import os
import random
import subprocess
import sys
import time

import pytest

from pyctdb.rules import ipalloc as I
from pyctdb.rules.ipalloc import PublicIP

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = os.path.join(HERE, "ipalloc_cases")
AGENT = os.path.join(HERE, "..")


# -- the case files --------------------------------------------------------------------
def load_case(path):
    """Parse a .case file: a [case] header, optional [home_nodes], then steps, each with
    key = value lines, an [input] and an [expected] section."""
    case = {"steps": []}
    section = None
    step = None
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if section in (None, "case", "step") and (not line.strip() or line.startswith("#")):
                continue
            if line.startswith("[") and line.endswith("]"):
                name = line[1:-1]
                if name == "case":
                    section = "case"
                elif name == "home_nodes":
                    section = "home_nodes"
                    case["home_nodes"] = []
                elif name.startswith("step"):
                    section = "step"
                    step = {"title": name, "input": [], "expected": []}
                    case["steps"].append(step)
                elif name in ("input", "expected"):
                    section = name
                else:
                    raise ValueError("%s: unknown section %s" % (path, line))
                continue
            if section == "case":
                k, v = (x.strip() for x in line.split("=", 1))
                case[k] = v
            elif section == "step":
                k, v = (x.strip() for x in line.split("=", 1))
                step[k] = v
            elif section == "home_nodes":
                case["home_nodes"].append(line)
            else:
                step[section].append(line)
    return case


def _ints(text):
    return [int(x, 0) for x in text.split(",")]


def run_step(case, step, previous_output):
    text = "\n".join(step["input"]) + "\n"
    if step["input"] == ["@previous"]:
        text = previous_output
    multi = step.get("multi") == "yes"
    ips = I.parse_multi(text) if multi else I.parse_input(text)
    level = case["loglevel"]
    level = I.LOG_LEVELS[level] if level in I.LOG_LEVELS else int(level)
    logs = []
    home = None
    if "home_nodes" in case:
        home = I.parse_home_nodes("\n".join(case["home_nodes"]) + "\n")
    result = I.allocate(
        ips, _ints(step["flags"]),
        algorithm=case["algorithm"],
        no_ip_takeover=case.get("no_ip_takeover") == "yes",
        no_ip_failback=case.get("no_ip_failback") == "yes",
        runstates=_ints(case["runstates"]) if "runstates" in case else None,
        home_nodes=home,
        force_rebalance_nodes=(_ints(case["force_rebalance_nodes"])
                               if "force_rebalance_nodes" in case else None),
        log=lambda lvl, msg: logs.append(msg), log_level=level)
    formatted = I.format_result(result)
    return "".join(m + "\n" for m in logs) + formatted, formatted


CASE_FILES = sorted(f for f in os.listdir(CASES) if f.endswith(".case"))


def test_enough_cases_ported():
    assert len(CASE_FILES) >= 50
    for alg in ("lcp2.", "det.", "nondet.", "helper."):
        assert any(f.startswith(alg) for f in CASE_FILES), alg


@pytest.mark.parametrize("name", CASE_FILES)
def test_ctdb_case(name):
    case = load_case(os.path.join(CASES, name))
    assert case["steps"], name
    previous = None
    for step in case["steps"]:
        got, previous = run_step(case, step, previous)
        want = "".join(x + "\n" for x in step["expected"])
        assert got == want, "%s %s" % (name, step["title"])


# -- the algorithm's building blocks ---------------------------------------------------
def test_ip_distance_matches_ctdb_definition():
    # IPv4 addresses are ::a.b.c.d: 96 common bits plus the common prefix.
    assert I.ip_distance("192.168.20.249", "192.168.20.250") == 96 + 30
    assert I.ip_distance("10.0.0.1", "10.0.0.1") == 128
    assert I.ip_distance("10.0.0.1", "138.0.0.1") == 96
    # Every 32-bit word counts on its own: CTDB does not stop at the first difference.
    assert I.ip_distance("8000::1", "::1") == 0 + 32 + 32 + 32
    assert I.ip_distance("fd00::1", "fd00::1:0:0:1") == 32 + 32 + 15 + 32
    assert I.ip_distance("::1", "1.2.3.4") == 96 + 7


def test_list_order_is_descending_key_ipv6_first():
    out = I.format_result({"10.0.0.2": 0, "fd00::1": 1, "10.0.0.10": 2, "2001:db8::1": 0})
    assert out == "fd00::1 1\n2001:db8::1 0\n10.0.0.10 2\n10.0.0.2 0\n"


@pytest.mark.parametrize("text,want", [
    ("FD00:0:0:0:0:0:0:1", "fd00::1"),
    ("fd00:0:0:1:0:0:0:1", "fd00:0:0:1::1"),            # longest zero run
    ("fd00:0:0:1:0:0:1:1", "fd00::1:0:0:1:1"),          # first of equal runs
    ("fd00:1:0:1:2:3:4:5", "fd00:1:0:1:2:3:4:5"),      # a single 0 word stays
    ("::", "::"),
    ("::1", "::1"),
    ("::1.2.3.4", "::1.2.3.4"),                        # glibc inet_ntop() quirk
    ("::ffff:0:1.2.3.4", "::ffff:0:102:304"),
    ("::ffff:10.1.2.3", "10.1.2.3"),                   # IPv4-mapped: IPv4 to CTDB
])
def test_addresses_are_printed_as_ctdb_prints_them(text, want):
    assert I.format_address(text) == want


@pytest.mark.parametrize("bad", ["", "10.0.0", "10.0.0.256", "fe80::1%eth0", "10.0.0.1/24",
                                 "010.0.0.1", "::ffff:a01:203", "host.example"])
def test_bad_addresses(bad):
    with pytest.raises(ValueError):
        I.format_address(bad)


def test_ipv4_and_its_ipv6_alias_are_refused():
    with pytest.raises(ValueError, match="same address"):
        I.allocate([PublicIP("1.2.3.4"), PublicIP("::1.2.3.4")], [0])


def test_runstate_constant():
    assert I.RUNSTATE_RUNNING == 5 and I.RUNSTATES["RUNNING"] == 5


# -- the tunables and node states ------------------------------------------------------
IPS9 = ["192.168.20.%d" % n for n in range(249, 255)] + ["192.168.21.%d" % n
                                                          for n in range(252, 255)]


def _ips(pnn):
    return [PublicIP(a, pnn) for a in IPS9]


@pytest.mark.parametrize("algorithm", ["lcp2", "nondet"])
def test_no_ip_failback_keeps_addresses_where_they_are(algorithm):
    flags = [0, 0, 0]
    moved = I.allocate(_ips(1), flags, algorithm=algorithm)
    assert set(moved.values()) == {0, 1, 2}
    kept = I.allocate(_ips(1), flags, algorithm=algorithm, no_ip_failback=True)
    assert set(kept.values()) == {1}
    # ... but unassigned addresses are still placed.
    fresh = I.allocate(_ips(-1), flags, algorithm=algorithm, no_ip_failback=True)
    assert set(fresh.values()) == {0, 1, 2}


def test_no_ip_failback_is_ignored_by_deterministic_with_a_warning():
    logs = []
    a = I.allocate(_ips(1), [0, 0, 0], algorithm="det", no_ip_failback=True,
                   log=lambda l, m: logs.append((l, m)), log_level=I.WARNING)
    assert a == I.allocate(_ips(1), [0, 0, 0], algorithm="det")
    assert logs == [(I.WARNING, "WARNING: 'NoIPFailback' set but ignored - "
                                "incompatible with 'Deterministic IPs")]


@pytest.mark.parametrize("algorithm", ["lcp2", "nondet", "det"])
def test_no_ip_takeover(algorithm):
    # Addresses stay on healthy nodes; those of the unhealthy node become unassigned.
    ips = [PublicIP(a, i % 3) for i, a in enumerate(IPS9)]
    got = I.allocate(ips, [0, 2, 0], algorithm=algorithm, no_ip_takeover=True)
    for ip in ips:
        if algorithm == "det":
            continue
        assert got[ip.address] == (-1 if ip.pnn == 1 else ip.pnn)
    assert 1 not in got.values()
    if algorithm == "det":
        assert -1 in got.values()


@pytest.mark.parametrize("flag", [0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40])
@pytest.mark.parametrize("algorithm", ["lcp2", "nondet", "det"])
def test_inactive_or_disabled_nodes_never_host(flag, algorithm):
    got = I.allocate(_ips(1), [0, flag, 0], algorithm=algorithm)
    assert 1 not in got.values() and -1 not in got.values()


def test_all_nodes_disabled_hosts_nothing():
    got = I.allocate(_ips(0), [2, 4, 2])
    assert set(got.values()) == {-1}


@pytest.mark.parametrize("state", [0, 1, 2, 3, 4, 6])
def test_only_running_nodes_host(state):
    got = I.allocate(_ips(-1), [0, 0, 0], runstates=[5, state, 5])
    assert 1 not in got.values() and -1 not in got.values()


def test_flags_outside_inactive_and_disabled_do_not_matter():
    # e.g. CTDB's old NODE_FLAGS_NOIPTAKEOVER bit 0x01000000
    assert I.allocate(_ips(-1), [0, 0x01000000, 0]) == I.allocate(_ips(-1), [0, 0, 0])


def test_address_configured_nowhere_is_left_out():
    ips = [PublicIP("10.0.0.1", -1, frozenset([0])), PublicIP("10.0.0.2", -1, frozenset())]
    assert I.allocate(ips, [0, 0]) == {"10.0.0.1": 0}


def test_claims_only_count_from_the_node_itself():
    # 10.0.0.1 "is on node 1" but node 1 does not have it configured: unassigned, so
    # LCP2 places it on the emptiest suitable node.
    ips = [PublicIP("10.0.0.1", 1, frozenset([0, 2])), PublicIP("10.0.0.2", 2)]
    assert I.allocate(ips, [0, 0, 0], no_ip_failback=True) == {"10.0.0.2": 2,
                                                               "10.0.0.1": 0}


def test_home_nodes():
    home = {"192.168.21.254": 2, "192.168.20.251": 1, "192.168.20.250": 7}
    logs = []
    got = I.allocate(_ips(-1), [0, 0, 0], algorithm="det", home_nodes=home,
                     log=lambda l, m: logs.append(m), log_level=I.WARNING)
    assert got["192.168.21.254"] == 2 and got["192.168.20.251"] == 1
    assert got["192.168.21.253"] == 1          # index 1 modulo 3
    assert got["192.168.20.250"] == 7 % 3     # list index 7; home node 7 does not exist
    assert logs == ["ipalloc_deterministic: pnn 7 too large"]
    # Home nodes only matter to the deterministic algorithm.
    assert I.allocate(_ips(-1), [0, 0, 0], home_nodes=home) == I.allocate(_ips(-1),
                                                                          [0, 0, 0])


def test_force_rebalance_unknown_node_is_logged():
    logs = []
    I.allocate(_ips(1), [0, 0, 0], force_rebalance_nodes=[9],
               log=lambda l, m: logs.append((l, m)), log_level=I.ERR)
    assert logs == [(I.ERR, "ipalloc_lcp2.c: unknown node 9")]


def test_can_host_ips():
    assert not I.can_host_ips([], [0, 0])
    assert I.can_host_ips(_ips(-1), [0, 0])
    assert not I.can_host_ips(_ips(-1), [2, 2])
    assert I.can_host_ips(_ips(1), [2, 2])          # still hosted somewhere
    assert not I.can_host_ips(_ips(-1), [0, 0], runstates=[4, 4])


def test_bad_arguments():
    with pytest.raises(ValueError):
        I.allocate(_ips(-1), [])
    with pytest.raises(ValueError):
        I.allocate(_ips(-1), [0, 0], runstates=[5])
    with pytest.raises(ValueError):
        I.allocate(_ips(-1), [0, 0], algorithm="round-robin")
    with pytest.raises(ValueError, match="only 2 nodes"):
        I.allocate([PublicIP("10.0.0.1", -1, frozenset([5]))], [0, 0])
    with pytest.raises(ValueError):
        PublicIP("10.0.0.1", -1, frozenset([-1]))
    assert I.allocate(_ips(-1), [0, 0], algorithm=2) == I.allocate(_ips(-1), [0, 0])
    assert I.allocate(_ips(-1), [0, 0], algorithm="0") == I.allocate(
        _ips(-1), [0, 0], algorithm="det")


# -- IPv6 ------------------------------------------------------------------------------
def test_ipv6_and_mixed_lists():
    v6 = [PublicIP("fd00::5357:5f%02x" % n) for n in range(1, 9)]
    v4 = [PublicIP("10.0.0.%d" % n) for n in range(31, 39)]
    for ips in (v6, v6 + v4):
        for alg in ("lcp2", "nondet", "det"):
            got = I.allocate(ips, [0, 0, 0], algorithm=alg)
            assert list(got) == sorted(got, key=I.ip_key, reverse=True)
            counts = [list(got.values()).count(n) for n in range(3)]
            assert max(counts) - min(counts) <= 1, (alg, counts)
    # LCP2 keeps each node's addresses "far apart": the v4 and v6 halves are spread.
    got = I.allocate(v6 + v4, [0, 0])
    assert sorted(p for a, p in got.items() if ":" in a) == [0, 0, 0, 0, 1, 1, 1, 1]


# -- the fast paths agree with the literal (DEBUG-traced) loops ------------------------
def _random_case(rng, n_nodes, n_ips, v6=False):
    ips = []
    for k in range(n_ips):
        if v6 and rng.random() < 0.5:
            addr = "fd%02x:%x::%x:%x" % (rng.randrange(256), rng.randrange(65536),
                                         rng.randrange(65536), k)
        else:
            addr = "10.%d.%d.%d" % (rng.randrange(4), rng.randrange(256), k % 250 + 1)
        pnn = rng.choice([-1] + list(range(n_nodes)))
        allowed = None
        if rng.random() < 0.3:
            allowed = frozenset(n for n in range(n_nodes) if rng.random() < 0.6)
        ips.append(PublicIP(addr, pnn, allowed))
    uniq = {}
    for ip in ips:
        uniq.setdefault(ip.address, ip)
    flags = [rng.choice([0, 0, 0, 0, 2, 0x20]) for _ in range(n_nodes)]
    return list(uniq.values()), flags


@pytest.mark.parametrize("seed", range(40))
def test_fast_paths_match_literal_loops(seed):
    rng = random.Random(seed)
    ips, flags = _random_case(rng, rng.randrange(1, 6), rng.randrange(1, 40), v6=seed % 2)
    kw = dict(no_ip_takeover=rng.random() < 0.1,
              force_rebalance_nodes=[rng.randrange(len(flags))] if rng.random() < 0.3
              else None)
    fast = I.allocate(ips, flags, **kw)
    slow = I.allocate(ips, flags, log=lambda l, m: None, log_level=I.DEBUG, **kw)
    assert fast == slow


def test_uint32_wraparound_is_modelled():
    # 1000 addresses piled on one node: CTDB's uint32 imbalance wraps (> 2^32); the
    # fast path and the literal loop must still agree.
    ips = [PublicIP("10.%d.%d.1" % (k // 250, k % 250), 0) for k in range(1000)]
    fast = I.allocate(ips, [0, 0, 0])
    slow = I.allocate(ips, [0, 0, 0], log=lambda l, m: None, log_level=I.DEBUG)
    assert fast == slow


# -- cross-check against the real CTDB, when it is installed --------------------------
# Debian's ctdb package links CTDB's ipalloc.c into ctdb_takeover_helper and exports
# ipalloc_state_init(), ipalloc_set_public_ips() and ipalloc(). A copy with the PIE flag
# cleared can be loaded with ctypes, which lets us compare on random inputs.
CTDB_HELPER = "/usr/libexec/ctdb/ctdb_takeover_helper"


class RealCtdb:
    AF_INET, AF_INET6 = 2, 10

    def __init__(self, workdir):
        import ctypes
        import shutil
        import struct
        self.ct, self.struct = ctypes, struct
        path = os.path.join(workdir, "ctdb_takeover_helper.so")
        shutil.copy(CTDB_HELPER, path)
        with open(path, "r+b") as f:
            data = bytearray(f.read())
            phoff = struct.unpack_from("<Q", data, 0x20)[0]
            phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
            for k in range(phnum):
                off = phoff + k * phentsize
                if struct.unpack_from("<I", data, off)[0] != 2:      # PT_DYNAMIC
                    continue
                start, size = struct.unpack_from("<Q", data, off + 8)[0], \
                    struct.unpack_from("<Q", data, off + 32)[0]
                for j in range(start, start + size, 16):
                    tag, val = struct.unpack_from("<qQ", data, j)
                    if tag == 0x6ffffffb:                                # DT_FLAGS_1
                        struct.pack_into("<qQ", data, j, tag, val & ~0x08000000)  # PIE
            f.seek(0)
            f.write(data)

        class PubIP(ctypes.Structure):
            _fields_ = [("pnn", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 28)]

        class PubIPList(ctypes.Structure):
            _fields_ = [("num", ctypes.c_uint32), ("ip", ctypes.POINTER(PubIP))]

        class IPList(ctypes.Structure):
            pass
        IPList._fields_ = [("next", ctypes.POINTER(IPList)), ("pnn", ctypes.c_uint32),
                           ("addr", ctypes.c_uint8 * 28), ("known_on", ctypes.c_void_p),
                           ("available_on", ctypes.c_void_p)]
        self.PubIP, self.PubIPList = PubIP, PubIPList
        lib = self.lib = ctypes.CDLL(path)
        lib.ipalloc_state_init.restype = ctypes.c_void_p
        lib.ipalloc_state_init.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_bool, ctypes.c_bool, ctypes.c_void_p]
        lib.ipalloc_set_public_ips.argtypes = [ctypes.c_void_p, ctypes.POINTER(PubIPList),
                                               ctypes.POINTER(PubIPList)]
        lib.ipalloc.restype = ctypes.POINTER(IPList)
        lib.ipalloc.argtypes = [ctypes.c_void_p]
        t = self.talloc = ctypes.CDLL("libtalloc.so.2")
        t.talloc_named_const.restype = ctypes.c_void_p
        t.talloc_named_const.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        t._talloc_free.argtypes = [ctypes.c_void_p, ctypes.c_char_p]

    def _addr(self, text):
        import ipaddress
        a = ipaddress.ip_address(text)
        b = bytearray(28)
        if a.version == 4:
            self.struct.pack_into("<H", b, 0, self.AF_INET)
            b[4:8] = a.packed
        else:
            self.struct.pack_into("<H", b, 0, self.AF_INET6)
            b[8:24] = a.packed
        return (self.ct.c_uint8 * 28)(*b)

    @staticmethod
    def _text(raw):
        import ipaddress
        b = bytes(raw)
        if b[0] == RealCtdb.AF_INET:
            return str(ipaddress.IPv4Address(b[4:8]))
        return I.format_address(str(ipaddress.IPv6Address(b[8:24])))

    def ipalloc(self, known, avail, algorithm, no_ip_takeover, no_ip_failback):
        """known/avail: per node, [(address, pnn)], as ctdb_takeover_tests builds them."""
        ct = self.ct
        keep = []

        def lists(per_node):
            arr = (self.PubIPList * len(per_node))()
            for n, entries in enumerate(per_node):
                ips = (self.PubIP * max(1, len(entries)))()
                for j, (a, p) in enumerate(entries):
                    ips[j].pnn = p & 0xFFFFFFFF
                    ips[j].addr = self._addr(a)
                keep.append(ips)
                arr[n].num = len(entries)
                arr[n].ip = ct.cast(ips, ct.POINTER(self.PubIP))
            return arr

        ctx = self.talloc.talloc_named_const(None, 0, b"test_ipalloc")
        try:
            st = self.lib.ipalloc_state_init(ctx, len(known), I.ALGORITHMS.index(algorithm),
                                             no_ip_takeover, no_ip_failback, None)
            k, a = lists(known), lists(avail)
            self.lib.ipalloc_set_public_ips(st, k, a)
            out = []
            node = self.lib.ipalloc(st)
            while node:
                r = node.contents
                out.append((self._text(r.addr), r.pnn - (1 << 32) if r.pnn >> 31 else r.pnn))
                node = r.next
            return out
        finally:
            self.talloc._talloc_free(ctx, b"test_ipalloc")


@pytest.fixture(scope="module")
def real_ctdb(tmp_path_factory):
    if not os.path.exists(CTDB_HELPER):
        pytest.skip("CTDB (Debian package ctdb) is not installed")
    try:
        return RealCtdb(str(tmp_path_factory.mktemp("ctdb")))
    except (OSError, AttributeError) as e:
        pytest.skip("cannot load CTDB's ipalloc from %s: %s" % (CTDB_HELPER, e))


@pytest.mark.parametrize("chunk", range(6))
def test_random_inputs_match_real_ctdb(real_ctdb, chunk):
    cannot_host = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20
    for seed in range(chunk * 50, chunk * 50 + 50):
        rng = random.Random(seed)
        num = rng.randrange(1, 8)
        ips, _ = _random_case(rng, num, rng.randrange(0, 80), v6=seed % 3 == 0)
        flags = [rng.choice([0, 0, 0, 0x1, 0x2, 0x4, 0x8, 0x10, 0x20]) for _ in range(num)]
        runstates = [rng.choice([5, 5, 5, 5, 4, 1]) for _ in range(num)]
        algorithm = rng.choice(I.ALGORITHMS)
        nit, nfb = rng.random() < 0.15, rng.random() < 0.2
        known = [[(ip.address, ip.pnn) for ip in ips
                  if ip.available_on is None or n in ip.available_on] for n in range(num)]
        avail = [known[n] if runstates[n] == 5 and not flags[n] & cannot_host else []
                 for n in range(num)]
        want = real_ctdb.ipalloc(known, avail, algorithm, nit, nfb)
        got = I.allocate(ips, flags, algorithm=algorithm, runstates=runstates,
                         no_ip_takeover=nit, no_ip_failback=nfb)
        assert list(got.items()) == want, seed


# -- parsing ---------------------------------------------------------------------------
def test_parse_input():
    ips = I.parse_input("# comment\n10.0.0.1\n10.0.0.2 1\n10.0.0.3\t-1\t0,2  # c\n\n")
    assert ips == [PublicIP("10.0.0.1", -1), PublicIP("10.0.0.2", 1),
                   PublicIP("10.0.0.3", -1, frozenset([0, 2]))]


@pytest.mark.parametrize("text,line", [
    ("10.0.0.1 0\nbogus 1\n", 2),
    ("10.0.0.1 x\n", 1),
    ("10.0.0.1 -2\n", 1),
    ("10.0.0.1 0 0,a\n", 1),
    ("10.0.0.1 0 0 extra\n", 1),
    ("10.0.0.1 0\n\n10.0.0.2 1\n", 3),
])
def test_parse_input_errors_name_the_line(text, line):
    with pytest.raises(ValueError, match="^line %d: " % line):
        I.parse_input(text)


def test_parse_multi():
    text = ("10.0.0.1 0\n10.0.0.2 1\n\n"       # node 0: thinks .2 is on node 1
            "10.0.0.2 0\n\n"                   # node 1: does not claim .2
            "\n")                              # trailing blank lines: fine
    ips = {ip.address: ip for ip in I.parse_multi(text)}
    assert ips["10.0.0.1"] == PublicIP("10.0.0.1", 0, frozenset([0]))
    assert ips["10.0.0.2"] == PublicIP("10.0.0.2", -1, frozenset([0, 1]))
    # consecutive blank lines: an empty block for node 1
    ips = {ip.address: ip for ip in I.parse_multi("10.0.0.1 0\n\n\n10.0.0.1 2\n")}
    assert ips["10.0.0.1"] == PublicIP("10.0.0.1", 2, frozenset([0, 2]))
    with pytest.raises(ValueError, match="^line 1: "):
        I.parse_multi("10.0.0.1 0 0,1\n")


def test_parse_home_nodes():
    assert I.parse_home_nodes("10.0.0.1 2\n\nlonely\n10.0.0.2 0 extra\n") == [
        ("10.0.0.1", 2), ("10.0.0.2", 0)]
    with pytest.raises(ValueError, match="^line 2: "):
        I.parse_home_nodes("10.0.0.1 2\n10.0.0.2 -1\n")


# -- the CLI ---------------------------------------------------------------------------
def cli(*args, stdin=""):
    env = dict(os.environ, PYTHONPATH=AGENT)
    return subprocess.run([sys.executable, "-m", "pyctdb.tools.ipalloc", *args],
                          input=stdin, capture_output=True, text=True, env=env, timeout=60)


def test_cli_runs_a_ctdb_case():
    case = load_case(os.path.join(CASES, "lcp2.010.case"))
    step = case["steps"][0]
    r = cli("--algorithm", "lcp2", "--node-flags", step["flags"],
            stdin="\n".join(step["input"]) + "\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "".join(x + "\n" for x in step["expected"])


def test_cli_options(tmp_path):
    home = tmp_path / "home_nodes"
    home.write_text("192.168.21.254 2\n192.168.20.251 1\n")
    case = load_case(os.path.join(CASES, "det.005.case"))
    step = case["steps"][0]
    r = cli("--algorithm", "det", "--node-flags", "0x0,0x2,0", "--home-nodes", str(home),
            stdin="\n".join(step["input"]) + "\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "".join(x + "\n" for x in step["expected"][5:])
    r = cli("--node-flags", "0,0,0", "--runstates", "STARTUP,5,RUNNING",
            "--log-level", "INFO", stdin="10.0.0.1\n10.0.0.2\n")
    assert r.returncode == 0 and r.stdout == "10.0.0.2 1\n10.0.0.1 2\n"
    assert " 10.0.0.2 -> 1 [+0]" in r.stderr
    r = cli("--node-flags", "0,0", "--multi", "--no-ip-failback",
            stdin="10.0.0.1 0\n10.0.0.2 0\n\n10.0.0.1 0\n10.0.0.2 0\n")
    assert r.returncode == 0 and r.stdout == "10.0.0.2 0\n10.0.0.1 0\n"
    r = cli("--node-flags", "0,0", "--no-ip-takeover", stdin="10.0.0.1 1\n10.0.0.2\n")
    assert r.returncode == 0 and r.stdout == "10.0.0.2 -1\n10.0.0.1 1\n"


@pytest.mark.parametrize("args,stdin,needle", [
    (["--node-flags", "0,0"], "10.0.0.1 0\nnot-an-ip 1\n", "line 2"),
    (["--node-flags", "0,zero"], "10.0.0.1\n", "node flags"),
    ([], "10.0.0.1\n", "--node-flags"),
    (["--node-flags", "0,0", "--algorithm", "magic"], "10.0.0.1\n", "algorithm"),
    (["--node-flags", "0,0", "--runstates", "5"], "10.0.0.1\n", "runstates"),
    (["--node-flags", "0,0"], "10.0.0.1 0 0,7\n", "node 7"),
    (["--node-flags", "0,0", "--home-nodes", "/nonexistent/home_nodes"], "10.0.0.1\n",
     "home_nodes"),
    (["--node-flags", "0,0", "--multi"], "10.0.0.1 0\n\n10.0.0.1 0\n\n10.0.0.1 0\n",
     "3 blocks"),
    (["--node-flags", "0,0", "--bogus"], "10.0.0.1\n", "--bogus"),
])
def test_cli_bad_input(args, stdin, needle):
    r = cli(*args, stdin=stdin)
    assert r.returncode == 2
    assert r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert needle in r.stderr


def test_cli_main_in_process(capsys):
    from pyctdb.tools import ipalloc as ipalloc_cli
    out, err = io.StringIO(), io.StringIO()
    rc = ipalloc_cli.main(["--node-flags", "0,0"], stdin=io.StringIO("10.0.0.1\n10.0.0.2\n"),
                          stdout=out, stderr=err)
    assert (rc, out.getvalue(), err.getvalue()) == (0, "10.0.0.2 0\n10.0.0.1 1\n", "")
    assert ipalloc_cli.main(["--help"]) == 0
    assert "--node-flags" in capsys.readouterr().out
    err = io.StringIO()
    assert ipalloc_cli.main(["--node-flags", "0", "--runstates", "x"], stderr=err) == 2
    assert err.getvalue().startswith("pyctdb ipalloc: error: ")


# -- speed -----------------------------------------------------------------------------
def test_900_addresses_on_5_nodes_is_quick():
    fresh = [PublicIP("192.168.%d.%d" % (a, b)) for a in range(1, 11) for b in range(1, 91)]
    t = time.perf_counter()
    placed = I.allocate(fresh, [0] * 5)
    assert time.perf_counter() - t < 5.0
    piled = [PublicIP(a, 0) for a in placed]           # all on node 0, 4 nodes return
    t = time.perf_counter()
    I.allocate(piled, [0] * 5)
    I.allocate(piled, [0] * 5, algorithm="nondet")
    assert time.perf_counter() - t < 10.0


def test_pyctdb_cli_ipalloc_subcommand():
    import subprocess, sys, os
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(__file__), ".."))
    r = subprocess.run([sys.executable, "-m", "pyctdb.tools.cli", "ipalloc", "--algorithm", "lcp2",
                        "--node-flags", "0,0,0x20"], input="10.0.0.1 -1\n10.0.0.2 -1\n10.0.0.3 -1\n",
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["10.0.0.3 0", "10.0.0.2 1", "10.0.0.1 0"]
