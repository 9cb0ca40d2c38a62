"""CTDB's public IP address allocation, as a pure function.

This is a re-expression in Python of CTDB's ``ctdb/server/ipalloc*.c`` (Samba 4.17 and
later), written so that, for the same input, it assigns every public address to the same
node as CTDB does. A cluster moved from CTDB to pyctdb therefore keeps its address layout.

The input is what CTDB's takeover run collects from the nodes:

* for every public address, the node that currently hosts it (``-1``: nobody) and the
  nodes on which it is configured (``PublicIP``);
* every node's flags (CTDB's numeric values, see :mod:`pyctdb.flags`) and runstate.

:func:`allocate` returns ``{address: pnn}`` in CTDB's list order (descending address).
Nothing here does I/O; :func:`parse_input`, :func:`parse_multi`,
:func:`parse_home_nodes` and :func:`format_result` handle the text formats used by CTDB's
``ctdb_takeover_tests`` and by ``pyctdb ipalloc``.

Faithfulness notes (all deliberate, all from CTDB's C):

* The merged address list is sorted by a 128-bit key (IPv4 ``a.b.c.d`` is
  ``::a.b.c.d``) and walked in descending order; "first" always means that order.
* The LCP2 distance between two addresses adds, for each of the four 32-bit words of the
  key, 32 if the words are equal and the number of leading zero bits of their XOR
  otherwise (it does *not* stop at the first differing word).
* Imbalance arithmetic is unsigned 32-bit and wraps exactly as in C.
* Ties are broken by CTDB's iteration order (addresses in list order, then nodes in PNN
  order; the node sort in LCP2 failback is stable).
"""

from __future__ import annotations

import bisect
import heapq
import ipaddress
import itertools
import operator
from dataclasses import dataclass
from functools import reduce
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from pyctdb.rules import nodeflags

__all__ = [
    "PublicIP", "allocate", "can_host_ips", "parse_input", "parse_multi",
    "parse_home_nodes", "format_result", "format_address", "ip_key", "ip_distance",
    "ALGORITHMS", "RUNSTATE_RUNNING", "RUNSTATES", "LOG_LEVELS",
    "ERR", "WARNING", "NOTICE", "INFO", "DEBUG",
]

# enum ctdb_runstate (ctdb/protocol/protocol.h). Only RUNNING nodes offer addresses.
RUNSTATE_UNKNOWN = 0
RUNSTATE_INIT = 1
RUNSTATE_SETUP = 2
RUNSTATE_FIRST_RECOVERY = 3
RUNSTATE_STARTUP = 4
RUNSTATE_RUNNING = 5
RUNSTATE_SHUTDOWN = 6
RUNSTATES = {
    "UNKNOWN": RUNSTATE_UNKNOWN, "INIT": RUNSTATE_INIT, "SETUP": RUNSTATE_SETUP,
    "FIRST_RECOVERY": RUNSTATE_FIRST_RECOVERY, "STARTUP": RUNSTATE_STARTUP,
    "RUNNING": RUNSTATE_RUNNING, "SHUTDOWN": RUNSTATE_SHUTDOWN,
}

# CTDB's debug levels (ctdb/common/logging.h), as accepted by CTDB_TEST_LOGLEVEL.
ERR, WARNING, NOTICE, INFO, DEBUG = 0, 1, 2, 3, 4
LOG_LEVELS = {"ERR": ERR, "ERROR": ERR, "WARNING": WARNING, "NOTICE": NOTICE,
              "INFO": INFO, "DEBUG": DEBUG}

#: Algorithm names, indexed by the IPAllocAlgorithm tunable value.
ALGORITHMS = ("det", "nondet", "lcp2")
_ALGORITHM_ALIASES = {
    "det": 0, "deterministic": 0, "0": 0,
    "nondet": 1, "nondeterministic": 1, "non-deterministic": 1, "1": 1,
    "lcp2": 2, "2": 2,
}

# A node offers no addresses if any of these is set (CTDB: NODE_FLAGS_INACTIVE |
# NODE_FLAGS_DISABLED; pyctdb's UNKNOWN - "state not yet known" - is treated alike).
_CANNOT_HOST = nodeflags.INACTIVE | nodeflags.DISABLED | nodeflags.UNKNOWN

_M32 = 0xFFFFFFFF
_SELF_SQ = 128 * 128           # squared distance of an address to itself
_POS_BITS = 20                 # heap keys pack (value, position) into one int
_POS_MASK = (1 << _POS_BITS) - 1
#: CTDB keeps distance sums in uint32; beyond this many addresses on one node a single
#: sum could wrap, which this implementation does not model.
MAX_ADDRESSES = 1 << 18

# (128 - bit_length)^2 for an XOR confined to the last 32-bit word of the key.
_SQ_LAST_WORD = tuple((128 - b) ** 2 for b in range(33))

LogFn = Callable[[int, str], None]


def _s32(v: int) -> int:
    """A uint32 as C's printf("%d") shows it."""
    v &= _M32
    return v - (1 << 32) if v & 0x80000000 else v


# -- addresses -------------------------------------------------------------------------
def _parse_address(text: str):
    """Parse an address the way ctdb_sock_addr_from_string() does (no port, no scope).

    IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``) are IPv4 to CTDB."""
    if not isinstance(text, str) or not text or "%" in text or "/" in text:
        raise ValueError("invalid address %r" % (text,))
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError("invalid address %r" % (text,)) from None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        # CTDB re-parses the text after the last ':' as IPv4.
        tail = text.rsplit(":", 1)[1]
        try:
            return ipaddress.IPv4Address(tail)
        except ValueError:
            raise ValueError("invalid address %r" % (text,)) from None
    return addr


def format_address(addr) -> str:
    """An address as CTDB prints it (glibc inet_ntop())."""
    if isinstance(addr, str):
        addr = _parse_address(addr)
    if addr.version == 4:
        return str(addr)
    packed = addr.packed
    words = [(packed[i] << 8) | packed[i + 1] for i in range(0, 16, 2)]
    best_base, best_len, cur_base, cur_len = -1, 0, -1, 0
    for i, w in enumerate(words):
        if w == 0:
            if cur_base == -1:
                cur_base, cur_len = i, 1
            else:
                cur_len += 1
        elif cur_base != -1:
            if best_base == -1 or cur_len > best_len:
                best_base, best_len = cur_base, cur_len
            cur_base = -1
    if cur_base != -1 and (best_base == -1 or cur_len > best_len):
        best_base, best_len = cur_base, cur_len
    if best_base != -1 and best_len < 2:
        best_base = -1
    out = []
    i = 0
    while i < 8:
        if best_base != -1 and best_base <= i < best_base + best_len:
            if i == best_base:
                out.append(":")
            i += 1
            continue
        if i != 0:
            out.append(":")
        if i == 6 and best_base == 0 and (
                best_len == 6 or (best_len == 5 and words[5] == 0xFFFF)):
            out.append(str(ipaddress.IPv4Address(bytes(packed[12:]))))
            break
        out.append("%x" % words[i])
        i += 1
    if best_base != -1 and best_base + best_len == 8:
        out.append(":")
    return "".join(out)


def ip_key(address: str) -> int:
    """CTDB's 128-bit sort key for an address (IPv4 a.b.c.d sorts as ::a.b.c.d)."""
    return int(_parse_address(address))


def _sq_distance_of_xor(x: int) -> int:
    if x <= _M32:
        return _SQ_LAST_WORD[x.bit_length()]
    d = (128 - (x & _M32).bit_length() - ((x >> 32) & _M32).bit_length()
         - ((x >> 64) & _M32).bit_length() - (x >> 96).bit_length())
    return d * d


def ip_distance(a: str, b: str) -> int:
    """CTDB's LCP2 ``ip_distance()`` between two addresses."""
    x = ip_key(a) ^ ip_key(b)
    return (128 - (x & _M32).bit_length() - ((x >> 32) & _M32).bit_length()
            - ((x >> 64) & _M32).bit_length() - (x >> 96).bit_length())


# -- data model ------------------------------------------------------------------------
@dataclass(frozen=True)
class PublicIP:
    """One public address as the nodes report it.

    ``pnn`` is the node currently hosting it (-1: none). ``available_on`` is the set of
    nodes on which the address is configured (``None``: every node)."""

    address: str
    pnn: int = -1
    available_on: Optional[frozenset] = None

    def __post_init__(self):
        object.__setattr__(self, "address", format_address(_parse_address(self.address)))
        if not isinstance(self.pnn, int) or isinstance(self.pnn, bool):
            raise ValueError("%s: pnn must be an integer" % self.address)
        if self.available_on is not None:
            nodes = frozenset(self.available_on)
            for n in nodes:
                if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                    raise ValueError("%s: invalid node %r in available_on"
                                     % (self.address, n))
            object.__setattr__(self, "available_on", nodes)


def _algorithm_index(algorithm) -> int:
    key = str(algorithm).strip().lower()
    if key not in _ALGORITHM_ALIASES:
        raise ValueError("unknown IP allocation algorithm %r (lcp2, det or nondet)"
                         % (algorithm,))
    return _ALGORITHM_ALIASES[key]


class _Log:
    __slots__ = ("fn", "level")

    def __init__(self, fn: Optional[LogFn], level: int):
        self.fn = fn
        self.level = level if fn is not None else -1

    def on(self, level: int) -> bool:
        return level <= self.level

    def __call__(self, level: int, msg: str):
        if level <= self.level:
            self.fn(level, msg)


# -- the allocation state --------------------------------------------------------------
class _State:
    """CTDB's ipalloc_state plus the merged all_ips list, as parallel arrays."""

    def __init__(self, num, addrs, keys, pnns, avail, no_ip_takeover, no_ip_failback,
                 log):
        self.num = num
        self.addrs = addrs          # canonical text, list order (descending key)
        self.keys = keys
        self.pnn = pnns             # -1: unassigned
        self.avail = avail          # bitmask of nodes on which the address is available
        self.no_ip_takeover = no_ip_takeover
        self.no_ip_failback = no_ip_failback
        self.log = log
        self.n_ips = len(keys)
        self.v4_xor = all(k <= _M32 for k in keys)
        self._neg_keys = [-k for k in keys] if self.v4_xor else None     # ascending
        # Takeover mask: where an address may be (re)assigned.
        self.takeover = [0] * self.n_ips if no_ip_takeover else avail

    # ipalloc_common.c ---------------------------------------------------------------
    def unassign_unsuitable_ips(self):
        pnn, avail, log = self.pnn, self.avail, self.log
        for i in range(self.n_ips):
            p = pnn[i]
            if p == -1:
                continue
            if not (avail[i] >> p) & 1:
                log(DEBUG, "Unassign IP: %s from %d" % (self.addrs[i], p))
                pnn[i] = -1

    def coverage(self) -> List[int]:
        cov = [0] * self.num
        for p in self.pnn:
            if p != -1:
                cov[p] += 1
        return cov

    def find_takeover_node(self, i: int, cov: List[int]) -> bool:
        mask = self.takeover[i]
        best, best_num = -1, 0
        n = 0
        while mask:
            if mask & 1:
                if best == -1 or cov[n] < best_num:
                    best, best_num = n, cov[n]
            mask >>= 1
            n += 1
        if best == -1:
            self.log(WARNING, "ipalloc_common.c: Could not find node to take over "
                              "public address '%s'" % self.addrs[i])
            return False
        old = self.pnn[i]
        if old != -1:
            cov[old] -= 1
        self.pnn[i] = best
        cov[best] += 1
        return True

    def basic_allocate_unassigned(self, cov: List[int]):
        pnn = self.pnn
        for i in range(self.n_ips):
            if pnn[i] == -1:
                if not self.find_takeover_node(i, cov):
                    self.log(WARNING, "Failed to find node to cover ip %s" % self.addrs[i])

    # LCP2 helpers -------------------------------------------------------------------
    def sq_row(self, m: int) -> List[int]:
        """Squared LCP2 distance from address m to every address (itself: 128^2)."""
        km = self.keys[m]
        if self.v4_xor:
            return self._sq_row_low_word(m, km)
        f = _sq_distance_of_xor
        return [f(k ^ km) for k in self.keys]

    def _sq_row_low_word(self, m: int, km: int) -> List[int]:
        """sq_row() when all keys differ only in the last 32-bit word (IPv4 lists).

        The list is sorted, so the addresses sharing the top L bits with address m are
        one contiguous run around m; each run minus the next narrower one is at
        distance 128 - (32 - L). Build the row from those runs instead of per address.
        """
        neg = self._neg_keys
        sq = _SQ_LAST_WORD
        los = [0] * 33
        his = [0] * 33
        lo, hi = 0, self.n_ips
        for L in range(33):
            shift = 32 - L
            base = (km >> shift) << shift
            lo = bisect.bisect_left(neg, -(base + (1 << shift) - 1), lo, m)
            hi = bisect.bisect_right(neg, -base, m + 1, hi)
            los[L] = lo
            his[L] = hi
        row: List[int] = []
        for L in range(32):
            if los[L + 1] > los[L]:
                row += [sq[32 - L]] * (los[L + 1] - los[L])
        row.append(sq[0])
        for L in range(31, -1, -1):
            if his[L] > his[L + 1]:
                row += [sq[32 - L]] * (his[L] - his[L + 1])
        return row

    def build_dsums(self) -> List[List[int]]:
        """D[n][i]: sum of squared distances from address i to the addresses on node n,
        not counting i itself (CTDB's ip_distance_2_sum(), for every i and n)."""
        n_ips = self.n_ips
        D = [[0] * n_ips for _ in range(self.num)]
        add = operator.add
        for m in range(n_ips):
            p = self.pnn[m]
            if p == -1:
                continue
            D[p] = list(map(add, D[p], self.sq_row(m)))
            D[p][m] -= _SELF_SQ
        return D


# -- deterministic ---------------------------------------------------------------------
def _deterministic(st: _State, home_nodes: Optional[Dict[int, int]]):
    log = st.log
    log(NOTICE, "Deterministic IPs enabled. Resetting all ip allocations")
    num = st.num
    for i in range(st.n_ips):
        st.pnn[i] = i % num
        if home_nodes:
            hn = home_nodes.get(st.keys[i])
            if hn is not None:
                if hn >= num:
                    log(WARNING, "ipalloc_deterministic: pnn %d too large" % hn)
                else:
                    st.pnn[i] = hn
    if st.no_ip_failback:
        log(WARNING, "WARNING: 'NoIPFailback' set but ignored - "
                     "incompatible with 'Deterministic IPs")
    st.unassign_unsuitable_ips()
    st.basic_allocate_unassigned(st.coverage())


# -- non-deterministic -----------------------------------------------------------------
def _nondeterministic(st: _State):
    num_ips = st.n_ips
    st.unassign_unsuitable_ips()
    cov = st.coverage()
    st.basic_allocate_unassigned(cov)
    if st.no_ip_failback:
        return
    _basic_failback(st, cov, num_ips)


def _basic_failback(st: _State, cov: List[int], num_ips: int):
    pnn, takeover, log = st.pnn, st.takeover, st.log
    retries = 0
    while True:                                   # try_again:
        restart = False
        spread = {}       # takeover mask -> (maxnode, maxnum, minnode, minnum); the
        for i in range(st.n_ips):                 # coverage is fixed within one pass
            if pnn[i] == -1:
                continue
            mask = takeover[i]
            r = spread.get(mask)
            if r is None:
                maxnode = minnode = -1
                maxnum = minnum = 0
                m, n = mask, 0
                while m:
                    if m & 1:
                        c = cov[n]
                        if maxnode == -1 or c > maxnum:
                            maxnode, maxnum = n, c
                        if minnode == -1 or c < minnum:
                            minnode, minnum = n, c
                    m >>= 1
                    n += 1
                r = spread[mask] = (maxnode, maxnum, minnode, minnum)
            maxnode, maxnum, minnode, minnum = r
            if maxnode == -1:
                log(WARNING, "ipalloc_nondeterministic.c: Could not find maxnode. "
                             "May not be able to serve ip '%s'" % st.addrs[i])
                continue
            if maxnum > minnum + 1 and retries < num_ips + 5:
                # Reassign the first of maxnode's addresses.
                for j in range(st.n_ips):
                    if pnn[j] == maxnode:
                        st.find_takeover_node(j, cov)
                        retries += 1
                        restart = True
                        break
                if restart:
                    break
        if not restart:
            return


# -- LCP2 ------------------------------------------------------------------------------
def _lcp2(st: _State, force_rebalance_nodes):
    log = st.log
    st.unassign_unsuitable_ips()

    # lcp2_init()
    num, n_ips, pnn = st.num, st.n_ips, st.pnn
    D = st.build_dsums()
    imb = [0] * num
    for n in range(num):
        Dn = D[n]
        imb[n] = (sum(Dn[i] for i in range(n_ips) if pnn[i] == n) // 2) & _M32
    candidates = [True] * num
    for p in pnn:
        if p != -1:
            candidates[p] = False
    for p in force_rebalance_nodes or ():
        if p < 0 or p >= num:
            log(ERR, "ipalloc_lcp2.c: unknown node %d" % p)
            continue
        log(NOTICE, "Forcing rebalancing of IPs to node %d" % p)
        candidates[p] = True

    _lcp2_allocate_unassigned(st, D, imb)

    if st.no_ip_failback:
        return
    if not any(candidates):
        return
    _lcp2_failback(st, D, imb, candidates)


def _move(st: _State, D, i: int, dst: int):
    """Move (or assign) address i to node dst, keeping D up to date."""
    src = st.pnn[i]
    row = st.sq_row(i)
    if src != -1:
        D[src] = list(map(operator.sub, D[src], row))
        D[src][i] += _SELF_SQ
    D[dst] = list(map(operator.add, D[dst], row))
    D[dst][i] -= _SELF_SQ
    st.pnn[i] = dst


def _lcp2_allocate_unassigned(st: _State, D, imb):
    log = st.log
    pnn, takeover, addrs = st.pnn, st.takeover, st.addrs
    num, n_ips = st.num, st.n_ips
    unassigned = [i for i in range(n_ips) if pnn[i] == -1]

    if log.on(DEBUG):
        # The literal loop, so that the DEBUG trace is CTDB's.
        have_unassigned = should_loop = True
        while have_unassigned and should_loop:
            should_loop = False
            log(DEBUG, " ----------------------------------------")
            log(DEBUG, " CONSIDERING MOVES (UNASSIGNED)")
            minnode, mindsum, minimbl, minip = -1, 0, 0, -1
            for i in range(n_ips):
                if pnn[i] != -1:
                    continue
                for n in range(num):
                    if not (takeover[i] >> n) & 1:
                        continue
                    dstdsum = D[n][i] & _M32
                    dstimbl = (imb[n] + dstdsum) & _M32
                    log(DEBUG, " %s -> %d [+%d]" % (addrs[i], n, _s32(dstimbl - imb[n])))
                    if minnode == -1 or dstdsum < mindsum:
                        minnode, minimbl, mindsum, minip = n, dstimbl, dstdsum, i
                        should_loop = True
            log(DEBUG, " ----------------------------------------")
            if minnode != -1:
                _move(st, D, minip, minnode)
                imb[minnode] = minimbl
                log(INFO, " %s -> %d [+%d]" % (addrs[minip], minnode, _s32(mindsum)))
            have_unassigned = -1 in pnn
    else:
        # Same choice - the (ip, node) pair with the least distance sum, first in list
        # order then node order - found with one lazy heap per node.
        per_node = []
        heaps = []
        for n in range(num):
            cand = [i for i in unassigned if (takeover[i] >> n) & 1]
            per_node.append(cand)
            Dn = D[n]
            h = [(Dn[i] << _POS_BITS) | i for i in cand]
            heapq.heapify(h)
            heaps.append(h)
        while True:
            best = None
            for n in range(num):
                h = heaps[n]
                while h and pnn[h[0] & _POS_MASK] != -1:
                    heapq.heappop(h)
                if h and (best is None or h[0] < best[0]):
                    best = (h[0], n)
            if best is None:
                break
            key, n = best
            i, dsum = key & _POS_MASK, key >> _POS_BITS
            _move(st, D, i, n)
            imb[n] = (imb[n] + dsum) & _M32
            log(INFO, " %s -> %d [+%d]" % (addrs[i], n, _s32(dsum)))
            cand = per_node[n] = [j for j in per_node[n] if pnn[j] == -1]
            Dn = D[n]
            h = heaps[n] = [(Dn[j] << _POS_BITS) | j for j in cand]
            heapq.heapify(h)

    if log.on(WARNING):
        for i in range(n_ips):
            if pnn[i] == -1:
                log(WARNING, "Failed to find node to cover ip %s" % addrs[i])


def _lcp2_failback(st: _State, D, imb, candidates):
    log = st.log
    num = st.num
    debug = log.on(DEBUG)
    while True:
        if debug:
            log(DEBUG, "+++++++++++++++++++++++++++++++++++++++++")
            log(DEBUG, "Selecting most imbalanced node from:")
            for n in range(num):
                log(DEBUG, " %d [%d]" % (n, _s32(imb[n])))
        # qsort() by descending imbalance; glibc's qsort is a stable merge sort here.
        order = sorted(range(num), key=lambda n: -imb[n])
        again = False
        for n in order:
            if imb[n] == 0:
                break
            if _lcp2_failback_candidate(st, D, imb, candidates, n, debug):
                again = True
                break
        if not again:
            return


def _lcp2_failback_candidate(st: _State, D, imb, candidates, src: int, debug: bool):
    log = st.log
    pnn, takeover, addrs = st.pnn, st.takeover, st.addrs
    num = st.num
    imb_src = imb[src]
    on_src = list(itertools.compress(range(st.n_ips), map(src.__eq__, pnn)))
    Ds = D[src]
    best = None           # (objective, position in on_src, dst) - CTDB's "first wins"
    minsrcimbl = mindstimbl = 0

    if debug:
        log(DEBUG, " ----------------------------------------")
        log(DEBUG, " CONSIDERING MOVES FROM %d [%d]" % (src, _s32(imb_src)))
        mindst = -1
        minip = -1
        for i in on_src:
            srcdsum = Ds[i] & _M32
            srcimbl = (imb_src - srcdsum) & _M32
            for dst in range(num):
                if not candidates[dst] or not (takeover[i] >> dst) & 1:
                    continue
                dstdsum = D[dst][i] & _M32
                dstimbl = (imb[dst] + dstdsum) & _M32
                log(DEBUG, " %d [%d] -> %s -> %d [+%d]"
                    % (src, _s32(-srcdsum), addrs[i], dst, _s32(dstdsum)))
                if (dstimbl < imb_src and dstdsum < srcdsum and
                        (mindst == -1 or ((srcimbl + dstimbl) & _M32)
                         < ((minsrcimbl + mindstimbl) & _M32))):
                    minip, minsrcimbl, mindst, mindstimbl = i, srcimbl, dst, dstimbl
        log(DEBUG, " ----------------------------------------")
        if mindst == -1:
            return False
        best_ip, best_dst = minip, mindst
    else:
        # D values are below 2^32 (at most MAX_ADDRESSES * 128^2), so only the
        # imbalance arithmetic can wrap.
        if not on_src:
            return False
        get = operator.itemgetter(*on_src)
        sds = list(get(Ds)) if len(on_src) > 1 else [Ds[on_src[0]]]
        max_sd = max(sds)
        # nodes to which every address on src may move
        common = reduce(operator.and_, get(takeover)) if len(on_src) > 1 \
            else takeover[on_src[0]]
        src_info = None
        for dst in range(num):
            if not candidates[dst]:
                continue
            Dd = D[dst]
            imb_dst = imb[dst]
            base = imb_src + imb_dst
            bit = 1 << dst
            dds = list(get(Dd)) if len(on_src) > 1 else [Dd[on_src[0]]]
            if (common & bit and max_sd <= imb_src and base <= _M32
                    and imb_dst + max_sd <= imb_src):
                # No uint32 wrap is possible, and dd < sd implies the imbalance test:
                # the best move is the (first) most negative dd - sd.
                diffs = list(map(operator.sub, dds, sds))
                m = min(diffs)
                if m >= 0:
                    continue
                cand = (base + m, diffs.index(m), dst)
            else:
                # General case, with C's unsigned 32-bit arithmetic. The objective
                # (srcimbl + dstimbl) mod 2^32 is packed with the position so that
                # min() also applies CTDB's "first in list order wins".
                if src_info is None:
                    src_info = list(zip(range(len(on_src)), on_src, sds))
                keys = [(((base - sd + dd) & _M32) << _POS_BITS) | pos
                        for (pos, i, sd), dd in zip(src_info, dds)
                        if takeover[i] & bit
                        and dd < sd
                        and ((imb_dst + dd) & _M32) < imb_src]
                if not keys:
                    continue
                k = min(keys)
                cand = (k >> _POS_BITS, k & _POS_MASK, dst)
            if best is None or cand < best:
                best = cand
        if best is None:
            return False
        _, pos, best_dst = best
        best_ip = on_src[pos]
        srcdsum = Ds[best_ip] & _M32
        minsrcimbl = (imb_src - srcdsum) & _M32
        mindstimbl = (imb[best_dst] + (D[best_dst][best_ip] & _M32)) & _M32

    log(INFO, "%d [%d] -> %s -> %d [+%d]"
        % (src, _s32(minsrcimbl - imb_src), addrs[best_ip], best_dst,
           _s32(mindstimbl - imb[best_dst])))
    imb[src] = minsrcimbl
    imb[best_dst] = mindstimbl
    _move(st, D, best_ip, best_dst)
    return True


# -- public entry points ---------------------------------------------------------------
def _node_inputs(node_flags, runstates):
    flags = list(node_flags)
    if not flags:
        raise ValueError("at least one node is needed")
    for f in flags:
        if not isinstance(f, int) or isinstance(f, bool) or f < 0 or f > _M32:
            raise ValueError("invalid node flags %r" % (f,))
    num = len(flags)
    if runstates is None:
        states = [RUNSTATE_RUNNING] * num
    else:
        states = list(runstates)
        if len(states) != num:
            raise ValueError("%d runstates given for %d nodes" % (len(states), num))
    return flags, states


def _hostable_mask(flags, states) -> int:
    """Nodes that offer their addresses: RUNNING and neither inactive nor disabled.
    (CTDB: a node returns no *available* public IPs otherwise.)"""
    mask = 0
    for n, (f, s) in enumerate(zip(flags, states)):
        if s == RUNSTATE_RUNNING and not f & _CANNOT_HOST:
            mask |= 1 << n
    return mask


def _merge(ips: Iterable[PublicIP], num: int):
    """CTDB's create_merged_ip_list() + populate_bitmap(), from per-address input.

    Returns (keys, addrs, pnns, known_masks) in CTDB's list order (descending key)."""
    all_nodes = (1 << num) - 1
    merged: Dict[int, list] = {}
    for ip in ips:
        if not isinstance(ip, PublicIP):
            raise TypeError("expected PublicIP, got %r" % (ip,))
        if ip.available_on is None:
            known = all_nodes
        else:
            known = 0
            for n in ip.available_on:
                if n >= num:
                    raise ValueError("%s: available on node %d, but there are only %d "
                                     "nodes" % (ip.address, n, num))
                known |= 1 << n
        key = int(ipaddress.ip_address(ip.address))
        ent = merged.get(key)
        if ent is None:
            ent = merged[key] = [ip.address, -1, 0]
        elif ent[0] != ip.address:
            # e.g. 10.0.0.1 and ::10.0.0.1 share CTDB's key; CTDB would silently merge them.
            raise ValueError("%s and %s are the same address to CTDB"
                             % (ent[0], ip.address))
        ent[2] |= known
        # Only a node's claim about itself counts; with several claims CTDB keeps the
        # one from the highest-numbered node.
        if 0 <= ip.pnn < num and (known >> ip.pnn) & 1 and ip.pnn > ent[1]:
            ent[1] = ip.pnn
    keys, addrs, pnns, known_masks = [], [], [], []
    for key in sorted(merged, reverse=True):
        addr, pnn, known = merged[key]
        if not known:
            continue            # known on no node: not in CTDB's merged list at all
        keys.append(key)
        addrs.append(addr)
        pnns.append(pnn)
        known_masks.append(known)
    if len(keys) > MAX_ADDRESSES:
        raise ValueError("too many addresses (%d, at most %d)" % (len(keys), MAX_ADDRESSES))
    return keys, addrs, pnns, known_masks


def _home_nodes_map(home_nodes) -> Dict[int, int]:
    if isinstance(home_nodes, Mapping):
        pairs = list(home_nodes.items())
    else:
        pairs = list(home_nodes)
    out: Dict[int, int] = {}
    for addr, pnn in pairs:
        if not isinstance(pnn, int) or isinstance(pnn, bool) or pnn < 0:
            raise ValueError("home node for %s: invalid node %r" % (addr, pnn))
        out.setdefault(ip_key(addr), pnn)       # the first entry for an address wins
    return out


def allocate(ips: Iterable[PublicIP], node_flags: Sequence[int], *,
             algorithm: Union[str, int] = "lcp2",
             no_ip_failback: bool = False,
             no_ip_takeover: bool = False,
             runstates: Optional[Sequence[int]] = None,
             home_nodes=None,
             force_rebalance_nodes: Optional[Sequence[int]] = None,
             log: Optional[LogFn] = None,
             log_level: int = NOTICE) -> Dict[str, int]:
    """Assign public addresses to nodes exactly as CTDB's ipalloc() does.

    :param ips: the public addresses (:class:`PublicIP`), with their current node and
        the nodes on which they are configured.
    :param node_flags: one entry per node (PNN 0, 1, ...), CTDB's numeric flags.
    :param algorithm: ``"lcp2"`` (IPAllocAlgorithm=2, CTDB's default), ``"det"`` (0)
        or ``"nondet"`` (1); the tunable's numbers are accepted too.
    :param no_ip_failback: the NoIPFailback tunable (no rebalancing onto nodes that
        come back; ignored, with a warning, by the deterministic algorithm).
    :param no_ip_takeover: the NoIPTakeover tunable (addresses never move to another
        node; addresses a node cannot keep become unassigned).
    :param runstates: one CTDB runstate per node (default: all RUNNING).
    :param home_nodes: for the deterministic algorithm, ``{address: pnn}`` or pairs
        (CTDB's ``home_nodes`` file, Samba 4.19+); the first entry for an address wins.
    :param force_rebalance_nodes: LCP2 only: nodes that may receive addresses in the
        rebalancing step even though they already host some (CTDB's takeover helper
        argument; e.g. nodes that just gained new addresses).
    :param log: ``log(level, message)`` receives CTDB's log messages at or below
        ``log_level`` (ERR=0, WARNING=1, NOTICE=2, INFO=3, DEBUG=4).
    :returns: ``{address: pnn}`` (-1: not hostable anywhere), in CTDB's order
        (descending address). Addresses configured on no node are left out, as CTDB
        leaves them out of its list.
    """
    alg = _algorithm_index(algorithm)
    flags, states = _node_inputs(node_flags, runstates)
    num = len(flags)
    keys, addrs, pnns, known = _merge(ips, num)
    hostable = _hostable_mask(flags, states)
    avail = [k & hostable for k in known]
    st = _State(num, addrs, keys, pnns, avail, bool(no_ip_takeover), bool(no_ip_failback),
                _Log(log, log_level))
    if alg == 0:
        _deterministic(st, _home_nodes_map(home_nodes) if home_nodes else None)
    elif alg == 1:
        _nondeterministic(st)
    else:
        frn = None
        if force_rebalance_nodes is not None:
            frn = [int(p) for p in force_rebalance_nodes]
        _lcp2(st, frn)
    return dict(zip(st.addrs, st.pnn))


def can_host_ips(ips: Iterable[PublicIP], node_flags: Sequence[int],
                 runstates: Optional[Sequence[int]] = None) -> bool:
    """CTDB's ipalloc_can_host_ips(): False only if there are no public addresses, or
    none is hosted and no node can host one. (The takeover run is skipped then.)"""
    flags, states = _node_inputs(node_flags, runstates)
    num = len(flags)
    keys, addrs, pnns, known = _merge(ips, num)
    if not keys:
        return False
    if any(p != -1 for p in pnns):
        return True
    hostable = _hostable_mask(flags, states)
    return any(k & hostable for k in known)


# -- text formats ----------------------------------------------------------------------
def _parse_int(text: str, what: str, minimum: int) -> int:
    t = text.strip()
    try:
        v = int(t, 10)
    except ValueError:
        raise ValueError("invalid %s %r" % (what, text)) from None
    if v < minimum:
        raise ValueError("invalid %s %r" % (what, text))
    return v


def _parse_line(line: str, lineno: int, multi: bool):
    """``IP [CURRENT_PNN [ALLOWED_PNN,...]]``; '#' starts a comment."""
    fields = line.split("#", 1)[0].split()
    if not fields:
        return None
    try:
        if len(fields) > 3:
            raise ValueError("too many fields (expected: IP [PNN [PNN,...]])")
        address = format_address(_parse_address(fields[0]))
        pnn = _parse_int(fields[1], "PNN", -1) if len(fields) > 1 else -1
        allowed = None
        if len(fields) > 2:
            if multi:
                raise ValueError("allowed-node lists are not used with --multi "
                                 "(each block is one node's view)")
            allowed = frozenset(_parse_int(p, "node in allowed list", 0)
                                for p in fields[2].split(","))
    except ValueError as e:
        raise ValueError("line %d: %s" % (lineno, e)) from None
    return address, pnn, allowed


def parse_input(text: str) -> List[PublicIP]:
    """Parse CTDB's ``IP CURRENT_PNN [ALLOWED_PNN,...]`` lines (one per address).

    Without an allowed list the address is configured on every node. Blank lines and
    ``#`` comments are ignored; a blank line followed by more addresses is an error
    (CTDB's test reader stops at the first blank line; per-node blocks need --multi).
    """
    out = []
    blank_at = None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            blank_at = blank_at or lineno
            continue
        parsed = _parse_line(line, lineno, multi=False)
        if parsed is None:
            continue
        if blank_at is not None:
            raise ValueError("line %d: addresses after the blank line %d (per-node blocks "
                             "separated by blank lines need --multi)" % (lineno, blank_at))
        address, pnn, allowed = parsed
        out.append(PublicIP(address, pnn, allowed))
    return out


def parse_multi(text: str) -> List[PublicIP]:
    """Parse per-node views: block N (blocks end at a blank line) holds node N's
    ``IP CURRENT_PNN`` lines, i.e. the addresses configured on node N and who node N
    thinks hosts them. Consecutive blank lines give nodes with no addresses.

    As in CTDB, only a node's claim about itself counts: an address is taken as hosted
    by node N only if block N lists it with PNN N.
    """
    blocks: List[List[Tuple[str, int]]] = [[]]
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            blocks.append([])
            continue
        parsed = _parse_line(line, lineno, multi=True)
        if parsed is not None:
            blocks[-1].append((parsed[0], parsed[1]))
    while blocks and not blocks[-1]:
        blocks.pop()            # trailing blank lines
    seen: Dict[str, list] = {}
    for node, block in enumerate(blocks):
        for address, pnn in block:
            ent = seen.setdefault(address, [-1, set()])
            ent[1].add(node)
            if pnn == node:
                ent[0] = node
    return [PublicIP(a, p, frozenset(nodes)) for a, (p, nodes) in seen.items()]


def parse_home_nodes(text: str) -> List[Tuple[str, int]]:
    """Parse CTDB's ``home_nodes`` file: ``IP PNN`` per line.

    Lines with fewer than two fields are skipped, as CTDB skips them. A line CTDB cannot
    parse is an error here (CTDB would log a warning and ignore the whole file).
    """
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if len(fields) < 2:
            continue
        try:
            address = format_address(_parse_address(fields[0]))
            if not fields[1].isdigit():
                raise ValueError("invalid node %r" % fields[1])
            out.append((address, int(fields[1])))
        except ValueError as e:
            raise ValueError("line %d: %s" % (lineno, e)) from None
    return out


def format_result(mapping: Mapping[str, int]) -> str:
    """``IP PNN`` lines in CTDB's order (descending address), as ctdb_takeover_tests
    prints them."""
    items = sorted(((ip_key(a), format_address(a), p) for a, p in mapping.items()),
                   reverse=True)
    return "".join("%s %d\n" % (a, p) for _, a, p in items)
