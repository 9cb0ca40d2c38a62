"""The pure rules of the database layer (pyctdb.db.logic)."""

import pytest

from pyctdb.rules import records as L


def test_jenkins_hash_matches_lookup3_vectors():
    assert L.jenkins_hash(b"") == 0xDEADBEEF
    assert L.jenkins_hash(b"Four score and seven years ago") == 0x17770551
    assert L.jenkins_hash(b"Four score and seven years ago", 1) == 0xCD628161


def test_db_id_is_the_hash_of_the_name_with_its_nul():
    assert L.db_id("locking.tdb") == L.jenkins_hash(b"locking.tdb\0")
    assert L.db_id("a.tdb") != L.db_id("b.tdb")


def test_lmaster_hashes_the_key_over_the_vnnmap():
    vm = [0, 2, 5]
    for key in (b"a", b"b", b"some key", bytes(range(40))):
        assert L.lmaster(key, vm) == vm[L.jenkins_hash(key) % 3]
    keys = [f"k{i}".encode() for i in range(300)]
    assert {L.lmaster(k, vm) for k in keys} == {0, 2, 5}  # spread over every node
    with pytest.raises(ValueError):
        L.lmaster(b"a", [])


def test_header_is_16_bytes_big_endian():
    r = L.Record(rsn=0x0102030405060708, dmaster=3, flags=L.REC_MIGRATED_WITH_DATA,
                 value=b"xyz")
    raw = r.pack()
    assert raw[:16] == bytes.fromhex("0102030405060708" "00000003" "00010000")
    assert raw[16:] == b"xyz"
    assert L.unpack(raw) == r


@pytest.mark.parametrize("raw", [b"", b"\0" * 15, bytes(12) + b"\x80\0\0\0",
                                 bytes(12) + b"\0\0\0\x01" + b"value"])
def test_damaged_records_are_refused(raw):
    with pytest.raises(L.CorruptRecord):
        L.unpack(raw)


def rec(rsn, dmaster, value=b"v", flags=0):
    return L.Record(rsn, dmaster, flags, value)


def test_merge_highest_rsn_wins_and_the_leader_becomes_dmaster():
    out = L.merge_volatile([(0, {b"k": rec(5, 0, b"old")}),
                            (1, {b"k": rec(7, 1, b"new"), b"j": rec(1, 1, b"j")}),
                            (2, {b"k": rec(6, 1, b"mid")})], new_dmaster=2)
    assert out[b"k"].value == b"new" and out[b"k"].rsn == 7
    assert out[b"k"].dmaster == 2 and out[b"k"].flags & L.REC_MIGRATED_WITH_DATA
    assert out[b"j"].value == b"j"


def test_merge_tie_prefers_the_copy_held_by_its_dmaster_in_any_order():
    a = (0, {b"k": rec(4, 1, b"stale")})   # node 0's copy says node 1 is dmaster
    b = (1, {b"k": rec(4, 1, b"auth")})    # node 1's own copy
    for order in ([a, b], [b, a]):
        assert L.merge_volatile(order, 0)[b"k"].value == b"auth"
    c = (2, {b"k": rec(4, 1, b"other")})
    for order in ([a, c], [c, a]):  # neither authoritative: the lower PNN, always
        assert L.merge_volatile(order, 0)[b"k"].value == b"stale"


def test_merge_keeps_deletions_so_an_older_copy_cannot_resurrect_the_key():
    dead = L.Record(9, 1, L.REC_DELETED, b"")
    out = L.merge_volatile([(0, {b"k": rec(8, 0, b"value")}), (1, {b"k": dead})], 0)
    assert out[b"k"].deleted and out[b"k"].value == b""


def test_merge_in_pieces_yields_and_gives_the_same_result():
    copies = [(p, [(b"k%d" % i, rec(i % 7 + p, p)) for i in range(50)]) for p in range(3)]
    out = {}
    pieces = sum(1 for _ in L.merge_volatile_steps(copies, 1, out, step=10))
    assert pieces >= 15  # 150 records in, 50 out: a turn of the loop every 10
    assert out == L.merge_volatile([(p, dict(c)) for p, c in copies], 1)


def test_pick_persistent_highest_seqnum_then_lowest_pnn():
    assert L.pick_persistent({0: 3, 1: 5, 2: 5}) == 1
    assert L.pick_persistent({2: 0}) == 2
    assert L.pick_persistent({}) is None


def test_limits_and_names():
    L.check_key(b"k" * L.MAX_KEY)
    with pytest.raises(ValueError, match="larger than the limit"):
        L.check_key(b"k" * (L.MAX_KEY + 1))
    with pytest.raises(ValueError):
        L.check_key(b"")
    with pytest.raises(ValueError, match="larger than the limit"):
        L.check_value(b"v" * (L.MAX_VALUE + 1))
    assert L.check_name("smbXsrv_open_global.tdb")
    for bad in ("", "a/b", "__dbmap__", "x" * 300, 5):
        with pytest.raises(ValueError):
            L.check_name(bad)
