"""The data of CTDB's controls and messages (``ctdb/protocol/protocol_types.c``,
``protocol_basic.c``): control numbers, and the structs pyctdb sends and reads, in the
host's byte order as ctdbd lays them out."""

from __future__ import annotations

import ipaddress
import socket
import struct

# controls (enum ctdb_controls): those pyctdb answers, and those it names in errors
PROCESS_EXISTS = 0
STATISTICS = 1
PING = 3
GETDBPATH = 4
GETVNNMAP = 5
GET_DEBUG = 7
SET_DEBUG = 8
GET_DBMAP = 9
GET_DBNAME = 25
GET_RECMODE = 15
DB_ATTACH = 18
REGISTER_SRVID = 23
DEREGISTER_SRVID = 24
GET_PID = 30
GET_RECMASTER = 31
GET_PNN = 35
SHUTDOWN = 36
SET_TUNABLE = 48
GET_TUNABLE = 49
LIST_TUNABLES = 50
UPTIME = 69
GET_CAPABILITIES = 80
RELEASE_IP = 88
TAKEOVER_IP = 89
GET_PUBLIC_IPS = 90
GET_NODEMAP = 91
GET_RECLOCK_FILE = 99
STOP_NODE = 101
SET_BAN_STATE = 109
CONTINUE_NODE = 102
GET_DB_SEQNUM = 120
DB_GET_HEALTH = 122
GET_PUBLIC_IP_INFO = 123
GET_IFACES = 124
RELOAD_PUBLIC_IPS = 134
GET_RUNSTATE = 138
DB_ATTACH_PERSISTENT = 61
CHECK_PID_SRVID = 151
ECHO_DATA = 156
TRAVERSE_START = 20
ENABLE_SEQNUM = 26
TCP_CLIENT = 44
TCP_ADD = 45
TCP_REMOVE = 46
GET_TCP_TICKLE_LIST = 55
SEND_GRATUITOUS_ARP = 64
SET_IFACE_LINK_STATE = 125
TCP_ADD_DELAYED_UPDATE = 126
REGISTER_NOTIFY = 114
DEREGISTER_NOTIFY = 115
TRANS3_COMMIT = 119
SCHEDULE_FOR_DELETION = 128
SET_DB_READONLY = 129
TRAVERSE_START_EXT = 131
DB_OPEN_FLAGS = 149
DISABLE_NODE = 157
ENABLE_NODE = 158

#: a control's name by number, for the log
NAMES = {v: k for k, v in globals().items() if k.isupper() and isinstance(v, int)}

# srvids of messages
SRVID_LEADER = 0xF101000000000000
SRVID_RELEASE_IP = 0xF300000000000000
SRVID_TAKE_IP = 0xF301000000000000
SRVID_TAKEOVER_RUN = 0xFB00000000000000
SRVID_DISABLE_TAKEOVER_RUNS = 0xFB03000000000000

# debug levels (ctdb/common/logging.c: Samba's DBGLVL numbers; 2, 4 and 6-9 name the
# level below them)
DEBUG_LEVELS = {"ERROR": 0, "WARNING": 1, "NOTICE": 3, "INFO": 5, "DEBUG": 10}


def debug_level_name(n) -> str:
    """The level CTDB's number ``n`` names (0-10)."""
    if not 0 <= n <= 10:
        raise ValueError(f"debug level {n} is not one of CTDB's (0-10)")
    return max((v, k) for k, v in DEBUG_LEVELS.items() if v <= n)[1]

# database flags (ctdb_dbid.flags)
DB_FLAGS_PERSISTENT = 0x01

# capabilities (CTDB_CAP_*)
CAP_RECMASTER = 0x1
CAP_LMASTER = 0x2
CAP_PARALLEL_RECOVERY = 0x10000
CAP_FRAGMENTED_CONTROLS = 0x20000
CAP_DEFAULT = CAP_RECMASTER | CAP_LMASTER | CAP_PARALLEL_RECOVERY | CAP_FRAGMENTED_CONTROLS

# run states (enum ctdb_runstate)
RUNSTATE_UNKNOWN, RUNSTATE_INIT, RUNSTATE_SETUP, RUNSTATE_FIRST_RECOVERY, \
    RUNSTATE_STARTUP, RUNSTATE_RUNNING, RUNSTATE_SHUTDOWN = range(7)

#: sizeof(ctdb_sock_addr): a union of sockaddr, sockaddr_in and sockaddr_in6
SOCK_ADDR_SIZE = 28
_U32 = struct.Struct("<I")
_TIMEVAL = struct.Struct("<qq")  # struct timeval on 64-bit Linux


def u32(value) -> bytes:
    return _U32.pack(value)


def parse_u32(data) -> int:
    if len(data) < 4:
        raise ValueError(f"{len(data)} bytes where a uint32 was expected")
    return _U32.unpack_from(data)[0]


def sock_addr(address, port=0) -> bytes:
    """``ctdb_sock_addr`` of an IPv4 or IPv6 address (the family in host order, the port
    in network order, as in ``struct sockaddr_in``/``sockaddr_in6``), 28 bytes."""
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        raw = struct.pack("<H", socket.AF_INET) + struct.pack("!H", port) + ip.packed
    else:
        raw = (struct.pack("<H", socket.AF_INET6) + struct.pack("!H", port)
               + b"\0" * 4 + ip.packed + b"\0" * 4)
    return raw.ljust(SOCK_ADDR_SIZE, b"\0")


def parse_sock_addr(data):
    """``(address, port)`` of a ``ctdb_sock_addr``."""
    if len(data) < SOCK_ADDR_SIZE:
        raise ValueError(f"{len(data)} bytes where a {SOCK_ADDR_SIZE}-byte address was "
                         "expected")
    family = struct.unpack_from("<H", data)[0]
    port = struct.unpack_from("!H", data, 2)[0]
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(bytes(data[4:8]))), port
    if family == socket.AF_INET6:
        return str(ipaddress.IPv6Address(bytes(data[8:24]))), port
    raise ValueError(f"address family {family} is neither IPv4 nor IPv6")


def connection(client, server) -> bytes:
    """``ctdb_connection`` (56 bytes): the client's ``(address, port)`` first (its
    ``src``), then the public address's (``dst``), as CTDB keeps tickles."""
    return sock_addr(*client) + sock_addr(*server)


def parse_connection(data):
    """``(client, server)`` of a ``ctdb_connection``, each ``(address, port)``; the
    server side is the public address."""
    if len(data) < 2 * SOCK_ADDR_SIZE:
        raise ValueError(f"connection of {len(data)} bytes, not {2 * SOCK_ADDR_SIZE}")
    return (parse_sock_addr(data[:SOCK_ADDR_SIZE]),
            parse_sock_addr(data[SOCK_ADDR_SIZE:2 * SOCK_ADDR_SIZE]))


def tickle_list(address, conns) -> bytes:
    """``ctdb_tickle_list``: the public address (port 0), how many connections, then
    each (:func:`connection`): ``conns`` [(client, server)]."""
    return (sock_addr(address) + u32(len(conns))
            + b"".join(connection(cl, sv) for cl, sv in conns))


def parse_addr_info(data):
    """``(address, mask, iface)`` of a ``ctdb_addr_info`` (the address, u32 mask bits,
    then the interface as a u32 length with the NUL and the text)."""
    address = parse_sock_addr(data)[0]
    if len(data) < SOCK_ADDR_SIZE + 8:
        raise ValueError(f"address info of {len(data)} bytes is too short")
    mask, n = struct.unpack_from("<II", data, SOCK_ADDR_SIZE)
    raw = bytes(data[SOCK_ADDR_SIZE + 8:SOCK_ADDR_SIZE + 8 + n])
    if n == 0 or len(raw) != n or raw[-1:] != b"\0":
        raise ValueError(f"interface name of {n} bytes does not fit {len(data)} bytes")
    return address, mask, raw[:-1].decode(errors="replace")


def node_map(nodes) -> bytes:
    """``ctdb_node_map`` of ``nodes``: [(pnn, flags, address)]."""
    out = [u32(len(nodes))]
    for pnn, flags, address in nodes:
        out.append(u32(pnn) + u32(flags) + sock_addr(address))
    return b"".join(out)


def parse_node_map(data):
    n = parse_u32(data)
    size = 8 + SOCK_ADDR_SIZE
    if len(data) < 4 + n * size:
        raise ValueError(f"node map of {n} nodes in {len(data)} bytes")
    out = []
    for i in range(n):
        off = 4 + i * size
        pnn, flags = struct.unpack_from("<II", data, off)
        out.append((pnn, flags, parse_sock_addr(data[off + 8:off + size])[0]))
    return out


IFACE_NAME_SIZE = 18  # CTDB_IFACE_SIZE (IFNAMSIZ, 16) + 2


def parse_public_ip(data):
    """``(pnn, address)`` of a ``ctdb_public_ip``."""
    return parse_u32(data), parse_sock_addr(data[4:])[0]


def public_ip_list(ips) -> bytes:
    """``ctdb_public_ip_list`` of ``ips``: [(pnn of the holder or -1, address)]."""
    return u32(len(ips)) + b"".join(u32(pnn & 0xFFFFFFFF) + sock_addr(a) for pnn, a in ips)


def iface_list(ifaces) -> bytes:
    """``ctdb_iface_list`` of ``ifaces``: [(name, link up, references)]; each entry
    24 bytes (the name in 18, then u16 link_state and u32 references, packed)."""
    out = [u32(len(ifaces))]
    for name, up, refs in ifaces:
        raw = name.encode()[:IFACE_NAME_SIZE - 1]
        out.append(raw.ljust(IFACE_NAME_SIZE, b"\0") + struct.pack("<HI", int(bool(up)),
                                                                     refs))
    return b"".join(out)


def parse_iface(data):
    """``(name, link up)`` of a ``ctdb_iface`` (the name in 18 bytes, NUL-terminated;
    u16 link_state; u32 references)."""
    if len(data) < IFACE_NAME_SIZE + 6:
        raise ValueError(f"interface of {len(data)} bytes, not {IFACE_NAME_SIZE + 6}")
    raw = bytes(data[:IFACE_NAME_SIZE])
    if b"\0" not in raw:
        raise ValueError("interface name is not NUL-terminated")
    name = raw.split(b"\0", 1)[0].decode(errors="replace")
    state = struct.unpack_from("<H", data, IFACE_NAME_SIZE)[0]
    return name, bool(state)


def public_ip_info(pnn, address, active_idx, ifaces) -> bytes:
    """``ctdb_public_ip_info``: the address and its holder, the index of the interface
    it is on (in ``ifaces``; 0xFFFFFFFF: none), and its interfaces (:func:`iface_list`)."""
    return (u32(pnn & 0xFFFFFFFF) + sock_addr(address) + u32(active_idx & 0xFFFFFFFF)
            + iface_list(ifaces))


def parse_srvid_message(data):
    """``(pnn, srvid)`` of a ``ctdb_srvid_message`` (u32 pnn, 4 bytes of padding, u64
    srvid): whom to answer."""
    if len(data) < 16:
        raise ValueError(f"srvid message of {len(data)} bytes, not 16")
    pnn, srvid = struct.unpack_from("<I4xQ", data)
    return pnn, srvid


def string(text) -> bytes:
    """A ``ctdb_string``: the text and its NUL (nothing for None)."""
    return b"" if text is None else text.encode() + b"\0"


def parse_pid_srvid(data):
    """``(pid, srvid)`` of a ``ctdb_pid_srvid`` (i32 pid, then u64 srvid)."""
    if len(data) < 12:
        raise ValueError(f"pid and srvid in {len(data)} bytes, not 12")
    return struct.unpack_from("<iQ", data)


def parse_ban_state(data):
    """``(pnn, seconds)`` of a ``ctdb_ban_state`` (0 seconds: unban)."""
    if len(data) < 8:
        raise ValueError(f"ban state of {len(data)} bytes, not 8")
    return struct.unpack_from("<II", data)


def parse_disable_message(data):
    """``(pnn, srvid, timeout)`` of a ``ctdb_disable_message`` (u32 pnn, 4 bytes of
    padding, u64 srvid, u32 timeout in seconds, 4 bytes of padding)."""
    if len(data) < 20:
        raise ValueError(f"disable message of {len(data)} bytes, not 24")
    return struct.unpack_from("<I4xQI", data)


def dbid_map(dbs) -> bytes:
    """``ctdb_dbid_map`` of ``dbs``: [(db_id, flags)] (each u32 db_id, u8 flags, 3 bytes
    of padding)."""
    return u32(len(dbs)) + b"".join(struct.pack("<IB3x", i, f) for i, f in dbs)


_REC = struct.Struct("<4I")  # ctdb_rec_data_old: length, reqid, keylen, datalen


def parse_marshall_buffer(data, limit=1 << 20):
    """A ``ctdb_marshall_buffer`` (u32 db_id, u32 count, then ``count`` records of
    ``ctdb_rec_data_old``: u32 length, reqid, keylen, datalen, the key, the data):
    ``(db_id, [(key, data)])``. At most ``limit`` records; ValueError for anything that
    does not add up."""
    if len(data) < 8:
        raise ValueError(f"marshall buffer of {len(data)} bytes, shorter than its head")
    db_id, count = struct.unpack_from("<II", data)
    if count > limit:
        raise ValueError(f"marshall buffer of {count} records (limit {limit})")
    out, off = [], 8
    for i in range(count):
        if len(data) - off < _REC.size:
            raise ValueError(f"record {i} of the marshall buffer is cut short")
        length, _reqid, klen, dlen = _REC.unpack_from(data, off)
        if length < _REC.size + klen + dlen or length > len(data) - off:
            raise ValueError(f"record {i} of the marshall buffer: length {length} does "
                             f"not hold its {klen}-byte key and {dlen} bytes of data")
        k = off + _REC.size
        out.append((bytes(data[k:k + klen]), bytes(data[k + klen:k + klen + dlen])))
        off += length
    return db_id, out


def rec_data(reqid, key, data) -> bytes:
    """One ``ctdb_rec_data_old`` (a traverse's record: its data is the ltdb header and
    the value; ``key`` and ``data`` empty: the traverse's end)."""
    return _REC.pack(_REC.size + len(key) + len(data), reqid, len(key), len(data)) + key + data


def parse_traverse_start(data):
    """``(db_id, reqid, srvid, withemptyrecords)`` of a ``ctdb_traverse_start`` (u32
    db_id, u32 reqid, u64 srvid) or ``ctdb_traverse_start_ext`` (the same, then a bool)."""
    if len(data) < 16:
        raise ValueError(f"traverse start of {len(data)} bytes, not 16")
    db_id, reqid, srvid = struct.unpack_from("<IIQ", data)
    return db_id, reqid, srvid, bool(len(data) > 16 and data[16])


def parse_notify_data(data):
    """``(srvid, data)`` of a ``ctdb_notify_data_old`` (u64 srvid, u32 length, the
    data)."""
    if len(data) < 12:
        raise ValueError(f"notify data of {len(data)} bytes, shorter than 12")
    srvid, n = struct.unpack_from("<QI", data)
    if n > len(data) - 12:
        raise ValueError(f"notify data says {n} bytes, has {len(data) - 12}")
    return srvid, bytes(data[12:12 + n])


def marshall_buffer(db_id, recs) -> bytes:
    """The buffer :func:`parse_marshall_buffer` reads, of ``recs`` [(key, data)]."""
    body = b"".join(_REC.pack(_REC.size + len(k) + len(d), 0, len(k), len(d)) + k + d
                    for k, d in recs)
    return struct.pack("<II", db_id, len(recs)) + body


def u64(value) -> bytes:
    return struct.pack("<Q", value)


def i32(value) -> bytes:
    return struct.pack("<i", value)


def parse_stringn(data, what="string"):
    """A ``stringn`` (u32 length, then that many bytes, NUL included): ``(text, size)``."""
    n = parse_u32(data)
    if n > len(data) - 4:
        raise ValueError(f"{what} of {n} bytes in {len(data) - 4}")
    return bytes(data[4:4 + n]).split(b"\0", 1)[0].decode("utf-8", "replace"), 4 + n


def var_list(names) -> bytes:
    """``ctdb_var_list``: the payload's length, then the names joined with ``:``, NUL
    terminated."""
    text = ":".join(names).encode() + b"\0"
    return u32(len(text)) + text


def parse_tunable(data):
    """``(name, value)`` of a ``ctdb_tunable`` (u32 value, then the name as a stringn)."""
    value = parse_u32(data)
    return parse_stringn(data[4:], "tunable name")[0], value


def vnn_map(generation, pnns) -> bytes:
    """``ctdb_vnn_map``: the generation, the number of entries, the PNNs."""
    return u32(generation) + u32(len(pnns)) + b"".join(u32(p) for p in pnns)


def timeval(t) -> bytes:
    """``struct timeval`` of ``t`` seconds since the epoch (0 or None: zero)."""
    t = t or 0.0
    sec = int(t)
    return _TIMEVAL.pack(sec, int(round((t - sec) * 1e6)))


def uptime(current, start, recovery_started, recovery_finished) -> bytes:
    """``ctdb_uptime``: four timevals."""
    return b"".join(timeval(t) for t in (current, start, recovery_started,
                                         recovery_finished))
