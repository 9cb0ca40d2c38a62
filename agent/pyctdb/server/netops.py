"""Network operations for public address failover. Blocking: call them off the event loop
(``asyncio.to_thread``). pyroute2 is imported only when a node actually has public
addresses, so agents without any start fast.

* addresses on interfaces: pyroute2 (netlink);
* gratuitous ARP (IPv4) and unsolicited neighbour advertisement (IPv6) after a take, so
  switches and clients learn the new location at once;
* tickle ACKs: for each TCP connection a released address had, the new holder sends the
  client an ACK with sequence 0 from the public address. The client answers with a
  (challenge) ACK, which now reaches the new holder; it has no such connection and resets
  it, so the client reconnects at once instead of waiting for a timeout (CTDB's method);
* local kills: connections to an address this node releases are destroyed with
  ``ss -K`` (SOCK_DESTROY), which resets them.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
import subprocess
import threading

from pyctdb.errors import PyctdbError

log = logging.getLogger(__name__)

_ipr = None
_ipr_lock = threading.RLock()


def _iproute():
    global _ipr
    if _ipr is None:
        from pyroute2 import IPRoute  # heavy import: only when needed
        _ipr = IPRoute()
    return _ipr


class NetError(PyctdbError):
    """A network operation failed (an interface is missing, netlink refused a change)."""


def _errno(exc):
    """The errno of a failed netlink or socket call: pyroute2's NetlinkError carries it
    as ``code``, an OSError as ``errno``; None when there is none."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else getattr(exc, "errno", None)


def _family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def iface_index(iface):
    with _ipr_lock:
        idx = _iproute().link_lookup(ifname=iface)
    if not idx:
        raise NetError(f"interface {iface} does not exist")
    return idx[0]


def iface_is_up(iface) -> bool:
    try:
        with _ipr_lock:
            links = _iproute().get_links(iface_index(iface))
    except NetError:
        return False
    flags = links[0]["flags"] if links else 0
    return bool(flags & 1)  # IFF_UP


def iface_mac(iface) -> bytes:
    with _ipr_lock:
        link = _iproute().get_links(iface_index(iface))[0]
    mac = link.get_attr("IFLA_ADDRESS") or "00:00:00:00:00:00"
    return bytes(int(x, 16) for x in mac.split(":"))


def addresses(iface) -> set:
    """The addresses on ``iface`` (strings, no prefix)."""
    idx = iface_index(iface)
    with _ipr_lock:
        msgs = _iproute().get_addr(index=idx)
    return {m.get_attr("IFA_ADDRESS") for m in msgs}


def all_addresses() -> dict:
    """address -> interface name, for every address on this host."""
    with _ipr_lock:
        ipr = _iproute()
        names = {l["index"]: l.get_attr("IFLA_IFNAME") for l in ipr.get_links()}
        msgs = ipr.get_addr()
    return {m.get_attr("IFA_ADDRESS"): names.get(m["index"]) for m in msgs}


def add_address(iface, addr, prefix):
    idx = iface_index(iface)
    try:
        with _ipr_lock:
            _iproute().addr("add", index=idx, address=addr, prefixlen=prefix)
    except Exception as exc:
        if _errno(exc) == errno.EEXIST:  # already there
            return False
        raise NetError(f"cannot add {addr}/{prefix} to {iface}: {exc}") from None
    return True


def del_address(iface, addr, prefix):
    idx = iface_index(iface)
    try:
        with _ipr_lock:
            _iproute().addr("del", index=idx, address=addr, prefixlen=prefix)
    except Exception as exc:
        if _errno(exc) in (errno.EADDRNOTAVAIL, errno.ENOENT):  # not there
            return False
        raise NetError(f"cannot remove {addr}/{prefix} from {iface}: {exc}") from None
    return True


# -- announcements -------------------------------------------------------------------------
_packet_socket = None


def _packet_sock():
    """One AF_PACKET socket for every announcement, kept open: opening a packet socket
    bound to a protocol and closing it each costs 10-25 ms (the kernel waits for an RCU
    grace period when it unhooks the protocol), on the way of every take. Protocol 0:
    it receives nothing."""
    global _packet_socket
    if _packet_socket is None:
        _packet_socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    return _packet_socket


def send_gratuitous_arp(iface, addr, count=2):
    """Gratuitous ARP request and reply for ``addr`` from ``iface``'s MAC."""
    mac = iface_mac(iface)
    ip = socket.inet_aton(addr)
    bcast = b"\xff" * 6
    s = _packet_sock()
    for op in (1, 2):  # request, reply: some stacks only heed one of them
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, mac, ip,
                          bcast if op == 2 else b"\x00" * 6, ip)
        frame = bcast + mac + struct.pack("!H", 0x0806) + arp
        for _ in range(count):
            s.sendto(frame, (iface, 0x0806))


def send_unsolicited_na(iface, addr):
    """Unsolicited neighbour advertisement (override) for ``addr`` to all nodes."""
    mac = iface_mac(iface)
    target = socket.inet_pton(socket.AF_INET6, addr)
    # type 136, code 0, checksum (kernel), flags R=0 S=0 O=1, target, option 2 (TLLA)
    msg = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + target + struct.pack("!BB", 2, 1) + mac
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, iface_index(iface))
        s.bind((addr, 0))
        s.sendto(msg, ("ff02::1", 0, 0, iface_index(iface)))
    finally:
        s.close()


def announce(iface, addr):
    try:
        if _family(addr) == socket.AF_INET:
            send_gratuitous_arp(iface, addr)
        else:
            send_unsolicited_na(iface, addr)
    except OSError as exc:
        log.warning("cannot announce %s on %s: %s", addr, iface, exc)


# -- TCP connections -----------------------------------------------------------------------
def _parse_proc_addr(text, v6):
    ip_hex, port_hex = text.split(":")
    if not v6:
        ip = socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(ip_hex, 16)))
    else:
        raw = bytes.fromhex(ip_hex)
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
        ip = str(ipaddress.ip_address(raw))
        mapped = ipaddress.ip_address(raw).ipv4_mapped
        if mapped:
            ip = str(mapped)
    return ip, int(port_hex, 16)


def _norm_ip(ip):
    mapped = ipaddress.ip_address(ip)
    if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped:
        return str(mapped.ipv4_mapped)
    return str(mapped)


def _diag_connections(want) -> list:
    """The kernel's established TCP sockets (netlink inet_diag, filtered by state in
    the kernel): a busy host's /proc/net/tcp also lists every TIME_WAIT socket, and
    reading it took seconds under load."""
    from pyroute2 import DiagSocket  # (already imported with IPRoute: pyroute2)
    out = []
    with DiagSocket() as ds:
        ds.bind()
        for family in (socket.AF_INET, socket.AF_INET6):
            for m in ds.get_sock_stats(family=family, states=1 << 1):  # ESTABLISHED
                lip = _norm_ip(m["idiag_src"])
                if lip in want:
                    out.append((lip, int(m["idiag_sport"]), _norm_ip(m["idiag_dst"]),
                                int(m["idiag_dport"])))
    return out


def tcp_connections(local_addresses) -> list:
    """Established TCP connections whose local address is one of ``local_addresses``:
    ``[(local_ip, local_port, remote_ip, remote_port), ...]``."""
    want = set(local_addresses)
    if not want:
        return []
    try:
        return _diag_connections(want)
    except Exception as exc:  # (no inet_diag: /proc/net/tcp instead)
        log.debug("inet_diag: %s; reading /proc/net/tcp", exc)
    out = []
    for path, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] != "01":  # ESTABLISHED
                        continue
                    lip, lport = _parse_proc_addr(parts[1], v6)
                    if lip in want:
                        rip, rport = _parse_proc_addr(parts[2], v6)
                        out.append((lip, lport, rip, rport))
        except OSError:
            continue
    return out


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def send_tickle(src_ip, src_port, dst_ip, dst_port, count=2):
    """A TCP ACK with seq 0 / ack 0 from src to dst (see the module doc)."""
    if _family(src_ip) == socket.AF_INET:
        tcp = struct.pack("!HHIIBBHHH", src_port, dst_port, 0, 0, 5 << 4, 0x10, 1024, 0, 0)
        pseudo = socket.inet_aton(src_ip) + socket.inet_aton(dst_ip) + struct.pack(
            "!BBH", 0, socket.IPPROTO_TCP, len(tcp))
        csum = _checksum(pseudo + tcp)
        tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64,
                         socket.IPPROTO_TCP, 0, socket.inet_aton(src_ip),
                         socket.inet_aton(dst_ip))
        ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        try:
            for _ in range(count):
                s.sendto(ip + tcp, (dst_ip, 0))
        finally:
            s.close()
    else:
        tcp = struct.pack("!HHIIBBHHH", src_port, dst_port, 0, 0, 5 << 4, 0x10, 1024, 0, 0)
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_TCP)
        try:
            s.setsockopt(socket.IPPROTO_IPV6, 7, 16)  # IPV6_CHECKSUM at offset 16
            s.bind((src_ip, 0))
            for _ in range(count):
                s.sendto(tcp, (dst_ip, 0))
        finally:
            s.close()


def reset_command(addr) -> list:
    """The command that resets every TCP connection from ``addr`` (``ss -K``)."""
    return ["ss", "-K", "-t", "src", addr]


def kill_local_connections(addr) -> int:
    """Reset every TCP connection whose local address is ``addr`` (ss -K)."""
    conns = tcp_connections([addr])
    if not conns:
        return 0
    try:
        subprocess.run(reset_command(addr), capture_output=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("cannot reset connections on %s: %s", addr, exc)
    return len(conns)
