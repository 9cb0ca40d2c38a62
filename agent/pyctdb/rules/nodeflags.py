"""Node flags, with CTDB's numeric values so that tools and scripts written for
CTDB read them the same way (ctdb/protocol/protocol.h)."""

DISCONNECTED = 0x00000001
UNHEALTHY = 0x00000002
PERMANENTLY_DISABLED = 0x00000004
BANNED = 0x00000008
DELETED = 0x00000010
STOPPED = 0x00000020
#: pyctdb: connected, but the peer has not yet told us its own state.
UNKNOWN = 0x00000040

DISABLED = UNHEALTHY | PERMANENTLY_DISABLED
INACTIVE = DELETED | DISCONNECTED | BANNED | STOPPED

# Order and names as printed by `ctdb status` (pretty_print_flags in ctdb.c).
_NAMES = (
    (DISCONNECTED, "DISCONNECTED"),
    (UNKNOWN, "UNKNOWN"),
    (PERMANENTLY_DISABLED, "DISABLED"),
    (BANNED, "BANNED"),
    (UNHEALTHY, "UNHEALTHY"),
    (DELETED, "DELETED"),
    (STOPPED, "STOPPED"),
    (INACTIVE, "INACTIVE"),
)


def flag_names(flags: int) -> list:
    """Names of the flags set in ``flags``, in CTDB's order (INACTIVE last)."""
    return [name for bit, name in _NAMES if flags & bit]


def pretty(flags: int) -> str:
    """CTDB's rendering: ``OK`` or names joined with ``|``."""
    names = flag_names(flags)
    return "|".join(names) if names else "OK"


def is_active(flags: int) -> bool:
    return not flags & (INACTIVE | UNKNOWN)
