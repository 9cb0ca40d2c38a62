"""CTDB's run-time tunables: the table, value parsing and the tunables file.

The table lists every tunable CTDB 4.17 knows, in CTDB's order (the order of
``ctdb listvars``) and with CTDB's defaults, so that a CTDB ``ctdb.tunables`` file is
accepted as it is. Tunables that CTDB itself marks obsolete are in the table too, flagged
``obsolete``: they are not listed, and the tunables file rejects them as CTDB does.

pyctdb differs from CTDB in two defaults, because it aims to fail over faster:
``KeepaliveInterval`` (0.5 s instead of 5 s, and fractions are allowed) and
``KeepaliveLimit`` (3 instead of 5). Values are otherwise unsigned 32-bit integers, as
in CTDB, except that a few tunables that pyctdb acts on have tighter, sane ranges, and
on/off tunables take only 0 or 1.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass

from pyctdb.errors import ConfigError, PyctdbError

__all__ = ["Tunable", "TUNABLES", "UnknownTunable", "lookup", "parse_value", "Tunables",
           "parse_tunables", "USED_BY_PYCTDB"]

UINT32_MAX = 0xFFFFFFFF


@dataclass(frozen=True)
class Tunable:
    name: str
    default: object
    minimum: object = 0
    maximum: object = UINT32_MAX
    kind: str = "int"  # "int" | "float" | "bool"
    obsolete: bool = False
    doc: str = ""

    def describe_range(self) -> str:
        """What values are accepted, in words (used in error messages)."""
        if self.kind == "bool":
            return "0 or 1"
        if self.kind == "float":
            return f"a number of seconds from {_fmt(self.minimum)} to {_fmt(self.maximum)}"
        return f"an integer from {self.minimum} to {self.maximum}"


def _fmt(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


#: What to use instead of an obsolete tunable, where there is something.
REPLACEMENTS = {}


def _i(name, default, doc, minimum=0, maximum=UINT32_MAX, obsolete=False):
    return Tunable(name, default, minimum, maximum, "int", obsolete, doc)


def _b(name, default, doc, obsolete=False, replacement=None):
    if replacement:
        REPLACEMENTS[name] = replacement
        doc += f" Use {replacement} instead."
    return Tunable(name, default, 0, 1, "bool", obsolete, doc)


_OBSOLETE = ("Obsolete: CTDB no longer uses it and refuses it in its tunables file; so "
             "does pyctdb.")

_TABLE = (
    _i("MaxRedirectCount", 3, _OBSOLETE, obsolete=True),
    _i("SeqnumInterval", 1000,
       "Milliseconds between sequence-number updates sent for databases with seqnum "
       "tracking. Accepted for compatibility; unused by pyctdb."),
    _i("ControlTimeout", 60,
       "Default timeout in seconds for a control sent to a local or remote daemon. "
       "Accepted for compatibility; unused by pyctdb."),
    _i("TraverseTimeout", 20,
       "Seconds a database traverse may run before it is aborted. Accepted for "
       "compatibility; unused by pyctdb."),
    Tunable("KeepaliveInterval", 0.5, 0.05, 3600.0, "float", False,
            "Seconds between keepalives sent to each connected node. pyctdb uses it. "
            "Differs from CTDB: the default is 0.5 (CTDB: 5) because pyctdb aims to "
            "fail over faster, and fractions of a second are accepted (CTDB takes "
            "whole seconds only); range 0.05 to 3600."),
    _i("KeepaliveLimit", 3,
       "Number of keepalive intervals a node may stay silent before it is marked "
       "DISCONNECTED. pyctdb uses it: a silent node is dropped after KeepaliveInterval x "
       "KeepaliveLimit seconds. Differs from CTDB: the default is 3 (CTDB: 5), and the "
       "minimum is 1.", minimum=1),
    _i("RecoverTimeout", 30,
       "Timeout in seconds for controls sent by the recovery daemon. Accepted for "
       "compatibility; unused by pyctdb."),
    _i("RecoverInterval", 1,
       "Seconds between the leader's checks of whether the cluster needs a recovery. "
       "Accepted for compatibility (pyctdb's leader re-checks membership every cycle); "
       "range 1 to 3600 (CTDB accepts 0, which would spin).",
       minimum=1, maximum=3600),
    _i("ElectionTimeout", 3,
       "Seconds an election round may take before it is abandoned and a new one "
       "started. Accepted for compatibility (pyctdb's election is decided every cycle; "
       "see [cluster] leader timeout); range 1 to 3600 (CTDB accepts 0).",
       minimum=1, maximum=3600),
    _i("TakeoverTimeout", 9,
       "Seconds allowed to complete a public IP failover. Accepted for compatibility; "
       "unused by pyctdb."),
    _i("MonitorInterval", 15,
       "Seconds between the starts of two runs of the monitor event. pyctdb uses it: "
       "the monitor event runs the enabled event scripts, and a failure makes the node "
       "UNHEALTHY until a run succeeds."),
    _i("TickleUpdateInterval", 20,
       "Seconds between synchronisations of client connection (tickle) information. "
       "Accepted for compatibility; unused by pyctdb."),
    _i("EventScriptTimeout", 30,
       "Seconds all scripts of one event may run before the event times out. pyctdb "
       "uses it: the script running at the deadline is killed (with its process group) "
       "and the event fails as TIMEDOUT."),
    _i("MonitorTimeoutCount", 20,
       "Consecutive monitor event timeouts before the node is flagged UNHEALTHY. "
       "Accepted for compatibility; unused by pyctdb."),
    _b("EventScriptUnhealthyOnTimeout", 0, _OBSOLETE, obsolete=True),
    _i("RecoveryGracePeriod", 120,
       "Seconds without causing recovery failures after which a node's ban credits are "
       "forgiven. Accepted for compatibility; unused by pyctdb."),
    _i("RecoveryBanPeriod", 300,
       "Seconds a misbehaving node stays banned. Accepted for compatibility; unused by "
       "pyctdb."),
    _i("DatabaseHashSize", 100001,
       "Number of hash chains of the local TDB databases. Accepted for compatibility; "
       "unused by pyctdb."),
    _i("DatabaseMaxDead", 5,
       "Maximum dead records per hash chain. Accepted for compatibility; unused by "
       "pyctdb."),
    _i("RerecoveryTimeout", 10,
       "Seconds after a recovery during which no new recovery starts. Accepted for "
       "compatibility; unused by pyctdb."),
    _b("EnableBans", 1,
       "1 allows misbehaving nodes to be banned; 0 disables banning. Accepted for "
       "compatibility; unused by pyctdb."),
    _b("DeterministicIPs", 0, _OBSOLETE, replacement="IPAllocAlgorithm", obsolete=True),
    _b("LCP2PublicIPs", 1, _OBSOLETE, replacement="IPAllocAlgorithm", obsolete=True),
    _i("ReclockPingPeriod", 60, _OBSOLETE, obsolete=True),
    _b("NoIPFailback", 0,
       "1: public addresses do not fail back to a node that becomes healthy again. "
       "pyctdb uses it: the leader's takeover runs read it (set it alike on every "
       "node)."),
    _b("DisableIPFailover", 0,
       _OBSOLETE, replacement="[failover] disabled in pyctdb.conf", obsolete=True),
    _b("VerboseMemoryNames", 0,
       "1: give verbose names to memory allocations. Accepted for compatibility; "
       "unused by pyctdb."),
    _i("RecdPingTimeout", 60,
       "Seconds without a ping from the recovery daemon before it is suspected hung. "
       "Accepted for compatibility; unused by pyctdb."),
    _i("RecdFailCount", 10,
       "Missed recovery daemon pings before it is restarted. Accepted for "
       "compatibility; unused by pyctdb."),
    _i("LogLatencyMs", 0,
       "When non-zero, log operations slower than this many milliseconds. Accepted for "
       "compatibility; unused by pyctdb."),
    _i("RecLockLatencyMs", 1000,
       "When non-zero, log cluster lock operations slower than this many milliseconds. "
       "Accepted for compatibility; unused by pyctdb."),
    _i("RecoveryDropAllIPs", 120,
       "Seconds a node may be without a leader (or not joined to the cluster) before it "
       "releases all its public addresses, which the rest of the cluster has probably "
       "taken over; 0: never. pyctdb uses it (CTDB: stuck in recovery, stopped or "
       "banned; a stopped or banned pyctdb node loses its addresses in the leader's "
       "next takeover run)."),
    _b("VerifyRecoveryLock", 1, _OBSOLETE, obsolete=True),
    _i("VacuumInterval", 10,
       "Seconds between vacuuming runs of volatile databases (deleted records "
       "removed cluster-wide); 0: no vacuuming. pyctdb uses it."),
    _i("VacuumMaxRunTime", 120,
       "Seconds a vacuuming run may take. Accepted for compatibility; unused by "
       "pyctdb."),
    _i("RepackLimit", 10000,
       "Freelist records above which a database is repacked during vacuuming. Accepted "
       "for compatibility; unused by pyctdb."),
    _i("VacuumLimit", 5000, _OBSOLETE, obsolete=True),
    _i("VacuumFastPathCount", 60,
       "Fast-path vacuuming runs between full database scans. Accepted for "
       "compatibility; unused by pyctdb."),
    _i("MaxQueueDropMsg", 1000000,
       "Messages queued for a client before it is considered hung and disconnected. "
       "Accepted for compatibility; unused by pyctdb."),
    _b("AllowUnhealthyDBRead", 0,
       "1: allow traverses to read unhealthy databases. Accepted for compatibility; "
       "unused by pyctdb."),
    _i("StatHistoryInterval", 1,
       "Granularity in seconds of the statistics history. Accepted for compatibility; "
       "unused by pyctdb."),
    _i("DeferredAttachTO", 120,
       "Seconds a database attach is deferred while databases are frozen. Accepted for "
       "compatibility; unused by pyctdb."),
    _b("AllowClientDBAttach", 1,
       "0: clients may not attach to databases (the API attach is refused) and "
       "volatile databases may be detached. pyctdb uses it."),
    _b("RecoverPDBBySeqNum", 1, _OBSOLETE, obsolete=True),
    _i("DeferredRebalanceOnNodeAdd", 300, _OBSOLETE, obsolete=True),
    _b("FetchCollapse", 1,
       "1: collapse concurrent migration requests for the same record. Accepted for "
       "compatibility; unused by pyctdb."),
    _i("HopcountMakeSticky", 50,
       "Hop count above which a record of a STICKY database becomes sticky. Accepted "
       "for compatibility; unused by pyctdb."),
    _i("StickyDuration", 600,
       "Seconds a record stays sticky. Accepted for compatibility; unused by pyctdb."),
    _i("StickyPindown", 200,
       "Milliseconds a sticky record is pinned to a node after migrating. Accepted for "
       "compatibility; unused by pyctdb."),
    _b("NoIPTakeover", 0,
       "1: public addresses are not failed over to other nodes. pyctdb uses it: the "
       "leader's takeover runs read it (set it alike on every node)."),
    _i("DBRecordCountWarn", 100000,
       "When non-zero, warn during recovery about databases with more records. "
       "Accepted for compatibility; unused by pyctdb."),
    _i("DBRecordSizeWarn", 10000000,
       "When non-zero, warn during recovery about larger records (bytes). Accepted for "
       "compatibility; unused by pyctdb."),
    _i("DBSizeWarn", 100000000,
       "When non-zero, warn during recovery about larger databases (bytes). Accepted "
       "for compatibility; unused by pyctdb."),
    _i("PullDBPreallocation", 10 * 1024 * 1024,
       "Bytes preallocated for a PULLDB reply buffer. Accepted for compatibility; "
       "unused by pyctdb."),
    _b("NoIPHostOnAllDisabled", 1, _OBSOLETE, obsolete=True),
    _b("Samba3AvoidDeadlocks", 0, _OBSOLETE, obsolete=True),
    _b("TDBMutexEnabled", 1,
       _OBSOLETE,
       replacement="[database] tdb mutexes in pyctdb.conf", obsolete=True),
    _i("LockProcessesPerDB", 200,
       "Maximum lock helper processes per database. Accepted for compatibility; unused "
       "by pyctdb."),
    _i("RecBufferSizeLimit", 1000000,
       "Size limit in bytes of record buffers sent in recovery and vacuuming controls. "
       "Accepted for compatibility; unused by pyctdb."),
    _i("QueueBufferSize", 1024,
       "Bytes read from a socket at a time. Accepted for compatibility; unused by "
       "pyctdb."),
    _i("IPAllocAlgorithm", 2,
       "Public IP allocation algorithm: 0 deterministic, 1 non-deterministic, 2 LCP2. "
       "pyctdb uses it: the leader's takeover runs read it (set it alike on every "
       "node). Range 0 to 2 (CTDB silently uses the default for other values).",
       maximum=2),
    _b("AllowMixedVersions", 0,
       "1: allow nodes of different major.minor versions in one cluster. Accepted for "
       "compatibility; unused by pyctdb."),
)

#: Every tunable, obsolete ones included, in CTDB's order, by canonical name.
TUNABLES = {t.name: t for t in _TABLE}

#: The tunables pyctdb acts on today, in CTDB's order; the others are accepted for
#: compatibility. agent/tests/test_tunables.py checks it against the source (every
#: tunable the agent reads) and against docs/configuration.md.
USED_BY_PYCTDB = ("KeepaliveInterval", "KeepaliveLimit", "MonitorInterval",
                  "EventScriptTimeout", "NoIPFailback", "RecoveryDropAllIPs",
                  "VacuumInterval", "AllowClientDBAttach", "NoIPTakeover",
                  "IPAllocAlgorithm")

_BY_LOWER = {name.lower(): t for name, t in TUNABLES.items()}


class UnknownTunable(PyctdbError, KeyError):
    """Raised by :func:`lookup`; ``str()`` is the plain message (KeyError quotes it)."""

    code = "ENOENT"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self):
        return self.message


def close_matches(name: str) -> list:
    """Up to three tunable names that look like ``name``."""
    lowered = difflib.get_close_matches(name.lower(), list(_BY_LOWER), n=3, cutoff=0.6)
    return [_BY_LOWER[m].name for m in lowered if not _BY_LOWER[m].obsolete]


def _unknown_message(name: str) -> str:
    matches = close_matches(name)
    if matches:
        return f'no such tunable "{name}" (did you mean {", ".join(matches)}?)'
    return f'no such tunable "{name}" (see "pyctdb listvars" for the list)'


def lookup(name: str) -> Tunable:
    """The tunable called ``name``, case-insensitively; :class:`UnknownTunable`
    (a KeyError) naming close matches otherwise. Obsolete tunables are found too."""
    t = _BY_LOWER.get(str(name).strip().lower())
    if t is None:
        raise UnknownTunable(_unknown_message(str(name)))
    return t


# strtoul(3) with base 0, without sign or surrounding junk: 0x hex, 0 octal, decimal.
_HEX = re.compile(r"0[xX]([0-9a-fA-F]+)\Z")
_OCT = re.compile(r"0([0-7]*)\Z")
_DEC = re.compile(r"[1-9][0-9]*\Z")
_FLOAT = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\Z")


def _parse_uint(text: str):
    """CTDB's number syntax (strtoul base 0): ``0x1F`` hex, ``017`` octal, ``15``
    decimal. Returns None when ``text`` is not such a number."""
    m = _HEX.match(text)
    if m:
        return int(m.group(1), 16)
    m = _OCT.match(text)
    if m:
        return int(m.group(1) or "0", 8)
    if _DEC.match(text):
        return int(text, 10)
    return None


def _check_range(t: Tunable, value):
    if not t.minimum <= value <= t.maximum:
        raise ValueError(f"{t.name} must be {t.describe_range()}, not {_fmt(value)}")
    return value


def parse_value(tunable: Tunable, text: str):
    """Convert ``text`` to a value of ``tunable``; ValueError naming the accepted range.

    Integers and on/off (0/1) tunables take CTDB's syntax: decimal, ``0x`` hex, or (as
    strtoul with base 0) octal with a leading ``0``. KeepaliveInterval also takes a
    decimal fraction such as ``0.5``.
    """
    if not isinstance(text, str):
        raise ValueError(f"{tunable.name}: value must be a string, not "
                         f"{type(text).__name__}")
    s = text.strip()
    value = _parse_uint(s)
    if tunable.kind == "float":
        if value is None and _FLOAT.match(s):
            value = float(s)
        if value is None or not math.isfinite(value):
            raise ValueError(f'invalid value "{text}" for {tunable.name}: expected '
                             f"{tunable.describe_range()}, e.g. 0.5")
        return _check_range(tunable, float(value))
    if value is None:
        if tunable.kind == "bool":
            expected = "0 or 1"
        else:
            expected = (f"{tunable.describe_range()} (decimal, 0x hex, or octal with a "
                        f"leading 0)")
        raise ValueError(f'invalid value "{text}" for {tunable.name}: expected {expected}')
    return _check_range(tunable, value)


def coerce_value(tunable: Tunable, value):
    """Validate a value given as a number (or a string, parsed by :func:`parse_value`)."""
    if isinstance(value, str):
        return parse_value(tunable, value)
    if isinstance(value, bool):
        value = int(value)
    if not isinstance(value, (int, float)):
        raise ValueError(f"{tunable.name}: value must be a number, not "
                         f"{type(value).__name__}")
    if tunable.kind == "float":
        if not math.isfinite(value):
            raise ValueError(f"{tunable.name} must be {tunable.describe_range()}, "
                             f"not {value}")
        return _check_range(tunable, float(value))
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{tunable.name} must be {tunable.describe_range()}, "
                             f"not {value}")
        value = int(value)
    return _check_range(tunable, value)


class Tunables:
    """The current tunable values of one node.

    ``overrides``: ``{name: value}`` (e.g. from the tunables file), names
    case-insensitive, values numbers or strings; applied over the defaults.
    """

    def __init__(self, overrides: dict = None):
        self._values = {name: t.default for name, t in TUNABLES.items()}
        for name, value in (overrides or {}).items():
            self.set(name, value)

    def get(self, name: str):
        """Current value; KeyError (:class:`UnknownTunable`) for an unknown name."""
        return self._values[lookup(name).name]

    def __getitem__(self, name):
        return self.get(name)

    def set(self, name: str, value):
        """Set a tunable; returns the previous value. KeyError for an unknown name,
        ValueError for a bad value or an obsolete tunable."""
        t = lookup(name)
        if t.obsolete:
            raise ValueError(f"{t.name} is obsolete and has no effect")
        new = coerce_value(t, value)
        previous = self._values[t.name]
        self._values[t.name] = new
        return previous

    def items(self) -> list:
        """``[(name, value)]`` of every tunable that is not obsolete, in CTDB's order
        (as ``ctdb listvars``)."""
        return [(n, v) for n, v in self._values.items() if not TUNABLES[n].obsolete]

    def as_dict(self) -> dict:
        return dict(self.items())

    def __repr__(self):
        changed = {n: v for n, v in self.items() if v != TUNABLES[n].default}
        return f"Tunables({changed!r})"


def parse_tunables(text: str, path: str) -> dict:
    """Parse a tunables file (CTDB's ``ctdb.tunables`` format): ``NAME=VALUE`` lines,
    spaces around ``=`` allowed, ``#`` comments and blank lines ignored.

    Returns ``{canonical name: value}``; raises ConfigError with the line number for a
    line without ``=``, an unknown, obsolete or repeated name, or a bad value.
    """
    result = {}
    seen = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            raise ConfigError(path, lineno, f'unexpected section header "{line}": a '
                              "tunables file has only NAME=VALUE lines")
        if "=" not in line:
            raise ConfigError(path, lineno, f'expected NAME=VALUE, not "{line}" '
                              "(e.g. KeepaliveInterval=1)")
        name, _, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not name:
            raise ConfigError(path, lineno, f'missing tunable name before "=" in "{line}"')
        try:
            t = lookup(name)
        except KeyError as exc:
            raise ConfigError(path, lineno, str(exc)) from None
        if t.obsolete:
            hint = (f" (use {REPLACEMENTS[t.name]} instead)" if t.name in REPLACEMENTS
                    else "")
            raise ConfigError(path, lineno, f"obsolete tunable {t.name}: it has no effect "
                              f"and, as in CTDB, is not accepted; remove the line{hint}")
        if not value:
            raise ConfigError(path, lineno, f"missing value for {t.name}: expected "
                              f"{t.describe_range()}")
        if t.name in seen:
            raise ConfigError(path, lineno, f"{t.name} is set twice (first on line "
                              f"{seen[t.name]}); keep one of the lines")
        try:
            result[t.name] = parse_value(t, value)
        except ValueError as exc:
            raise ConfigError(path, lineno, str(exc)) from None
        seen[t.name] = lineno
    return result
