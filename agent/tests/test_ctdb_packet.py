"""CTDB's client protocol codec (pyctdb.protocol.ctdb): packets cut out of a stream,
length, magic and version checked, controls and messages packed and read back, and the
structs laid out as ctdbd lays them out."""

import socket
import struct

import pytest

from pyctdb.protocol.ctdb import marshal as M
from pyctdb.protocol.ctdb import packet as P


def control_packet(opcode, data=b"", reqid=7, flags=0, srvid=0):
    return P.pack(P.REQ_CONTROL, reqid, P.control_body(opcode, data, srvid=srvid,
                                                       flags=flags),
                  destnode=P.CURRENT_NODE, srcnode=0)


def test_a_packet_is_the_header_and_its_body_padded_to_8_bytes():
    pkt = control_packet(M.GET_PNN, b"abc")
    assert len(pkt) % 8 == 0
    length, magic, version, gen, op, dest, src, reqid = struct.unpack_from("<8I", pkt)
    assert (length, magic, version, op, dest, reqid) == (len(pkt), 0x43544442, 1,
                                                         P.REQ_CONTROL, P.CURRENT_NODE, 7)
    (h, body), = P.PacketReader().feed(pkt)
    c = P.parse_control(body)
    assert (c.opcode, c.data, c.flags) == (M.GET_PNN, b"abc", 0)


def test_the_reader_cuts_packets_out_of_any_split_of_the_stream():
    stream = b"".join(control_packet(op, bytes([op]) * op, reqid=op) for op in (1, 5, 35))
    for step in (1, 3, 7, 64, len(stream)):
        r, got = P.PacketReader(), []
        for i in range(0, len(stream), step):
            got += r.feed(stream[i:i + step])
        assert [(h.reqid, P.parse_control(b).data) for h, b in got] == [
            (1, b"\x01"), (5, b"\x05" * 5), (35, b"\x23" * 35)]


@pytest.mark.parametrize("mangle, why", [
    (lambda p: struct.pack("<I", 12) + p[4:], "shorter than the 32-byte header"),
    (lambda p: struct.pack("<I", P.MAX_PACKET + 8) + p[4:], "over the limit"),
    (lambda p: p[:4] + b"XXXX" + p[8:], "wrong magic"),
    (lambda p: p[:8] + struct.pack("<I", 2) + p[12:], "protocol version 2"),
])
def test_a_bad_length_magic_or_version_is_an_error_that_names_it(mangle, why):
    with pytest.raises(P.PacketError, match=why):
        P.PacketReader().feed(mangle(control_packet(M.GET_PNN)))


def test_an_oversized_length_is_refused_before_its_bytes_arrive():
    r = P.PacketReader()
    with pytest.raises(P.PacketError, match="over the limit"):
        r.feed(struct.pack("<I", 1 << 30))


def test_a_control_or_message_whose_data_length_exceeds_the_packet_is_an_error():
    body = P.control_body(M.GET_PNN, b"1234")[:-2]
    with pytest.raises(P.PacketError, match="says 4 bytes of data, has 2"):
        P.parse_control(body)
    with pytest.raises(P.PacketError, match="shorter than its"):
        P.parse_control(b"\0" * 8)
    with pytest.raises(P.PacketError, match="says 9 bytes"):
        P.parse_message(P.message_body(5, b"123456789")[:-1])


def test_control_replies_carry_data_or_an_error_string():
    assert P.parse_reply_control(P.reply_control_body(3, b"xyz")) == (3, b"xyz", None)
    assert P.parse_reply_control(P.reply_control_body(-1, errmsg="no such")) == (
        -1, b"", "no such")


def test_messages_round_trip():
    m = P.parse_message(P.message_body(M.SRVID_LEADER, M.u32(2)))
    assert m.srvid == 0xF101000000000000 and M.parse_u32(m.data) == 2


def test_sock_addr_is_the_28_byte_union_of_sockaddr_in_and_in6():
    v4 = M.sock_addr("10.1.2.3", 445)
    assert len(v4) == 28
    assert struct.unpack_from("<H", v4)[0] == socket.AF_INET
    assert v4[2:4] == b"\x01\xbd" and v4[4:8] == bytes([10, 1, 2, 3])
    assert M.parse_sock_addr(v4) == ("10.1.2.3", 445)
    v6 = M.sock_addr("fd00::5", 80)
    assert len(v6) == 28 and M.parse_sock_addr(v6) == ("fd00::5", 80)
    with pytest.raises(ValueError, match="family"):
        M.parse_sock_addr(b"\x07\x00" + b"\0" * 26)


def test_node_map_and_vnn_map_as_ctdbd_lays_them_out():
    data = M.node_map([(0, 0, "10.0.0.1"), (1, 0x1, "10.0.0.2")])
    assert len(data) == 4 + 2 * 36
    assert M.parse_node_map(data) == [(0, 0, "10.0.0.1"), (1, 1, "10.0.0.2")]
    assert M.vnn_map(77, [0, 2]) == struct.pack("<4I", 77, 2, 0, 2)
    assert len(M.uptime(1.5, 2, None, 0)) == 64
    assert M.timeval(1.25) == struct.pack("<qq", 1, 250000)


def test_tunables_as_ctdb_lays_them_out():
    assert M.var_list(["A", "Bc"]) == struct.pack("<I", 5) + b"A:Bc\0"
    data = struct.pack("<I", 9) + struct.pack("<I", 4) + b"Abc\0"
    assert M.parse_tunable(data) == ("Abc", 9)
    with pytest.raises(ValueError, match="tunable name of 40 bytes"):
        M.parse_stringn(struct.pack("<I", 40) + b"Abc\0", "tunable name")
    with pytest.raises(ValueError, match="where a uint32"):
        M.parse_tunable(b"\1\0")


def test_debug_levels_are_samba_s_numbers():
    assert [M.debug_level_name(n) for n in range(11)] == [
        "ERROR", "WARNING", "WARNING", "NOTICE", "NOTICE", "INFO", "INFO", "INFO", "INFO",
        "INFO", "DEBUG"]
    with pytest.raises(ValueError, match="not one of CTDB's"):
        M.debug_level_name(11)


# -- REQ_CALL, marshall buffers, traverse and notify data ---------------------------------
def test_a_call_as_samba_sends_it_round_trips():
    body = P.call_body(0x7a19d84d, b"file-id", P.FETCH_FUNC, flags=0, calldata=b"cd")
    c = P.parse_call(body)
    assert (c.db_id, c.callid, c.flags, c.key, c.calldata) == (
        0x7a19d84d, P.FETCH_FUNC, 0, b"file-id", b"cd")
    # Samba's ctdbd_migrate: the header's length is not padded; the body ends at the key
    assert P.parse_call(P.call_body(1, b"k")).callid == P.NULL_FUNC
    assert P.parse_reply_call(P.reply_call_body(0, b"data")) == (0, b"data")


@pytest.mark.parametrize("body,why", [
    (b"\0" * 10, "shorter than its 24-byte head"),
    (struct.pack("<6I", 0, 1, 2, 0, 100, 0) + b"k", "says 100 bytes of key"),
    (struct.pack("<6I", 0, 1, 2, 0, 0, 0), "empty key"),
])
def test_a_call_that_does_not_add_up_is_refused(body, why):
    with pytest.raises(P.PacketError) as ei:
        P.parse_call(body)
    assert why in ei.value.message


def test_marshall_buffer_round_trip_and_limits():
    recs = [(b"a", b"\1" * 24 + b"x"), (b"key2", b"\2" * 24)]
    buf = M.marshall_buffer(0x6cf2837d, recs)
    assert M.parse_marshall_buffer(buf) == (0x6cf2837d, recs)
    with pytest.raises(ValueError, match="cut short"):
        M.parse_marshall_buffer(buf[:-30])
    with pytest.raises(ValueError, match="limit 1"):
        M.parse_marshall_buffer(buf, limit=1)
    bad = bytearray(buf)
    struct.pack_into("<I", bad, 8, 5)  # a record length shorter than its own head
    with pytest.raises(ValueError, match="does not hold"):
        M.parse_marshall_buffer(bytes(bad))


def test_traverse_start_notify_data_and_rec_data():
    assert M.parse_traverse_start(struct.pack("<IIQ", 7, 8, 9)) == (7, 8, 9, False)
    assert M.parse_traverse_start(struct.pack("<IIQ?7x", 7, 8, 9, True)) == (7, 8, 9, True)
    assert M.parse_notify_data(struct.pack("<QI", 5, 2) + b"hi") == (5, b"hi")
    with pytest.raises(ValueError):
        M.parse_notify_data(struct.pack("<QI", 5, 9) + b"hi")
    end = M.rec_data(3, b"", b"")
    assert len(end) == 16 and struct.unpack("<4I", end) == (16, 3, 0, 0)
